"""What the sync and async clients share: configuration, endpoints, upload encoding, the
server-sent-events parser. No I/O on the network here."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, cast
from urllib.parse import quote, urlsplit, urlunsplit

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
ACTIVE = frozenset({"pending", "processing"})
EARLY_EXIT_REASON = "Client left the task block before the task finished"

FileInput = str | os.PathLike[str] | bytes | bytearray | IO[bytes]
Mode = Literal["async", "sync", "stream"]
Transport = Literal["auto", "websocket", "sse"]


def resolve(url: str | None, token: str | None) -> tuple[str, str | None]:
    """Arguments first, then `OCR_URL` / `OCR_TOKEN`, then the local default; `token=""` means
    anonymous even when `OCR_TOKEN` is set."""
    base = (url or os.environ.get("OCR_URL") or DEFAULT_URL).rstrip("/")
    if "://" not in base:
        base = f"http://{base}"
    return base, (token if token is not None else os.environ.get("OCR_TOKEN")) or None


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Token {token}"} if token else {}


def read_file(file: FileInput, filename: str | None = None) -> tuple[str, bytes]:
    """(file name, bytes) from a path, bytes or a binary file object."""
    if isinstance(file, bytes | bytearray):
        return filename or "upload", bytes(file)
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        return filename or path.name, path.read_bytes()
    data = file.read()
    return filename or Path(str(getattr(file, "name", "upload"))).name, data


def looks_like_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:1024]


def submit_path(*, pdf: bool, llm: bool, mode: Mode) -> str:
    """The submit endpoint for a kind and mode (API.md section 1)."""
    name = "process-pdf" if pdf else "process"
    if llm:
        name += "-with-llm"
    if mode == "sync":
        name += "-sync"
    elif mode == "stream":
        if not pdf:
            raise ValueError("streaming submits take PDFs only")
        name += "-stream"
    elif mode != "async":
        raise ValueError(f"mode must be async, sync or stream, not {mode!r}")
    return f"/v1/ocr/{name}"


def task_path(task_id: str, suffix: str = "") -> str:
    return f"/v1/ocr/tasks/{quote(str(task_id), safe='')}{suffix}"


def ws_url(base_url: str, task_id: str, after: int) -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = f"{parts.path.rstrip('/')}/ws/ocr/tasks/{quote(str(task_id), safe='')}/"
    return urlunsplit((scheme, parts.netloc, path, f"after={after}", ""))


def request_part(request: dict[str, Any] | None, **extra: Any) -> dict[str, str]:
    """The multipart `request` field: the given parameters plus the non-None extras."""
    merged = {**(request or {}), **{k: v for k, v in extra.items() if v is not None}}
    return {"request": json.dumps(merged)} if merged else {}


def cancel_body(reason: str | None) -> dict[str, str]:
    return {"reason": reason} if reason else {}


@dataclass(frozen=True)
class Download:
    """A download answer: its bytes, media type and `OCR-Pages` ("3/12") when the server sent it."""

    content: bytes
    media_type: str
    pages: str | None = None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class SSEParser:
    """Feed it lines of a text/event-stream; it returns each complete event's JSON `data`."""

    def __init__(self) -> None:
        self.data: list[str] = []

    def feed(self, line: str) -> dict[str, Any] | None:
        line = line.rstrip("\r\n")
        if line.startswith(":"):
            return None  # comment: keep-alive or "connected"
        if line.startswith("data:"):
            self.data.append(line[5:].removeprefix(" "))
            return None
        if not line and self.data:
            payload, self.data = "\n".join(self.data), []
            return cast(dict[str, Any], json.loads(payload))
        return None


def is_event(message: Any) -> bool:
    """WebSocket frames are events, `cancel_result` or `error` answers: only events have a seq."""
    return isinstance(message, dict) and isinstance(message.get("seq"), int)


def reconnect_delay(failures: int) -> float:
    return min(0.2 * 2.0 ** (failures - 1), 5.0)
