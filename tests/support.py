"""Helpers shared by the tests and the benchmarks (standard library only): ports, processes,
tesseract PIDs, waiting, and small HTTP, multipart, SSE and WebSocket clients for a live server."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import time
import uuid
from urllib.parse import urlsplit

from ocr.processes import ocr_input

# --- Processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_cmdline(pid: str) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().split(b"\0")
    except OSError:
        return None


def proc_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def tesseract_pids(path_prefix: str | None = None) -> list[int]:
    """Live OCR processes (tesseract, or the engine's libtesseract program: see
    ocr.processes.ocr_input) whose input file is under `path_prefix` (default: this Django
    process's OCR_SLOT_DIR, where its workers write pages; "" for every one). Reads /proc
    directly: one pgrep costs ~8 ms of CPU here."""
    if path_prefix is None:
        from django.conf import settings

        path_prefix = settings.OCR_SLOT_DIR
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        argv = proc_cmdline(pid)
        page = ocr_input(argv) if argv else None
        if page is not None and page.startswith(path_prefix):
            found.append(int(pid))
    return found


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM to the leader (a qcluster given SIGTERM in every process did not stop in 20 s;
    its leader alone stops it in under 2 s), then SIGKILL to whatever is left of the group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class PrivateRedis:
    """A redis-server of its own on a free loopback port, nothing kept on disk: killed and started
    again, it comes back empty on the same port (a restart)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: port_open(self.port), timeout=10)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


# --- HTTP ------------------------------------------------------------------------------------


def multipart(fields: dict) -> tuple[bytes, str]:
    """Encode {name: str | (filename, bytes)} as multipart/form-data."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, data = value
            head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            head += "Content-Type: application/octet-stream\r\n\r\n"
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"\r\n\r\n', value.encode()
        parts.append(f"--{boundary}\r\n".encode() + head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def connection(base_url: str, timeout: float = 60) -> http.client.HTTPConnection:
    parts = urlsplit(base_url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def http_multipart(base_url: str, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]]):
    body, content_type = multipart({**fields, **files})
    return http_request(base_url, "POST", path, body, {"Content-Type": content_type})


def http_request(base_url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One request on a new connection; returns (status, decoded JSON or text)."""
    conn = connection(base_url)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode(errors="replace")


class SSEClient:
    """GET a text/event-stream; `events()` yields (receive wall time, event dict) as they arrive."""

    def __init__(self, base_url: str, path: str, timeout: float = 120, headers: dict | None = None) -> None:
        self.conn = connection(base_url, timeout)
        self.conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            raise RuntimeError(f"SSE {path} answered {self.response.status}: {self.response.read()[:500]!r}")
        self.connected_at: float | None = None

    def events(self):
        data: list[str] = []
        while True:
            line = self.response.readline()
            if not line:
                return
            line = line.decode().rstrip("\r\n")
            if line.startswith(":"):
                if self.connected_at is None:
                    self.connected_at = time.time()  # the ": connected" comment: subscribed to the group
                continue
            if line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif not line and data:
                received = time.time()
                yield received, json.loads("\n".join(data))
                data = []

    def close(self) -> None:
        self.conn.close()


class WebSocketClient:
    """A minimal RFC 6455 client: text frames in, masked frames out, answers pings."""

    def __init__(self, base_url: str, path: str, timeout: float = 120, origin: str | None = None) -> None:
        parts = urlsplit(base_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        host = f"{parts.hostname}:{parts.port}"
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin or f'http://{host}'}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"WebSocket {path}: connection closed during the handshake")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"WebSocket {path}: handshake refused: {head[:200]!r}")
        self.connected_at = time.time()
        self.close_code: int | None = None

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("WebSocket closed by the server")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def messages(self):
        """Yield (receive wall time, decoded JSON) per text message until the server closes."""
        fragments = b""
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:  # close: answer it and stop
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                try:
                    self._send(0x8, payload[:2])
                except OSError:
                    pass
                return
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode in (0x1, 0x2, 0x0):
                fragments += payload
                if first & 0x80:
                    received = time.time()
                    yield received, json.loads(fragments)
                    fragments = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def post_file(base_url: str, path: str, data: bytes, request: dict | None = None, name: str = "doc.pdf"):
    """POST a file and wait for the answer: (status, JSON body)."""
    fields = {"file": (name, data)}
    if request is not None:
        fields["request"] = json.dumps(request)
    body, content_type = multipart(fields)
    conn = connection(base_url, timeout=120)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, json.loads(payload)


def post_json(base_url: str, path: str, payload: dict | None = None):
    conn = connection(base_url, timeout=30)
    conn.request("POST", path, body=json.dumps(payload or {}), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data)


# --- Text ------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """The textbook edit distance (a reference for tests; quadratic)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def cer(expected: str, actual: str) -> float:
    """Character error rate: Levenshtein distance over the expected length (whitespace folded)."""
    a = " ".join(expected.split())
    return levenshtein(a, " ".join(actual.split())) / max(1, len(a))
