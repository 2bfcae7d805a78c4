"""Many tasks at once (API.md section 8): bulk and selective cancel, batches, resume."""

from __future__ import annotations

import dataclasses
import json
import logging

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import bulk, engine, kinds, metrics, selectors
from ..exceptions import DomainError, InvalidInput, UnsupportedMediaType
from ..kinds import KINDS, Kind
from ..models import Batch, CancelledBy, OCRTask, Priority, TaskStatus
from . import schema, throttles
from .common import client_ip, session_key, visible_task
from .fields import StrictCharField
from .idempotency import idempotent
from .requests import IMAGE_KINDS, _field_errors, parse_request, read_upload
from .serializers import MAX_REASON_LENGTH, TaskSerializer, cancel_reason, parse_json_body

logger = logging.getLogger(__name__)

MAX_BATCH_FILES = 100
BATCH_CANCEL_MESSAGE = "Batch successfully cancelled"
BATCH_ALREADY_CANCELLED_MESSAGE = "Batch was already cancelled"


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class RejectUnknownMixin:
    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name: [f"unknown field; accepted fields: {', '.join(self.fields)}"] for name in unknown}
                )
        return super().to_internal_value(data)


class TaskFilterInputSerializer(RejectUnknownMixin, serializers.Serializer):
    status = serializers.ListField(child=serializers.ChoiceField(choices=TaskStatus.values), required=False)
    task_type = serializers.ListField(child=serializers.ChoiceField(choices=list(KINDS)), required=False)
    priority = serializers.ListField(child=serializers.ChoiceField(choices=Priority.values), required=False)
    batch_id = serializers.UUIDField(required=False, allow_null=True)
    created_after = serializers.DateTimeField(required=False, allow_null=True)
    created_before = serializers.DateTimeField(required=False, allow_null=True)


class BulkCancelInputSerializer(RejectUnknownMixin, serializers.Serializer):
    task_ids = serializers.ListField(
        child=StrictCharField(max_length=100), required=False, max_length=bulk.MAX_BULK_CANCEL
    )
    filter = TaskFilterInputSerializer(required=False)
    reason = StrictCharField(required=False, allow_null=True, allow_blank=True, max_length=MAX_REASON_LENGTH)
    dry_run = StrictBooleanField(default=False)

    def validate(self, data: dict) -> dict:
        if ("task_ids" in data) == ("filter" in data):
            raise serializers.ValidationError({"body": ["give either task_ids or filter (not both)"]})
        return data


class BulkCancelResultSerializer(serializers.Serializer):
    cancelled = serializers.ListField(child=serializers.UUIDField())
    already_cancelled = serializers.ListField(child=serializers.UUIDField())
    already_finished = serializers.ListField(child=serializers.UUIDField())
    not_found = serializers.ListField(child=serializers.CharField())
    truncated = serializers.BooleanField()
    reason = serializers.CharField()


def _json_object(request: Request) -> dict:
    data = parse_json_body(request._request.body)  # JSON whatever its Content-Type
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInput('Body must be a JSON object, for example {"task_ids": ["..."]}')
    return data


def _caller_session(request: Request) -> str | None:
    return request.session.session_key if not request.user.is_authenticated else None


