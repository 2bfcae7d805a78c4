"""A small OpenAI-compatible chat-completions server for tests (standard library only).

It streams its answer slowly, token by token (SSE `data:` lines, chunked encoding), and records
for every stream when it started, what it sent and when the client closed the connection (a
closed connection is seen within milliseconds: between tokens it waits on the socket with
select, so a FIN wakes it at once, as llama.cpp's server checks its connection per token).

What it answers is steered by a directive in the system prompt (the request's `prompt`):
`[fake:MODE]`, or `[fake:MODE:TEXT1|TEXT2]` to apply MODE only to pages whose text contains
one of the TEXTs (the others get `fix`). Modes:
- fix (default): the user text with "sample" written "SAMPLE" (a small, provable correction)
- slow: like fix, but one token every 0.2 s
- empty: no content; truncate: half the text, finish_reason "length"; different: unrelated text
- flaky: 503 for the first two requests with a given text, then fix
- stall: no answer at all (not even headers) for 10 s, as a server busy with a long prompt
- error: 400 with an OpenAI-style error body
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_ID = "fake-ocr-model"
DIRECTIVE = re.compile(r"\[fake:(\w+)(?::([^\]]*))?\]")
UNRELATED = (
    "Once upon a time there was a small village by the sea where fishermen told long stories "
    "about storms, lighthouses and the strange lights they saw far from the shore at night."
)


@dataclass
class Stream:
    """One chat request as the server saw it."""

    request: dict
    mode: str
    user_text: str
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    disconnected_at: float | None = None  # monotonic time at which the client's close was seen
    sent: list[str] = field(default_factory=list)
    status: int = 200

    @property
    def active(self) -> bool:
        return self.ended is None


def user_text_of(request: dict) -> str:
    for message in request.get("messages", []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if part.get("type") == "text")
            return content or ""
    return ""


def system_prompt_of(request: dict) -> str:
    return "".join(m.get("content") or "" for m in request.get("messages", []) if m.get("role") == "system")


def mode_for(request: dict, user_text: str) -> str:
    match = DIRECTIVE.search(system_prompt_of(request))
    if not match:
        return "fix"
    mode, only = match.group(1), match.group(2)
    if only and not any(part in user_text for part in only.split("|")):
        return "fix"
    return mode


class FakeLLMServer:
    def __init__(self, port: int = 0, token_delay: float = 0.005, slow_delay: float = 0.2) -> None:
        self.token_delay = token_delay
        self.slow_delay = slow_delay
        self.streams: list[Stream] = []
        self.lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fake-llm", daemon=True)

    def start(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self.lock:
            self.streams.clear()
            self._attempts.clear()

    def active(self) -> list[Stream]:
        with self.lock:
            return [s for s in self.streams if s.active]

    def streams_for(self, needle: str) -> list[Stream]:
        with self.lock:
            return [s for s in self.streams if needle in s.user_text]

    def attempt(self, key: str) -> int:
        with self.lock:
            self._attempts[key] = self._attempts.get(key, 0) + 1
            return self._attempts[key]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeLLMServer

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._json(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "tests"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        text = user_text_of(request)
        stream = Stream(request=request, mode=mode_for(request, text), user_text=text)
        with self.fake.lock:
            self.fake.streams.append(stream)
        try:
            self._answer(stream)
        finally:
            stream.ended = time.monotonic()

    def _answer(self, stream: Stream) -> None:
        text, mode = stream.user_text, stream.mode
        if mode == "flaky" and self.fake.attempt(text) <= 2:
            stream.status = 503
            self._json(503, {"error": {"message": "busy, try again"}})
            return
        if mode == "stall":
            self._client_gone(stream, 10.0)
            return
        if mode == "error":
            stream.status = 400
            self._json(400, {"error": {"message": "model not found", "type": "invalid_request_error"}})
            return
        finish = "stop"
        content = text.replace("sample", "SAMPLE")
        if mode == "empty":
            content = ""
        elif mode == "truncate":
            content, finish = content[: len(content) // 2], "length"
        elif mode == "different":
            content = UNRELATED
        delay = self.fake.slow_delay if mode == "slow" else self.fake.token_delay
        tokens = re.findall(r"\S+\s*|\s+", content)
        model = stream.request.get("model") or MODEL_ID
        if not stream.request.get("stream"):
            message = {"role": "assistant", "content": content}
            self._json(200, {"model": model, "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        chunks = [{"role": "assistant", "content": ""}] + [{"content": token} for token in tokens]
        for index, delta in enumerate(chunks):
            if index and self._client_gone(stream, delay):
                return
            event = {"model": model, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
            if not self._send(stream, event):
                return
            if delta.get("content"):
                stream.sent.append(delta["content"])
        final = {"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        if self._send(stream, final) and self._send_raw(stream, b"data: [DONE]\n\n"):
            self._send_raw(stream, b"", last=True)

    def _client_gone(self, stream: Stream, delay: float) -> bool:
        """Wait `delay` for the next token, waking at once if the client closes the connection."""
        deadline = time.monotonic() + delay
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self.connection], [], [], remaining)
            if readable:
                try:
                    gone = self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    gone = True
                if gone:
                    stream.disconnected_at = time.monotonic()
                    return True
                time.sleep(min(0.001, remaining))  # unexpected bytes: not a close
            if remaining <= 0:
                return False

    def _send(self, stream: Stream, event: dict) -> bool:
        return self._send_raw(stream, f"data: {json.dumps(event)}\n\n".encode())

    def _send_raw(self, stream: Stream, data: bytes, last: bool = False) -> bool:
        try:
            if last:
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
            return True
        except OSError:
            stream.disconnected_at = stream.disconnected_at or time.monotonic()
            return False


if __name__ == "__main__":  # python -m tests.llm_server [PORT]: try the service against it by hand
    import sys

    server = FakeLLMServer(int(sys.argv[1]) if len(sys.argv) > 1 else 8090).start()
    print(f"OCR_LLM_BASE_URL={server.url}", flush=True)
    threading.Event().wait()
