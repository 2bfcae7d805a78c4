"""REST shapes: cancel input, list filters, the task representation and the cancel answer
(the submit input is in ocr/api/requests.py)."""

from __future__ import annotations

import copy
import json

from rest_framework import serializers

from .. import progress, scheduling
from ..exceptions import InvalidInput
from ..kinds import KINDS, STREAM_CANCEL_MESSAGE
from ..models import OCRTask, TaskStatus
from .fields import StrictCharField
from .requests import _field_errors

MAX_REASON_LENGTH = 1000
ALREADY_CANCELLED_MESSAGE = "Task was already cancelled"


# --- Cancel --------------------------------------------------------------------------------


class CancelInputSerializer(serializers.Serializer):
    """A cancel's input, the same for REST, the WebSocket action and the admin: an optional
    reason of at most MAX_REASON_LENGTH characters (blank means the default reason)."""

    reason = StrictCharField(
        required=False, allow_null=True, allow_blank=True, max_length=MAX_REASON_LENGTH, trim_whitespace=True
    )


def cancel_reason(data) -> str | None:
    """The validated reason of a cancel input (a parsed JSON value); InvalidInput naming the field."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InvalidInput('Body must be a JSON object, for example {"reason": "..."}')
    serializer = CancelInputSerializer(data=data)
    if not serializer.is_valid():
        raise InvalidInput(_field_errors(serializer.errors))
    return serializer.validated_data.get("reason") or None


def parse_json_body(body: bytes):
    """A JSON request body whatever its Content-Type (curl -d sends form-urlencoded); None when empty."""
    raw = body.strip()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput('Body must be JSON, for example {"reason": "..."}') from None


def cancel_body(task: OCRTask, *, newly_cancelled: bool, via_stream: bool = False) -> dict:
    """The answer of every cancel interface (API.md section 4)."""
    if not newly_cancelled:
        message = ALREADY_CANCELLED_MESSAGE
    elif via_stream:
        message = STREAM_CANCEL_MESSAGE
    else:
        message = task.kind.cancel_message
    return {
        "task_id": str(task.pk),
        "status": task.status,
        "message": message,
        "cancelled_at": task.cancelled_at.isoformat() if task.cancelled_at else None,
        "cancellation_reason": task.cancellation_reason,
    }


# --- Reading tasks --------------------------------------------------------------------------


class TaskFilterSerializer(serializers.Serializer):
    """Query parameters of the task list."""

    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
    task_type = serializers.ChoiceField(choices=[(slug, kind.label) for slug, kind in KINDS.items()], required=False)

    def to_internal_value(self, data):
        data = {key: value for key, value in data.items() if key in self.fields and value != ""}
        return super().to_internal_value(data)

    @classmethod
    def parse(cls, query) -> dict:
        serializer = cls(data=query)
        if not serializer.is_valid():
            raise InvalidInput(_field_errors(serializer.errors))
        return serializer.validated_data


class TaskSerializer(serializers.ModelSerializer):
    """The task representation of API.md section 3."""

    task_id = serializers.UUIDField(source="id", read_only=True)
    file_name = serializers.CharField(source="input_name", read_only=True)
    batch_id = serializers.UUIDField(read_only=True, allow_null=True)
    worker_node = serializers.CharField(source="worker_host", read_only=True)
    progress = serializers.SerializerMethodField()
    queue_position = serializers.SerializerMethodField()
    estimated_start_seconds = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()

    class Meta:
        model = OCRTask
        fields = [
            "task_id",
            "task_type",
            "streaming",
            "file_name",
            "status",
            "created_at",
            "started_at",
            "completed_at",
            "cancelled_at",
            "cancellation_reason",
            "cancelled_by",
            "error_message",
            "warnings",
            "deadline_at",
            "priority",
            "queue_position",
            "estimated_start_seconds",
            "batch_id",
            "worker_node",
            "resumed_from",
            "progress",
            "result",
        ]

    def get_fields(self) -> dict:
        """DRF builds a ModelSerializer's fields from the model for every instance: a third of
        the Django time of a task GET. They never change: built once per class, then copied (a
        field is bound to its serializer, so each instance needs its own)."""
        cls = type(self)
        if "_built_fields" not in cls.__dict__:
            cls._built_fields = super().get_fields()
        return copy.deepcopy(cls._built_fields)

    def get_progress(self, task: OCRTask) -> dict:
        return {
            "total_pages": task.total_pages,
            "processed_pages": task.processed_pages,
            "failed_pages": task.failed_pages,
            "percentage": task.progress_percentage,
        }

    def get_result(self, task: OCRTask) -> dict | None:
        return progress.result_of(task)

    def get_queue_position(self, task: OCRTask) -> int | None:
        """The task's own place (counted by the database) for the first pending task of a
        response; the whole start order, read once, when a list holds a second one."""
        if task.status != TaskStatus.PENDING:
            return None
        known = self.context.setdefault("queue_positions", {})
        if task.pk not in known:
            if known:
                known.update({pk: n for n, pk in enumerate(scheduling.start_order(), 1)})
                known.setdefault(task.pk, None)  # started meanwhile
            else:
                place = scheduling.queue_place(task)
                known[task.pk], self.context["busy"] = place.position, place.busy
        return known[task.pk]

    def get_estimated_start_seconds(self, task: OCRTask) -> float | None:
        position = self.get_queue_position(task)
        if position is None:
            return None
        if "estimate_basis" not in self.context:
            self.context["estimate_basis"] = scheduling.estimate_basis(busy=self.context.get("busy"))
        return scheduling.estimated_start_seconds(position, self.context["estimate_basis"])

    @classmethod
    def _shared_fields(cls) -> list[tuple[str, serializers.Field]]:
        """The fields bound once per class, to one serializer made for that: the plain ones only
        read the task and their own settings, so every instance (and thread) may share them."""
        if "_shared" not in cls.__dict__:
            cls._shared = list(cls().fields.items())
        return cls._shared

    def to_representation(self, task: OCRTask) -> dict:
        """DRF's Serializer.to_representation (tests/test_task_representation.py compares them) on the
        shared fields: even a copy of the built fields per instance was 8% of daphne's CPU
        under 50 clients GETting tasks. Method fields run on this instance (its context)."""
        data = {}
        for name, field in self._shared_fields():
            if isinstance(field, serializers.SerializerMethodField):
                data[name] = getattr(self, field.method_name)(task)
                continue
            attribute = field.get_attribute(task)  # no relation field: none gives a PKOnlyObject
            data[name] = None if attribute is None else field.to_representation(attribute)
        request = self.context.get("request")
        if task.streaming and request is not None:
            data["stream_url"] = request.build_absolute_uri(f"/v1/ocr/stream/{task.pk}")
            data["ws_url"] = request.build_absolute_uri(f"/ws/ocr/tasks/{task.pk}/").replace("http", "ws", 1)
        return data
