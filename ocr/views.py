"""REST views: parse, call a service or selector, serialize. Errors map in ocr.exceptions."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django_ratelimit.core import get_usage
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.decorators import api_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import engine, llm, metrics, schema, selectors, services
from .exceptions import DomainError, InvalidInput, NotAuthenticated, RateLimited, ServiceUnavailable, error_json
from .models import ACTIVE_STATUSES, TERMINAL_STATUSES, CancelSource, OCRTask, TaskStatus, TaskType
from .queue import redis_client
from .serializers import PARAMETER_RANGES, TaskSerializer, parse_params, read_upload

logger = logging.getLogger(__name__)

CANCEL_MESSAGES = {
    TaskType.OCR: "OCR task successfully cancelled",
    TaskType.LLM: "LLM task successfully cancelled",
    TaskType.PDF: "PDF task successfully cancelled",
    TaskType.PDF_LLM: "PDF LLM task successfully cancelled",
}
STREAM_CANCEL_MESSAGE = "Streaming task successfully cancelled"
ALREADY_CANCELLED_MESSAGE = "Task was already cancelled"
MAX_REASON_LENGTH = 1000
MAX_METRICS_WINDOW = 60 * 24 * 366


def client_ip(request) -> str:
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def client_key(group: str, request) -> str:
    """Rate-limit key: the user when authenticated, else the IP address."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return f"ip:{client_ip(request)}"


def enforce_rate(request, *, group: str, rate: str) -> None:
    usage = get_usage(request, group=group, key=client_key, rate=rate, increment=True)
    if usage and usage["should_limit"]:
        raise RateLimited(
            f"Rate limit of {rate} exceeded for {group}; retry in {usage['time_left']} s",
            retry_after=usage["time_left"],
        )


# --- Submit --------------------------------------------------------------------------------


def _session_key(request) -> str:
    """Anonymous tasks are listed for the browser session that made them."""
    if request.user.is_authenticated:
        return ""
    session = request.session
    if not session.session_key:
        session.save()
    return session.session_key or ""


def accept_submission(request: Request, *, task_type: str, streaming: bool = False) -> OCRTask:
    """Everything a submit endpoint does before waiting: limits, validation, task creation."""
    if not settings.OCR_ALLOW_ANONYMOUS and not request.user.is_authenticated:
        raise NotAuthenticated("Authentication credentials were not provided.")
    enforce_rate(request, group="ocr-submit", rate=settings.RATE_LIMIT_REQUESTS)
    if task_type in (TaskType.LLM, TaskType.PDF_LLM) and not settings.OCR_LLM_BASE_URL:
        raise ServiceUnavailable("LLM OCR is not configured: set OCR_LLM_BASE_URL (and OCR_LLM_MODEL, OCR_LLM_API_KEY)")
    if settings.MAX_CONCURRENT_TASKS:
        active = OCRTask.objects.filter(status__in=ACTIVE_STATUSES).count()
        if active >= settings.MAX_CONCURRENT_TASKS:
            exc = ServiceUnavailable(
                f"Server busy: {active} tasks queued or running (MAX_CONCURRENT_TASKS); retry later"
            )
            exc.headers = {"Retry-After": "5"}
            raise exc
    params = parse_params(request.data.get("request"), task_type)
    submission = read_upload(request.data.get("file"), task_type, params)
    user = request.user if request.user.is_authenticated else None
    task = services.task_submit(
        task_type=task_type,
        params=submission.params,
        filename=submission.filename,
        data=submission.data,
        owner=user,
        session_key=_session_key(request),
        streaming=streaming,
        task_id=params.get("task_id"),
        total_pages=submission.total_pages,
    )
    task.refresh_from_db()
    return task


class SubmitView(APIView):
    """Async submit: 202 with the pending task."""

    parser_classes = [MultiPartParser, FormParser]
    task_type: str = TaskType.OCR
    streaming: bool = False

    @extend_schema(
        request={"multipart/form-data": schema.UploadSerializer},
        responses=schema.SUBMIT_RESPONSES,
        description="Queue an OCR task; poll it, stream its events, or cancel it. Streaming submits also "
        "answer `stream_url` (SSE) and `ws_url` (WebSocket).",
    )
    def post(self, request: Request) -> Response:
        task = accept_submission(request, task_type=self.task_type, streaming=self.streaming)
        return Response(TaskSerializer(task, context={"request": request}).data, status=202)


def _drf_request(request: HttpRequest) -> Request:
    return Request(
        request,
        parsers=[MultiPartParser(), FormParser()],
        authenticators=[TokenAuthentication(), SessionAuthentication()],
    )


