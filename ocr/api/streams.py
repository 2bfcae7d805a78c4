"""Server-sent events: GET /v1/ocr/stream/{id}, a task's events (ocr.streams.follow), and
GET /v1/ocr/events, the staff operator feed (ocr.feed.follow)."""

from __future__ import annotations

import contextlib
import json
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from rest_framework.exceptions import NotAuthenticated, PermissionDenied

from .. import feed, streams
from ..exceptions import InvalidInput, error_json
from ..models import OCRTask
from ..permissions import is_operator
from .common import drf_request, refuse_method, require_access, visible_task

logger = logging.getLogger(__name__)


def sse_frame(event: dict, id_field: str = "seq") -> bytes:
    return f"id: {event[id_field]}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _visible_task(request: HttpRequest, task_id: str) -> OCRTask:
    wrapped = drf_request(request)
    require_access(wrapped)
    return visible_task(wrapped, task_id)


def _seq(raw: str, name: str) -> int:
    if not raw.isascii() or not raw.isdigit():
        raise InvalidInput(f"{name}: must be a whole number, 0 or more (an event's seq or id)")
    return int(raw)


def _after(request: HttpRequest, default: int | None = 0) -> int | None:
    """The position to resume after: `Last-Event-ID` (what EventSource sends back), else
    `?after=`; `default` when neither is given. Anything but a whole number in either is a
    400, even in the one not used: a bad value is never silently ignored."""
    query = _seq(request.GET["after"], "after") if "after" in request.GET else default
    if "Last-Event-ID" in request.headers:
        return _seq(request.headers["Last-Event-ID"], "Last-Event-ID")
    return query


def event_stream(frames) -> StreamingHttpResponse:
    """A text/event-stream of `frames`, kept out of proxy buffers and caches."""
    response = StreamingHttpResponse(frames, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def stream_events(request: HttpRequest, task_id: str):
    """Stored events after Last-Event-ID (or ?after=), then live ones, until the terminal one."""

    def admit(request: HttpRequest) -> tuple:
        return _visible_task(request, task_id).pk, _after(request)

    keepalive = settings.OCR_SSE_KEEPALIVE_SECONDS
    return await _sse(request, admit, lambda position: streams.follow(*position, keepalive=keepalive))


async def _sse(request: HttpRequest, admit, follow, id_field: str = "seq"):
    """GET only: `admit(request)` (sync: access, the resume position) gives what `follow` takes,
    and its refusals answer as JSON errors; then the stream of `follow(...)` with keep-alives."""
    refused = refuse_method(request, ("GET",))
    if refused is not None:
        return refused
    try:
        position = await sync_to_async(admit)(request)
    except Exception as exc:
        response = error_json(exc)
        if response is None:
            raise
        return response

    async def frames():
        yield b": connected\n\n"
        try:
            async with contextlib.aclosing(follow(position)) as events:
                async for event in events:
                    yield b": keep-alive\n\n" if event is None else sse_frame(event, id_field)
        except Exception:  # ended, not left open: a response whose frames raise stays open, silent
            logger.exception("%s: event stream failed; ended, the client reconnects", request.path)

    return event_stream(frames())


def _operator(request: HttpRequest) -> None:
    """Staff only, whatever OCR_ALLOW_ANONYMOUS says: 401 without credentials, 403 for others."""
    user = drf_request(request).user
    if not user.is_authenticated:
        raise NotAuthenticated()
    if not is_operator(user):
        logger.info("operator feed: SSE refused to %s", user.username)
        raise PermissionDenied("The operator feed is for staff")


async def operator_events(request: HttpRequest):
    """The operator feed after Last-Event-ID (or ?after=; neither: the newest OCR_FEED_REPLAY
    items), then live, with a comment keep-alive; `id:` is the item's id, the resume cursor."""

    def admit(request: HttpRequest) -> int | None:
        _operator(request)
        return _after(request, default=None)

    keepalive = settings.OCR_SSE_KEEPALIVE_SECONDS
    return await _sse(request, admit, lambda after: feed.follow(after, keepalive=keepalive), id_field="id")
