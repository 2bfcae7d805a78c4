"""An OpenAI-compatible chat-completions client that a CancelScope can abort mid-generation.

No Django here (`config_from_settings` reads the settings lazily). The answer is streamed
(`stream: true`, SSE `data:` lines) over a connection of its own. Its socket is registered with
the task's CancelScope from the moment it is connected, so a cancel (from the watcher thread)
shuts it down at once: the reading thread wakes up, and the server sees the connection closed
and stops generating. What is done with the answer: ocr/refine.py.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

from . import engine

logger = logging.getLogger(__name__)

RETRY_STATUSES = {408, 429, 500, 502, 503, 504}


class LLMError(Exception):
    """The server gave no usable answer (network, HTTP status, protocol); the message says why."""


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    api_key: str = ""
    model: str = ""
    vision: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 120.0  # longest silence between two streamed bytes (prompt processing included)
    page_timeout: float = 600.0  # longest generation for one page
    max_retries: int = 2
    retry_backoff: float = 0.5
    max_tokens: int = 0  # 0: from the page's length
    temperature: float = 0.0
    max_change: float = 0.5
    vision_max_side: int = 1600

    @property
    def configured(self) -> bool:
        return bool(self.base_url)


def config_from_settings() -> LLMConfig:
    from django.conf import settings

    return LLMConfig(
        base_url=settings.OCR_LLM_BASE_URL,
        api_key=settings.OCR_LLM_API_KEY,
        model=settings.OCR_LLM_MODEL,
        vision=settings.OCR_LLM_VISION,
        connect_timeout=settings.OCR_LLM_CONNECT_TIMEOUT,
        read_timeout=settings.OCR_LLM_READ_TIMEOUT,
        page_timeout=settings.OCR_LLM_PAGE_TIMEOUT,
        max_retries=settings.OCR_LLM_MAX_RETRIES,
        max_tokens=settings.OCR_LLM_MAX_TOKENS,
        temperature=settings.OCR_LLM_TEMPERATURE,
        max_change=settings.OCR_LLM_MAX_CHANGE,
    )


# --- Client ------------------------------------------------------------------------------------


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    model: str
    seconds: float


class _SocketCloser:
    """Shuts down the request's socket when the scope is cancelled, however far the request got.

    httpcore's trace hook hands us the socket as soon as it is connected (and again after TLS),
    before the response headers, so a cancel during prompt processing is caught too.
    """

    def __init__(self, scope: engine.CancelScope) -> None:
        self.scope = scope
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.fired = False

    def trace(self, event: str, info: dict) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            with self._lock:
                self._sock = sock
                fired = self.fired
            if fired:
                self._shutdown(sock)

    def __call__(self) -> None:
        with self._lock:
            self.fired = True
            sock = self._sock
        self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket | None) -> None:
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread; close() would not
        except OSError:
            pass


SECRET_QUERY_KEYS = ("key", "token", "secret", "password", "auth", "signature", "sig")


def redact_url(url: str) -> str:
    """The URL as it may be shown or logged: no user:password, no secret-looking query values."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username or parts.password:
        netloc = f"***@{netloc}"
    query = "&".join(
        f"{name}=***" if any(word in name.lower() for word in SECRET_QUERY_KEYS) else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _headers(config: LLMConfig) -> dict:
    headers = {"Accept": "text/event-stream"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    return headers


def _url(config: LLMConfig, path: str) -> str:
    return config.base_url.rstrip("/") + path


@functools.lru_cache(maxsize=1)
def _ssl_context():
    return httpx.create_ssl_context()  # loading the CA bundle costs tens of ms: once per process


def _timeout(config: LLMConfig) -> httpx.Timeout:
    return httpx.Timeout(
        connect=config.connect_timeout, read=config.read_timeout, write=30.0, pool=config.connect_timeout
    )


def chat(
    config: LLMConfig,
    *,
    messages: list[dict],
    model: str,
    max_tokens: int,
    scope: engine.CancelScope,
) -> Completion:
    """One streamed chat completion, retried (bounded) on connection errors and 408/429/5xx.

    Raises engine.Cancelled when the scope is cancelled (the stream is closed at once), LLMError
    when the server gives no answer.
    """
    body: dict[str, Any] = {
        "messages": messages,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": config.temperature,
    }
    if model:
        body["model"] = model
    started = time.perf_counter()
    attempt = 0
    while True:
        scope.check()
        try:
            return _stream_once(config, body, model, scope, started)
        except _Retryable as exc:
            attempt += 1
            if attempt > config.max_retries:
                raise LLMError(f"{exc} (after {attempt} attempts)") from None
            delay = exc.retry_after if exc.retry_after is not None else config.retry_backoff * 2 ** (attempt - 1)
            logger.info("LLM request failed (%s); retry %d in %.1f s", exc, attempt, delay)
            if scope.cancelled.wait(min(delay, 10.0)):
                raise engine.Cancelled() from None


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _stream_once(config: LLMConfig, body: dict, model: str, scope: engine.CancelScope, started: float) -> Completion:
    closer = _SocketCloser(scope)
    parts: list[str] = []
    finish_reason = None
    reported_model = model
    # A connection per request (no keep-alive): the trace hook then always sees its socket.
    limits = httpx.Limits(max_keepalive_connections=0)
    try:
        with (
            scope.on_cancel(closer),
            httpx.Client(timeout=_timeout(config), limits=limits, verify=_ssl_context()) as client,
            client.stream(
                "POST",
                _url(config, "/chat/completions"),
                json=body,
                headers=_headers(config),
                extensions={"trace": closer.trace},
            ) as response,
        ):
            if response.status_code != 200:
                detail = _error_detail(response)
                message = f"LLM server answered {response.status_code}: {detail}"
                if response.status_code in RETRY_STATUSES:
                    raise _Retryable(message, _retry_after(response))
                raise LLMError(message)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                return _plain_completion(response, model, started)  # a server that ignores `stream`
            for line in response.iter_lines():
                scope.check()
                if time.perf_counter() - started > config.page_timeout:
                    raise LLMError(f"LLM answer took longer than {config.page_timeout:g} s")
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = _json(payload)
                if chunk.get("error"):
                    raise LLMError(f"LLM server error: {_message_of(chunk['error'])}")
                reported_model = chunk.get("model") or reported_model
                for choice in (chunk.get("choices") or [])[:1]:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        parts.append(content)
                    finish_reason = choice.get("finish_reason") or finish_reason
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        if scope.cancelled.is_set():
            raise engine.Cancelled() from None
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) or (
            isinstance(exc, httpx.RemoteProtocolError) and not parts
        ):
            where = redact_url(config.base_url)
            raise _Retryable(f"LLM server unreachable at {where}: {exc or type(exc).__name__}") from None
        raise LLMError(f"LLM request failed: {exc or type(exc).__name__}") from None
    scope.check()  # a shut-down socket may also look like a clean end of the stream
    return Completion(
        text="".join(parts), finish_reason=finish_reason, model=reported_model, seconds=time.perf_counter() - started
    )


def _plain_completion(response: httpx.Response, model: str, started: float) -> Completion:
    data = _json(response.read().decode(errors="replace"))
    choice = (data.get("choices") or [{}])[0]
    return Completion(
        text=(choice.get("message") or {}).get("content") or "",
        finish_reason=choice.get("finish_reason"),
        model=data.get("model") or model,
        seconds=time.perf_counter() - started,
    )


def _json(payload: str) -> dict:
    try:
        data = json.loads(payload)
    except ValueError:
        raise LLMError(f"LLM server sent something that is not JSON: {payload[:200]!r}") from None
    if not isinstance(data, dict):
        raise LLMError(f"LLM server sent unexpected JSON: {payload[:200]!r}")
    return data


def _message_of(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _error_detail(response: httpx.Response) -> str:
    raw = response.read()[:2000].decode(errors="replace")
    try:
        return _message_of(json.loads(raw).get("error") or raw)
    except (ValueError, AttributeError):
        return raw.strip() or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


_served_models: dict[str, str] = {}


def _served_model(config: LLMConfig) -> str:
    """The first model the server lists (remembered once found), for when none is configured."""
    if config.base_url not in _served_models:
        try:
            response = httpx.get(
                _url(config, "/models"), headers=_headers(config), timeout=config.connect_timeout, verify=_ssl_context()
            )
            data = response.json().get("data") or []
            name = str(data[0].get("id") or "") if data else ""
        except Exception:  # a server without /models still answers chat requests
            return ""
        if not name:
            return ""
        _served_models[config.base_url] = name
    return _served_models[config.base_url]


def resolve_model(config: LLMConfig, requested: str | None) -> str:
    return requested or config.model or _served_model(config)


def probe(config: LLMConfig, timeout: float = 2.0) -> dict:
    """For health and service-info: is a server configured, does it answer GET /models."""
    info: dict[str, Any] = {
        "configured": config.configured,
        "reachable": False,
        "base_url": redact_url(config.base_url) or None,
        "model": config.model or None,
        "vision": config.vision,
    }
    if not config.configured:
        info["detail"] = "set OCR_LLM_BASE_URL (and OCR_LLM_MODEL, OCR_LLM_API_KEY) to enable the LLM task kinds"
        return info
    started = time.perf_counter()
    try:
        response = httpx.get(_url(config, "/models"), headers=_headers(config), timeout=timeout, verify=_ssl_context())
    except httpx.HTTPError as exc:
        info["detail"] = f"unreachable: {exc or type(exc).__name__}"
        return info
    info["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    info["reachable"] = response.status_code < 500
    if response.status_code == 200:
        try:
            info["models"] = [str(m.get("id")) for m in (response.json().get("data") or [])][:20]
        except (ValueError, AttributeError):
            pass
    else:
        info["detail"] = f"GET /models answered {response.status_code}"
    return info