def _accept_sync(request: HttpRequest, task_type: str) -> tuple[OCRTask, Request]:
    drf_request = _drf_request(request)
    try:
        return accept_submission(drf_request, task_type=task_type), drf_request
    finally:
        connection.close_if_unusable_or_obsolete()


def _representation(task_id, drf_request: Request) -> dict:
    task = OCRTask.objects.get(pk=task_id)
    return TaskSerializer(task, context={"request": drf_request}).data


def _cancel_if_active(task_id, *, reason: str, by: str) -> None:
    """Cancel on the server's own initiative (client gone, wait too long); a task that finished
    meanwhile stays as it is."""
    try:
        services.task_cancel(task=OCRTask.objects.get(pk=task_id), reason=reason, by=by)
    except DomainError:
        pass


def make_sync_view(task_type: str):
    """Sync submit as an async view: daphne cancels it when the client goes, and so do we."""

    @csrf_exempt
    async def view(request: HttpRequest) -> JsonResponse:
        if request.method != "POST":
            return JsonResponse({"detail": f'Method "{request.method}" not allowed.'}, status=405)
        try:
            task, drf_request = await sync_to_async(_accept_sync)(request, task_type)
        except DomainError as exc:
            return error_json(exc)
        except Exception as exc:  # a DRF parse error of the multipart body
            status = getattr(exc, "status_code", None)
            if status and 400 <= status < 500:
                return JsonResponse({"detail": str(getattr(exc, "detail", exc))}, status=status)
            raise
        logger.info("task %s: sync request received, waiting", task.pk)
        try:
            await _wait_terminal(task)
        except asyncio.CancelledError:
            logger.info("task %s: sync client disconnected", task.pk)
            await asyncio.shield(
                sync_to_async(_cancel_if_active)(task.pk, reason=services.DISCONNECT_REASON, by=CancelSource.DISCONNECT)
            )
            raise
        return JsonResponse(await sync_to_async(_representation)(task.pk, drf_request), status=200)

    return view


async def _wait_terminal(task: OCRTask, poll: float = 0.05) -> None:
    started = time.monotonic()
    check_deadline = task.deadline_at is not None
    while True:
        status = await OCRTask.objects.filter(pk=task.pk).values_list("status", flat=True).afirst()
        if status in TERMINAL_STATUSES or status is None:
            return
        if check_deadline:
            await sync_to_async(services.task_cancel_if_expired)(task=task)
        if time.monotonic() - started > settings.OCR_SYNC_TIMEOUT:
            reason = f"Sync wait of {settings.OCR_SYNC_TIMEOUT} s exceeded"
            await sync_to_async(_cancel_if_active)(task.pk, reason=reason, by=CancelSource.DEADLINE)
        await asyncio.sleep(poll)


# --- Read ----------------------------------------------------------------------------------


