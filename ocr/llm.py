"""LLM refinement of OCR text: an OpenAI-compatible chat-completions client that a CancelScope
can abort mid-generation, and the guard that decides whether the model's answer may replace
the page's OCR text.

No Django here (`config_from_settings` reads the settings lazily): text and image in, text out.

Cancellation: the answer is streamed (`stream: true`, SSE `data:` lines) over a connection of
its own. Its socket is registered with the task's CancelScope from the moment it is connected,
so a cancel (from the watcher thread) shuts it down at once: the reading thread wakes up, and
the server sees the connection closed and stops generating.

The guard: an empty answer, a truncated one (`finish_reason` "length") or one that differs from
the OCR text by more than `max_change` (character edit distance over the OCR text's length,
whitespace folded; default 0.5) is not used: the page keeps its OCR text and says why in its
error message. difflib's SequenceMatcher was measured at 0.7 s for a 4,600-character page and
mis-aligns repetitive text; the bit-parallel edit distance below takes milliseconds.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import engine

logger = logging.getLogger(__name__)

SOURCE_LLM = "llm"
DEFAULT_PROMPT = (
    "You correct the output of OCR (optical character recognition). The user message is the text "
    "that OCR read from one page of a scanned document. Fix misread characters, broken or joined "
    "words and wrong spacing. Keep the wording, language, order and line breaks; do not add, remove, "
    "summarise, translate or comment on anything. Reply with the corrected text only."
)
VISION_NOTE = " The page image is attached: where the OCR text and the image disagree, follow the image."
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
            raise _Retryable(f"LLM server unreachable at {config.base_url}: {exc or type(exc).__name__}") from None
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
        "base_url": config.base_url or None,
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


# --- Page refinement ----------------------------------------------------------------------------


@dataclass
class PageText:
    """A page's final text, where it came from, and (for LLM kinds) what the model did."""

    text: str
    source: str
    error: str | None = None
    extra: dict = field(default_factory=dict)


def image_data_url(image, max_side: int) -> str:
    """The page as a base64 PNG data URL, scaled down so that its longer side is at most `max_side`."""
    image = image.copy()
    image.thumbnail((max_side, max_side))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def build_messages(text: str, *, prompt: str, image_url: str | None) -> list[dict]:
    if image_url is None:
        return [{"role": "system", "content": prompt}, {"role": "user", "content": text}]
    parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url}}]
    return [{"role": "system", "content": prompt}, {"role": "user", "content": parts}]


def token_budget(config: LLMConfig, text: str) -> int:
    """max_tokens: the setting, or room for an answer as long as the OCR text even at one token per character."""
    if config.max_tokens > 0:
        return config.max_tokens
    return min(8192, len(text) + 256)


def refine_page(
    text: str,
    *,
    source: str,
    config: LLMConfig,
    scope: engine.CancelScope,
    prompt: str | None = None,
    model: str | None = None,
    image=None,
) -> PageText:
    """Ask the model to correct one page's text; fall back to `text` (and `source`) when the answer is unusable.

    Raises engine.Cancelled when the scope is cancelled meanwhile (nothing is to be recorded).
    """
    prompt_used = prompt or (DEFAULT_PROMPT + (VISION_NOTE if config.vision and image is not None else ""))
    model_name = resolve_model(config, model)
    extra: dict[str, Any] = {"model_used": model_name or None, "prompt_used": prompt_used, "llm_processing_time": 0.0}
    image_url = image_data_url(image, config.vision_max_side) if config.vision and image is not None else None
    if not text.strip() and image_url is None:
        return PageText(text=text, source=source, error="LLM not asked: OCR found no text on this page", extra=extra)
    started = time.perf_counter()
    try:
        completion = chat(
            config,
            messages=build_messages(text, prompt=prompt_used, image_url=image_url),
            model=model_name,
            max_tokens=token_budget(config, text),
            scope=scope,
        )
    except LLMError as exc:
        extra["llm_processing_time"] = round(time.perf_counter() - started, 4)
        return PageText(text=text, source=source, error=f"LLM refinement failed, OCR text kept: {exc}", extra=extra)
    extra["model_used"] = completion.model or model_name or None
    extra["llm_processing_time"] = round(completion.seconds, 4)
    answer = clean_answer(completion.text)
    reason, change = judge(text, answer, completion.finish_reason, max_change=config.max_change)
    if change is not None:
        extra["llm_change_rate"] = round(change, 4)
    if reason is not None:
        return PageText(text=text, source=source, error=f"LLM answer not used ({reason}); OCR text kept", extra=extra)
    return PageText(text=answer, source=SOURCE_LLM, extra=extra)


def clean_answer(answer: str) -> str:
    """Strip the answer, and a Markdown code fence around all of it."""
    answer = answer.strip()
    if answer.startswith("```") and answer.endswith("```") and len(answer) >= 6:
        inner = answer[3:-3]
        if "\n" in inner:
            first_line, rest = inner.split("\n", 1)
            if not first_line.strip() or first_line.strip().isalnum():  # a language tag such as ```text
                inner = rest
        answer = inner.strip()
    return answer


def judge(
    ocr_text: str, answer: str, finish_reason: str | None, *, max_change: float
) -> tuple[str | None, float | None]:
    """(why the answer is unusable or None, the change rate when measured)."""
    if finish_reason == "length":
        return "truncated: the model hit its max_tokens limit", None
    if not answer:
        return "empty answer", None
    reference = " ".join(ocr_text.split())
    if not reference:
        return None, None  # nothing to compare with (vision on a page OCR found empty)
    candidate = " ".join(answer.split())
    lower_bound = abs(len(candidate) - len(reference)) / len(reference)
    if max_change > 0 and lower_bound > max_change:
        return f"too different from the OCR text: length {len(candidate)} vs {len(reference)}", None
    change = levenshtein(reference, candidate) / len(reference)
    if max_change > 0 and change > max_change:
        return f"too different from the OCR text: {change:.0%} of characters changed, limit {max_change:.0%}", change
    return None, change


def levenshtein(a: str, b: str) -> int:
    """Edit distance, bit-parallel (Myers 1999 / Hyyrö 2001) on Python integers: O(len(a) * len(b) / 64)."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    masks: dict[str, int] = {}
    for i, char in enumerate(b):
        masks[char] = masks.get(char, 0) | (1 << i)
    full = (1 << m) - 1
    top = 1 << (m - 1)
    plus, minus, score = full, 0, m
    for char in a:
        eq = masks.get(char, 0)
        xv = eq | minus
        xh = (((eq & plus) + plus) ^ plus) | eq
        hp = minus | (~(xh | plus) & full)
        hm = plus & xh
        if hp & top:
            score += 1
        elif hm & top:
            score -= 1
        hp = ((hp << 1) | 1) & full
        hm = (hm << 1) & full
        plus = hm | (~(xv | hp) & full)
        minus = hp & xv
    return score