class BulkCancelView(APIView):
    """POST /v1/ocr/tasks/cancel: one call, one count against the cancel rate limit."""

    throttle_scope = throttles.CANCEL_SCOPE

    @extend_schema(
        operation_id="tasks_bulk_cancel",
        request={"application/json": BulkCancelInputSerializer},
        responses={200: BulkCancelResultSerializer, 400: schema.ErrorSerializer, 429: schema.ErrorSerializer},
        description="Cancel up to 1000 tasks by id, or the caller's tasks matched by a filter (oldest first, "
        "at most 1000, `truncated` when more matched). `dry_run`: what would happen, nothing changed.",
    )
    def post(self, request: Request) -> Response:
        body = _json_object(request)
        task_ids = body.get("task_ids")
        if isinstance(task_ids, list) and len(task_ids) > bulk.MAX_BULK_CANCEL:
            raise InvalidInput(f"task_ids: at most {bulk.MAX_BULK_CANCEL} ids per call, got {len(task_ids)}")
        serializer = BulkCancelInputSerializer(data=body)
        if not serializer.is_valid():
            raise InvalidInput(_field_errors(serializer.errors), errors=serializer.errors)
        data = serializer.validated_data
        if "task_ids" in data:
            tasks, task_filter = selectors.tasks_visible_to(request.user), None
        else:
            tasks = selectors.tasks_owned_by(user=request.user, session_key=_caller_session(request))
            task_filter = bulk.TaskFilter(
                **{key: tuple(value) if isinstance(value, list) else value for key, value in data["filter"].items()}
            )
        result = bulk.tasks_cancel_many(
            tasks=tasks,
            task_ids=data.get("task_ids"),
            task_filter=task_filter,
            reason=data.get("reason"),
            dry_run=data["dry_run"],
            cancelled_by=CancelledBy.USER,
            user=request.user,
            client=client_ip(request),
        )
        return Response(result.as_dict())

    def finalize_response(self, request, response, *args, **kwargs):
        metrics.count_cancel_request(response.status_code)
        return super().finalize_response(request, response, *args, **kwargs)


# --- Batches ----------------------------------------------------------------------------------


def _task_brief(task: OCRTask) -> dict:
    return {"task_id": str(task.pk), "file_name": task.input_name, "task_type": task.task_type}


def batch_body(batch: Batch, *, detailed: bool = False) -> dict:
    counts = bulk.batch_counts(batch)
    body = {"batch_id": str(batch.pk), "status": bulk.batch_status(batch, counts)}
    tasks = list(batch.tasks.order_by("created_at", "id"))
    if detailed:
        total = sum(t.total_pages for t in tasks)
        done = sum(t.processed_pages + t.failed_pages for t in tasks)
        body |= {
            "created_at": batch.created_at.isoformat(),
            "cancelled_at": batch.cancelled_at.isoformat() if batch.cancelled_at else None,
            "cancellation_reason": batch.cancellation_reason,
            "progress": {
                "total_pages": total,
                "processed_pages": sum(t.processed_pages for t in tasks),
                "failed_pages": sum(t.failed_pages for t in tasks),
                "percentage": round(100.0 * done / total, 1) if total else 0.0,
            },
        }
        body["tasks"] = [
            {**_task_brief(t), "status": t.status, "progress_percentage": t.progress_percentage} for t in tasks
        ]
    else:
        body["tasks"] = [_task_brief(t) for t in tasks]
    body["counts"] = counts
    return body


def batch_request(raw) -> tuple[bool, str]:
    """The batch's `request` part: its `llm` flag, and the rest as JSON for parse_request."""
    if hasattr(raw, "read"):
        raw = raw.read().decode("utf-8", errors="replace")
    if raw in (None, ""):
        return False, ""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"request: not valid JSON ({exc})") from None
    if data is None:
        return False, ""
    if not isinstance(data, dict):
        raise InvalidInput("request: must be a JSON object")
    llm = data.pop("llm", False)
    if not isinstance(llm, bool):
        raise InvalidInput("request.llm: must be true or false")
    return llm, json.dumps(data)


def read_batch_documents(request: Request) -> list[bulk.BatchDocument]:
    """Every file part checked as a single submit would; the first bad one rejects the batch."""
    uploads = request.FILES.getlist("file")
    if not uploads:
        raise InvalidInput("file: missing; send each document as a multipart/form-data part 'file'")
    if len(uploads) > MAX_BATCH_FILES:
        raise InvalidInput(f"file: at most {MAX_BATCH_FILES} files per batch, got {len(uploads)}")
    llm, raw = batch_request(request.data.get("request"))
    params = parse_request(raw, kinds.for_document(is_pdf=True, uses_llm=llm)).params
    documents = []
    for index, upload in enumerate(uploads):
        name = getattr(upload, "name", "") or "upload"
        found = engine.sniff_kind(upload.read(2048))
        upload.seek(0)
        try:
            if not upload.size:
                raise InvalidInput("file: is empty")
            if found != "pdf" and found not in IMAGE_KINDS:
                raise UnsupportedMediaType(f"file: unsupported type (images: {', '.join(IMAGE_KINDS)}; or a PDF)")
            kind = kinds.for_document(is_pdf=found == "pdf", uses_llm=llm)
            own = params if kind.is_pdf else dataclasses.replace(params, page_select=None)
            checked = read_upload(upload, kind, own)
        except DomainError as exc:
            detail = exc.detail.removeprefix("file: ")
            raise type(exc)(f'file[{index}] "{name}": {detail}') from None
        documents.append(
            bulk.BatchDocument(
                kind=kind,
                params=checked.params,
                filename=checked.filename,
                data=checked.data,
                total_pages=checked.total_pages,
            )
        )
    return documents