class TaskDetailView(generics.GenericAPIView):
    task_type: str | None = None
    serializer_class = TaskSerializer

    @extend_schema(responses={200: TaskSerializer, 404: schema.ErrorSerializer})
    def get(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get_for(user=request.user, task_id=task_id, task_type=self.task_type)
        return Response(TaskSerializer(task, context={"request": request}).data)


@extend_schema(
    parameters=[
        OpenApiParameter("status", enum=TaskStatus.values, required=False),
        OpenApiParameter("task_type", enum=TaskType.values, required=False),
    ]
)
class TaskListView(generics.ListAPIView):
    serializer_class = TaskSerializer

    def get_queryset(self):
        status = self.request.query_params.get("status") or None
        task_type = self.request.query_params.get("task_type") or None
        if status and status not in TaskStatus.values:
            raise InvalidInput(f"status: must be one of {', '.join(TaskStatus.values)}")
        if task_type and task_type not in TaskType.values:
            raise InvalidInput(f"task_type: must be one of {', '.join(TaskType.values)}")
        session_key = self.request.session.session_key if not self.request.user.is_authenticated else None
        return selectors.task_list_for(
            user=self.request.user, session_key=session_key, status=status, task_type=task_type
        )


# --- Cancel --------------------------------------------------------------------------------


def parse_cancel_reason(body: bytes) -> str | None:
    """The body is JSON whatever its Content-Type (curl -d sends form-urlencoded)."""
    raw = body.strip()
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput('Body must be JSON, for example {"reason": "..."}') from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InvalidInput('Body must be a JSON object, for example {"reason": "..."}')
    return validate_reason(data.get("reason"))


def validate_reason(reason) -> str | None:
    """A cancel reason: a string of at most MAX_REASON_LENGTH characters; None when blank."""
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise InvalidInput("reason: must be a string")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidInput(f"reason: {len(reason)} characters, more than {MAX_REASON_LENGTH}")
    return reason.strip() or None


def cancel_response(task: OCRTask, *, newly_cancelled: bool, via_stream: bool = False) -> dict:
    if not newly_cancelled:
        message = ALREADY_CANCELLED_MESSAGE
    elif via_stream:
        message = STREAM_CANCEL_MESSAGE
    else:
        message = CANCEL_MESSAGES[task.task_type]
    return {
        "task_id": str(task.pk),
        "status": task.status,
        "message": message,
        "cancelled_at": task.cancelled_at.isoformat() if task.cancelled_at else None,
        "cancellation_reason": task.cancellation_reason,
    }


class CancelView(APIView):
    """POST .../{id}/cancel on every path; one service does the work."""

    task_type: str | None = None
    streaming_only: bool = False

    @extend_schema(
        request=schema.CancelRequestSerializer,
        responses=schema.CANCEL_RESPONSES,
        description="Cancel a pending or processing task: its worker stops within a fraction of a second "
        "(mid-page), pages finished before are kept. Missing or blank reason: `User requested cancellation`.",
    )
    def post(self, request: Request, task_id: str) -> Response:
        enforce_rate(request, group="ocr-cancel", rate=settings.OCR_CANCEL_RATE)
        task = selectors.task_get_for(
            user=request.user, task_id=task_id, task_type=self.task_type, streaming_only=self.streaming_only
        )
        reason = parse_cancel_reason(request._request.body)
        logger.info("task %s: cancel requested from %s", task.pk, client_ip(request))
        outcome = services.task_cancel(
            task=task, reason=reason, by=CancelSource.USER, user=request.user, client=client_ip(request)
        )
        body = cancel_response(outcome.task, newly_cancelled=outcome.newly_cancelled, via_stream=self.streaming_only)
        return Response(body, status=200)

    def finalize_response(self, request, response, *args, **kwargs):
        metrics.count_cancel_request(response.status_code)
        return super().finalize_response(request, response, *args, **kwargs)


class CleanupView(APIView):
    """DELETE /v1/ocr/tasks/cleanup (staff): apply the retention now."""

    @extend_schema(
        parameters=[OpenApiParameter("days", int, description="Override OCR_RETENTION_DAYS")],
        responses={200: dict, 403: schema.ErrorSerializer},
    )
    def delete(self, request: Request) -> Response:
        if not (request.user.is_authenticated and request.user.is_staff):
            raise PermissionDenied("Staff only")
        try:
            days = int(request.query_params.get("days", settings.OCR_RETENTION_DAYS))
        except ValueError:
            raise InvalidInput("days: must be a whole number") from None
        if days < 0:
            raise InvalidInput("days: must be 0 or more")
        return Response(
            services.purge_expired(retention_days=days, audit_retention_days=settings.OCR_AUDIT_RETENTION_DAYS)
        )


# --- Service information ----------------------------------------------------------------------


def _check_redis() -> tuple[bool, str]:
    try:
        redis_client(settings.REDIS_URL).ping()
        return True, "ok"
    except Exception as exc:
        return False, str(exc)


def _queue_info() -> dict:
    from django_q.brokers import get_broker
    from django_q.status import Stat

    try:
        broker = get_broker()
        return {"queue_depth": broker.queue_size(), "workers": sum(len(s.workers) for s in Stat.get_all(broker))}
    except Exception as exc:
        return {"queue_depth": None, "workers": 0, "error": str(exc)}


@extend_schema(responses={200: dict})
@api_view(["GET"])
def health(request: Request) -> Response:
    checks: dict[str, dict] = {}
    try:
        OCRTask.objects.exists()
        checks["database"] = {"ok": True, "vendor": connection.vendor}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": str(exc)}
    ok, detail = _check_redis()
    checks["redis"] = {"ok": ok, "detail": detail}
    try:
        checks["tesseract"] = {
            "ok": True,
            "version": engine.tesseract_version(),
            "languages": engine.tesseract_languages(),
        }
    except Exception as exc:
        checks["tesseract"] = {"ok": False, "error": str(exc)}
    queue = _queue_info() if ok else {"queue_depth": None, "workers": 0}
    checks["workers"] = {"ok": queue["workers"] > 0, "live": queue["workers"], "queue_depth": queue["queue_depth"]}
    llm_info = llm.probe(llm.config_from_settings())  # optional: only a configured, unreachable one degrades
    checks["llm"] = {"ok": llm_info["reachable"] or not llm_info["configured"], **llm_info}
    essential = all(checks[name]["ok"] for name in ("database", "redis", "tesseract"))
    optional = checks["workers"]["ok"] and checks["llm"]["ok"]
    body = {
        "status": "ok" if essential and optional else ("degraded" if essential else "down"),
        **checks,
    }
    return Response(body, status=200 if essential else 503)


@extend_schema(responses={200: dict})
@api_view(["GET"])
def service_info(request: Request) -> Response:
    return Response(
        {
            "service": "ocrsite",
            "api_version": "v1",
            "task_types": TaskType.values,
            "workers": settings.OCR_WORKERS,
            "tesseract_version": engine.tesseract_version(),
            "languages": engine.tesseract_languages(),
            "llm_configured": bool(settings.OCR_LLM_BASE_URL),
            "llm": llm.probe(llm.config_from_settings()),
            "limits": {
                "max_image_bytes": settings.OCR_MAX_IMAGE_BYTES,
                "max_pdf_bytes": settings.OCR_MAX_PDF_BYTES,
                "max_pdf_pages": settings.OCR_MAX_PDF_PAGES,
                "submit_rate": settings.RATE_LIMIT_REQUESTS,
                "cancel_rate": settings.OCR_CANCEL_RATE,
            },
            "anonymous_allowed": settings.OCR_ALLOW_ANONYMOUS,
        }
    )


@extend_schema(responses={200: dict})
@api_view(["GET"])
def parameters(request: Request) -> Response:
    return Response(
        {
            "parameters": PARAMETER_RANGES,
            "languages": engine.tesseract_languages(),
            "image_types": ["jpg", "jpeg", "png", "bmp", "tiff", "webp"],
            "pdf_types": ["pdf"],
        }
    )


@extend_schema(
    parameters=[OpenApiParameter("window", int, description="Only tasks created in the last N minutes (1..527040)")],
    responses={200: dict},
)
@api_view(["GET"])
def metrics_json(request: Request) -> Response:
    try:
        window = int(request.query_params.get("window") or 0) or None
    except ValueError:
        raise InvalidInput("window: must be a number of minutes") from None
    if window is not None and not 1 <= window <= MAX_METRICS_WINDOW:
        raise InvalidInput(f"window: must be between 1 and {MAX_METRICS_WINDOW} minutes")
    return Response(metrics.snapshot(window))


def metrics_prometheus(request: HttpRequest):
    """GET /metrics in Prometheus text format."""
    from django.http import HttpResponse
    from prometheus_client import CONTENT_TYPE_LATEST

    return HttpResponse(metrics.prometheus_text(), content_type=CONTENT_TYPE_LATEST)


# --- Server-sent events ---------------------------------------------------------------------


def _sse_frame(event: dict) -> bytes:
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _stream_task(request: HttpRequest, task_id: str) -> OCRTask:
    drf_request = _drf_request(request)
    if not settings.OCR_ALLOW_ANONYMOUS and not drf_request.user.is_authenticated:
        raise NotAuthenticated("Authentication credentials were not provided.")
    return selectors.task_get_for(user=drf_request.user, task_id=task_id)


async def stream_events(request: HttpRequest, task_id: str):
    """GET /v1/ocr/stream/{id}: stored events after Last-Event-ID, then live ones, until terminal."""
    from channels.layers import get_channel_layer
    from django.http import StreamingHttpResponse

    from .models import TERMINAL_EVENTS
    from .progress import group_name

    try:
        task = await sync_to_async(_stream_task)(request, task_id)
    except DomainError as exc:
        return error_json(exc)
    try:
        last_seq = int(request.headers.get("Last-Event-ID") or request.GET.get("after") or 0)
    except ValueError:
        last_seq = 0

    async def events():
        nonlocal last_seq
        layer = get_channel_layer()
        channel = await layer.new_channel()
        group = group_name(task.pk)
        await layer.group_add(group, channel)  # before the replay, so nothing falls between
        try:
            yield b": connected\n\n"
            while True:
                for event in await sync_to_async(selectors.events_after)(task_id=task.pk, seq=last_seq):
                    last_seq = event["seq"]
                    yield _sse_frame(event)
                    if event["type"] in TERMINAL_EVENTS:
                        return
                try:
                    message = await asyncio.wait_for(layer.receive(channel), timeout=settings.OCR_SSE_KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                event = message.get("event") or {}
                if event.get("seq") == last_seq + 1:
                    last_seq = event["seq"]
                    yield _sse_frame(event)
                    if event["type"] in TERMINAL_EVENTS:
                        return
                # anything else (gap or duplicate): the next loop reads the database
        finally:
            await layer.group_discard(group, channel)

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
