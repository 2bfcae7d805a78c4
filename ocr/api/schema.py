"""OpenAPI documentation shapes (drf-spectacular) and the hook that documents the async views
(sync submit, SSE), which are plain Django views the generator cannot see."""

from __future__ import annotations

import copy

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, inline_serializer
from rest_framework import serializers

from ..kinds import KINDS
from .serializers import TaskSerializer


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class CancelRequestSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=1000)


class CancelResponseSerializer(serializers.Serializer):
    task_id = serializers.UUIDField()
    status = serializers.CharField()
    message = serializers.CharField()
    cancelled_at = serializers.DateTimeField()
    cancellation_reason = serializers.CharField()


def error(description: str, example: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description, examples=[OpenApiExample(description, {"detail": example})])


SUBMIT_RESPONSES = {
    202: TaskSerializer,
    400: error("Bad file or parameters", "request.threshold: Ensure this value is less than or equal to 1024."),
    401: error("Anonymous calls refused (OCR_ALLOW_ANONYMOUS=false)", "Authentication credentials were not provided."),
    409: error("task_id exists", "Task 7b0c6a0e-4d57-4b7c-9a55-2f0b5c3f0d11 already exists"),
    413: error("File too large", "file: 20971520 bytes is larger than the limit of 10485760 bytes"),
    415: error("Unsupported type", "file: expected a PDF, got a png image; images go to /v1/ocr/process"),
    429: error("Too many submits (RATE_LIMIT_REQUESTS; Retry-After header)", "Request was throttled."),
    503: error("LLM not configured or server busy", "LLM OCR is not configured: set OCR_LLM_BASE_URL"),
}

CANCEL_RESPONSES = {
    200: OpenApiResponse(
        CancelResponseSerializer,
        "Cancelled (or already cancelled: idempotent, original time and reason)",
        examples=[
            OpenApiExample(
                "cancelled",
                {
                    "task_id": "7b0c6a0e-4d57-4b7c-9a55-2f0b5c3f0d11",
                    "status": "cancelled",
                    "message": "PDF task successfully cancelled",
                    "cancelled_at": "2026-11-26T17:37:22.135078+00:00",
                    "cancellation_reason": "User requested cancellation",
                },
            )
        ],
    ),
    400: OpenApiResponse(
        inline_serializer("CancelRefused", {"detail": serializers.CharField(), "status": serializers.CharField()}),
        "Already completed or failed, reason too long or not a string, body not JSON",
        examples=[
            OpenApiExample(
                "finished",
                {"detail": "Task 7b0c6a0e-4d57-4b7c-9a55-2f0b5c3f0d11 is already completed", "status": "completed"},
            )
        ],
    ),
    404: error("Unknown, malformed, wrong kind or someone else's task", "Task not found"),
    429: error("More than OCR_CANCEL_RATE cancels (Retry-After header)", "Request was throttled."),
}

SYNC_PATHS = {f"/v1/ocr/{kind.submit_slug}-sync": f"/v1/ocr/{kind.submit_slug}" for kind in KINDS.values()}


def add_async_views(result: dict, generator, request, public) -> dict:
    """Document the sync submit endpoints and the SSE stream next to what DRF generated."""
    paths = result.setdefault("paths", {})
    for sync_path, async_path in SYNC_PATHS.items():
        operation = copy.deepcopy(paths.get(async_path, {}).get("post"))
        if not operation:
            continue
        operation["operationId"] = operation["operationId"] + "_sync"
        operation["description"] = (
            "Waits and answers 200 with the task once it is terminal (completed, failed or cancelled). "
            "Put a `task_id` (UUID) in `request` so that another client can cancel the call; a client that "
            "disconnects cancels its task (reason `Client disconnected`)."
        )
        operation["responses"]["200"] = operation["responses"].pop("202")
        paths[sync_path] = {"post": operation}
    paths["/v1/ocr/stream/{task_id}"] = {
        "get": {
            "operationId": "stream_events",
            "summary": "Server-sent events of a task",
            "description": "Stored events after `Last-Event-ID` (or `?after=`), then live ones; `id:` is the event "
            "seq; a comment keep-alive every 15 s; ends after the one terminal event.",
            "tags": ["v1"],
            "parameters": [
                {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer"}},
                {"name": "after", "in": "query", "required": False, "schema": {"type": "integer"}},
            ],
            "responses": {
                "200": {
                    "description": "text/event-stream of task events",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "404": {"description": "Unknown task, or not yours"},
            },
        }
    }
    paths["/v1/ocr/events"] = {"get": OPERATOR_FEED_OPERATION}
    return result


_NULLABLE_STRING = {"type": "string", "nullable": True}
OPERATOR_FEED_ITEM = {
    "type": "object",
    "description": "One item of the operator feed; `id` is the resume cursor (SSE `id:`).",
    "properties": {
        "id": {"type": "integer"},
        "type": {"type": "string", "enum": ["completed", "failed", "cancelled", "cancel_refused"]},
        "task_id": {"type": "string", "format": "uuid"},
        "task_type": {"type": "string", "enum": list(KINDS)},
        "owner": {**_NULLABLE_STRING, "description": "username; null for an anonymous task"},
        "status": {"type": "string", "description": "the task's status after the event"},
        "reason": {**_NULLABLE_STRING, "description": "cancellation reason, error, or the refused request's reason"},
        "cancelled_by": {**_NULLABLE_STRING, "description": "user, admin, websocket, deadline, disconnect, system"},
        "cancelled_by_user": _NULLABLE_STRING,
        "outcome": {"type": "string", "description": "the type, or already_<status> for a refused cancel"},
        "processed_pages": {"type": "integer"},
        "failed_pages": {"type": "integer"},
        "total_pages": {"type": "integer"},
        "worker_node": {**_NULLABLE_STRING, "description": "OCR_NODE_NAME of the node that ran the task"},
        "timestamp": {"type": "string", "format": "date-time"},
    },
    "required": ["id", "type", "task_id", "task_type", "status", "timestamp"],
}
OPERATOR_FEED_OPERATION = {
    "operationId": "operator_events",
    "summary": "Operator feed (staff): every task's end and every refused cancel, live",
    "description": "Server-sent events for staff only (401 without credentials, 403 for anyone else, whatever "
    "OCR_ALLOW_ANONYMOUS says): every task's terminal event (completed, failed, cancelled) and every cancel "
    "request refused because the task had ended, for all users' tasks. Items after `Last-Event-ID` (or "
    "`?after=`; neither: the newest OCR_FEED_REPLAY), then live ones; `id:` is the item id, `event:` its type; "
    "a comment keep-alive every 15 s; the stream stays open. WebSocket twin: ws://HOST/ws/ocr/events/?after=ID.",
    "tags": ["v1"],
    "parameters": [
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer"}},
        {"name": "after", "in": "query", "required": False, "schema": {"type": "integer"}},
    ],
    "responses": {
        "200": {
            "description": "text/event-stream of operator feed items (`data:` is one item as JSON)",
            "content": {"text/event-stream": {"schema": OPERATOR_FEED_ITEM}},
        },
        "401": {"description": "No credentials, or a bad token"},
        "403": {"description": "Not staff"},
    },
}
