"""GET /v1/ocr/stream/{id}: server-sent events of a task (ocr.streams.follow as SSE frames)."""

from __future__ import annotations

import contextlib
import json

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse

from .. import streams
from ..exceptions import InvalidInput, error_json
from ..models import OCRTask
from .common import drf_request, refuse_method, require_access, visible_task


def sse_frame(event: dict) -> bytes:
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _visible_task(request: HttpRequest, task_id: str) -> OCRTask:
    wrapped = drf_request(request)
    require_access(wrapped)
    return visible_task(wrapped, task_id)


def _seq(raw: str | None, name: str) -> int:
    if raw is None:
        return 0
    if not raw.isascii() or not raw.isdigit():
        raise InvalidInput(f"{name}: must be a whole number, 0 or more (an event's seq)")
    return int(raw)


def _after(request: HttpRequest) -> int:
    """The seq to resume after: `Last-Event-ID` (what EventSource sends back), else `?after=`."""
    header = _seq(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    query = _seq(request.GET.get("after"), "after")
    return header if "Last-Event-ID" in request.headers else query


async def stream_events(request: HttpRequest, task_id: str):
    """Stored events after Last-Event-ID (or ?after=), then live ones, until the terminal one."""
    refused = refuse_method(request, ("GET",))
    if refused is not None:
        return refused
    try:
        task = await sync_to_async(_visible_task)(request, task_id)
        after = _after(request)
    except Exception as exc:
        response = error_json(exc)
        if response is None:
            raise
        return response

    async def frames():
        yield b": connected\n\n"
        follow = streams.follow(task.pk, after, keepalive=settings.OCR_SSE_KEEPALIVE_SECONDS)
        async with contextlib.aclosing(follow) as events:
            async for event in events:
                yield b": keep-alive\n\n" if event is None else sse_frame(event)

    response = StreamingHttpResponse(frames(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
