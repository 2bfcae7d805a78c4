"""Submit endpoints: async (202 with the pending task) and sync (an async view that follows the
task to its end, and cancels it when the client leaves)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import idempotency, services, streams
from ..exceptions import error_json
from ..kinds import Kind
from ..models import CancelledBy, OCRTask
from . import schema, throttles
from .common import drf_request, refuse_method, require_access, session_key
from .idempotency import REPLAYED_HEADER, caller_of, fingerprint, idempotency_key, idempotent
from .requests import parse_request, read_upload
from .serializers import TaskSerializer

logger = logging.getLogger(__name__)


def accept_submission(request: Request, *, kind: Kind, streaming: bool = False) -> OCRTask:
    """Parse the `request` part and the file, then submit (the service admits or refuses)."""
    parsed = parse_request(request.data.get("request"), kind)
    upload = read_upload(request.data.get("file"), kind, parsed.params)
    return services.task_submit(
        kind=kind,
        params=upload.params,
        filename=upload.filename,
        data=upload.data,
        owner=request.user if request.user.is_authenticated else None,
        session_key=session_key(request),
        streaming=streaming,
        task_id=parsed.task_id,
        total_pages=upload.total_pages,
        warnings=upload.warnings,
    )


class SubmitView(APIView):
    """Async submit: 202 with the pending task."""

    parser_classes = [MultiPartParser, FormParser]
    throttle_scope = throttles.SUBMIT_SCOPE
    kind: Kind | None = None
    streaming: bool = False

    @extend_schema(
        request=None,  # the multipart body: ocr.api.openapi (the `request` part as JSON)
        responses=schema.SUBMIT_RESPONSES,
        description="Queue an OCR task; poll it, stream its events, or cancel it. Streaming submits also "
        "answer `stream_url` (SSE) and `ws_url` (WebSocket).",
    )
    def post(self, request: Request) -> Response:
        def respond() -> tuple[int, dict]:
            task = accept_submission(request, kind=self.kind, streaming=self.streaming)
            return 202, TaskSerializer(task, context={"request": request}).data

        return idempotent(request, respond)


def _accept_sync(request: HttpRequest, kind: Kind) -> tuple[uuid.UUID, Request, bool]:
    """(task id, DRF request, replayed): a replay (same Idempotency-Key) follows the first call's task."""
    wrapped = drf_request(request)
    try:
        require_access(wrapped)
        throttles.enforce(wrapped, throttles.SUBMIT_SCOPE)
        key = idempotency_key(wrapped)
        if key is None:
            return accept_submission(wrapped, kind=kind).pk, wrapped, False
        caller = caller_of(wrapped)
        record = idempotency.idempotency_claim(caller=caller, key=key, fingerprint=fingerprint(wrapped))
        if record.status_code is not None:
            return uuid.UUID(record.body["task_id"]), wrapped, True
        try:
            task = accept_submission(wrapped, kind=kind)
        except BaseException:
            idempotency.idempotency_release(record)
            raise
        idempotency.idempotency_store(record, status_code=200, body={"task_id": str(task.pk)})
        return task.pk, wrapped, False
    finally:
        connection.close_if_unusable_or_obsolete()


def _representation(task_id: uuid.UUID, request: Request) -> dict:
    return TaskSerializer(OCRTask.objects.get(pk=task_id), context={"request": request}).data


async def wait_terminal(task_id: uuid.UUID) -> None:
    """Follow the task's events to the terminal one; past OCR_SYNC_TIMEOUT, cancel it and keep
    following (its `cancelled` event ends the wait)."""
    timeout_reason = f"Sync wait of {settings.OCR_SYNC_TIMEOUT} s exceeded"
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + settings.OCR_SYNC_TIMEOUT
    async with contextlib.aclosing(streams.follow(task_id, keepalive=settings.OCR_SSE_KEEPALIVE_SECONDS)) as events:
        async for _ in events:
            if loop.time() >= give_up_at:
                give_up_at = float("inf")
                await sync_to_async(services.task_cancel_if_active)(
                    task_id=task_id, reason=timeout_reason, cancelled_by=CancelledBy.DEADLINE
                )


def make_sync_view(kind: Kind):
    """Sync submit as an async view: daphne cancels it when the client goes, and so do we."""

    @csrf_exempt
    async def view(request: HttpRequest) -> JsonResponse:
        refused = refuse_method(request, ("POST",))
        if refused is not None:
            return refused
        try:
            task_id, wrapped, replayed = await sync_to_async(_accept_sync)(request, kind)
        except Exception as exc:  # domain errors, DRF's parse and auth errors: 4xx, 503
            response = error_json(exc)
            if response is None:
                raise
            return response
        logger.info("task %s: sync request received%s, waiting", task_id, " (idempotent replay)" if replayed else "")
        try:
            await wait_terminal(task_id)
        except asyncio.CancelledError:
            logger.info("task %s: sync client disconnected", task_id)
            if not replayed:  # the first caller's disconnect cancels; a replaying one only leaves
                await asyncio.shield(
                    sync_to_async(services.task_cancel_if_active)(
                        task_id=task_id, reason=services.DISCONNECT_REASON, cancelled_by=CancelledBy.DISCONNECT
                    )
                )
            raise
        response = JsonResponse(await sync_to_async(_representation)(task_id, wrapped), status=200)
        if replayed:
            response[REPLAYED_HEADER] = "true"
        return response

    return view