class BatchSubmitView(APIView):
    parser_classes = [MultiPartParser, FormParser]
    throttle_scope = throttles.SUBMIT_SCOPE

    @extend_schema(
        request=None,  # the multipart body: ocr.api.openapi (the `request` part as JSON)
        responses={202: dict, **{k: v for k, v in schema.SUBMIT_RESPONSES.items() if k != 202}},
        description="1..100 `file` parts and one `request` for all: images become `ocr` tasks, PDFs `pdf` tasks "
        '(`llm`, `pdf_llm` with `"llm": true`). One bad file rejects the whole batch.',
    )
    def post(self, request: Request) -> Response:
        def respond() -> tuple[int, dict]:
            batch, _ = bulk.batch_submit(
                documents=read_batch_documents(request),
                owner=request.user if request.user.is_authenticated else None,
                session_key=session_key(request),
            )
            return 202, batch_body(batch)

        return idempotent(request, respond)


class BatchDetailView(APIView):
    @extend_schema(responses={200: dict, 404: schema.ErrorSerializer})
    def get(self, request: Request, batch_id: str) -> Response:
        batch = selectors.batch_get_for(user=request.user, batch_id=batch_id)
        return Response(batch_body(batch, detailed=True))


class BatchCancelView(APIView):
    throttle_scope = throttles.CANCEL_SCOPE

    @extend_schema(
        request={"application/json": schema.CancelRequestSerializer},
        responses={200: dict, 400: schema.ErrorSerializer, 404: schema.ErrorSerializer, 429: schema.ErrorSerializer},
        description="Cancel every task of the batch still pending or processing (each as a single cancel would).",
    )
    def post(self, request: Request, batch_id: str) -> Response:
        batch = selectors.batch_get_for(user=request.user, batch_id=batch_id)
        reason = cancel_reason(parse_json_body(request._request.body))
        result, newly = bulk.batch_cancel(batch=batch, reason=reason, user=request.user, client=client_ip(request))
        batch.refresh_from_db()
        body = {
            "batch_id": str(batch.pk),
            "status": "cancelled",
            "message": BATCH_CANCEL_MESSAGE if newly else BATCH_ALREADY_CANCELLED_MESSAGE,
            "cancelled_at": batch.cancelled_at.isoformat(),
            "cancellation_reason": batch.cancellation_reason,
            **result.as_dict(),
        }
        return Response(body)

    def finalize_response(self, request, response, *args, **kwargs):
        metrics.count_cancel_request(response.status_code)
        return super().finalize_response(request, response, *args, **kwargs)


# --- Resume -----------------------------------------------------------------------------------


class ResumeView(APIView):
    """POST .../{id}/resume: a new task that keeps the old one's successful pages."""

    throttle_scope = throttles.SUBMIT_SCOPE
    kind: Kind | None = None

    @extend_schema(
        request=None,
        responses={
            202: TaskSerializer,
            400: schema.ErrorSerializer,
            404: schema.ErrorSerializer,
            410: schema.ErrorSerializer,
        },
        description="Resume a cancelled or failed PDF task: a new task (same kind, file and request, "
        "`resumed_from` the old id) that copies the old task's successful pages and processes the others.",
    )
    def post(self, request: Request, task_id: str) -> Response:
        task = visible_task(request, task_id, kind=self.kind)
        resumed = bulk.task_resume(task=task)
        return Response(TaskSerializer(resumed, context={"request": request}).data, status=202)
