"""REST shapes: the `request` parameters of each task kind, uploads, the task representation."""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.conf import settings
from rest_framework import serializers

from . import engine
from .exceptions import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from .models import OCRTask, TaskType

IMAGE_KINDS = ("jpeg", "png", "bmp", "tiff", "webp")
PARAMETER_RANGES = {
    "threshold": {"type": "integer", "min": 0, "max": 1024, "default": 500},
    "contrast_level": {"type": "number", "min": 0.1, "max": 5.0, "default": 1.3},
    "lang": {"type": "string", "default": "eng"},
    "dpi": {"type": "integer", "min": 150, "max": 600, "default": 300, "pdf_only": True},
    "page_select": {"type": "array of 1-based page numbers", "default": None, "pdf_only": True},
    "text_layer": {"type": "string", "choices": ["auto", "ocr"], "default": "auto", "pdf_only": True},
    "prompt": {"type": "string", "default": None, "llm_only": True},
    "model": {"type": "string", "default": None, "llm_only": True},
    "deadline_seconds": {"type": "integer", "min": 1, "default": None},
    "task_id": {"type": "uuid", "default": None},
}


class StrictIntegerField(serializers.IntegerField):
    """An integer in JSON, not a string, a boolean or a float."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class OCRParamsSerializer(serializers.Serializer):
    threshold = StrictIntegerField(min_value=0, max_value=1024, default=500)
    contrast_level = StrictFloatField(min_value=0.1, max_value=5.0, default=1.3)
    lang = StrictCharField(default="eng", max_length=200)
    deadline_seconds = StrictIntegerField(min_value=1, required=False, allow_null=True)
    task_id = serializers.UUIDField(required=False, allow_null=True)

    def validate_lang(self, value: str) -> str:
        installed = engine.tesseract_languages()
        missing = [part for part in value.split("+") if part not in installed]
        if missing or not value:
            raise serializers.ValidationError(
                f"language {'+'.join(missing) or repr(value)} is not installed; installed: {', '.join(installed)}"
            )
        return value

    def to_internal_value(self, data):
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {name: [f"unknown field; accepted fields: {', '.join(self.fields)}"] for name in unknown}
            )
        return super().to_internal_value(data)


class PDFParamsSerializer(OCRParamsSerializer):
    dpi = StrictIntegerField(min_value=150, max_value=600, default=300)
    page_select = serializers.ListField(
        child=StrictIntegerField(min_value=1), required=False, allow_null=True, allow_empty=False, max_length=10000
    )
    text_layer = serializers.ChoiceField(choices=["auto", "ocr"], default="auto")


class LLMFieldsMixin(serializers.Serializer):
    prompt = StrictCharField(required=False, allow_null=True, max_length=20000)
    model = StrictCharField(required=False, allow_null=True, max_length=200)


class LLMParamsSerializer(LLMFieldsMixin, OCRParamsSerializer):
    pass


class PDFLLMParamsSerializer(LLMFieldsMixin, PDFParamsSerializer):
    pass


PARAMS_SERIALIZERS = {
    TaskType.OCR: OCRParamsSerializer,
    TaskType.LLM: LLMParamsSerializer,
    TaskType.PDF: PDFParamsSerializer,
    TaskType.PDF_LLM: PDFLLMParamsSerializer,
}


@dataclass
class Submission:
    params: dict
    filename: str
    data: bytes
    total_pages: int


def _flatten_errors(errors, prefix: str = "request") -> list[str]:
    if isinstance(errors, dict):
        return [msg for key, value in errors.items() for msg in _flatten_errors(value, f"{prefix}.{key}")]
    if isinstance(errors, list) and errors and not all(isinstance(e, str) for e in errors):
        return [msg for i, value in enumerate(errors) for msg in _flatten_errors(value, f"{prefix}[{i}]")]
    return [f"{prefix}: {' '.join(str(e) for e in errors) if isinstance(errors, list) else errors}"]


def parse_params(raw, task_type: str) -> dict:
    """The `request` part as validated parameters with defaults; InvalidInput naming the field."""
    if hasattr(raw, "read"):  # sent as a file part
        raw = raw.read().decode("utf-8", errors="replace")
    if raw in (None, ""):
        data = {}
    else:
        try:
            data = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"request: not valid JSON ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput("request: must be a JSON object")
    serializer = PARAMS_SERIALIZERS[task_type](data=data)
    if not serializer.is_valid():
        messages = _flatten_errors(serializer.errors)
        raise InvalidInput("; ".join(messages), errors=serializer.errors)
    params = dict(serializer.validated_data)
    if params.get("task_id") is not None:
        params["task_id"] = str(params["task_id"])
    return params


def read_upload(upload, task_type: str, params: dict) -> Submission:
    """Check the uploaded file by size and content; open it to refuse what workers could not read."""
    if upload is None or isinstance(upload, str):
        raise InvalidInput("file: missing; send the document as the multipart/form-data part 'file'")
    wants_pdf = task_type in (TaskType.PDF, TaskType.PDF_LLM)
    limit = settings.OCR_MAX_PDF_BYTES if wants_pdf else settings.OCR_MAX_IMAGE_BYTES
    if upload.size > limit:
        raise PayloadTooLarge(f"file: {upload.size} bytes is larger than the limit of {limit} bytes")
    data = upload.read()
    if not data:
        raise InvalidInput("file: is empty")
    kind = engine.sniff_kind(data[:2048])
    if wants_pdf and kind != "pdf":
        found = f"a {kind} image" if kind else "an unsupported type"
        raise UnsupportedMediaType(f"file: expected a PDF, got {found}; images go to /v1/ocr/process")
    if not wants_pdf and kind not in IMAGE_KINDS:
        found = "a PDF" if kind == "pdf" else "an unsupported type"
        raise UnsupportedMediaType(
            f"file: expected an image ({', '.join(IMAGE_KINDS)}), got {found}"
            + ("; PDFs go to /v1/ocr/process-pdf" if kind == "pdf" else "")
        )
    if wants_pdf:
        try:
            doc = engine.open_pdf(data, settings.OCR_MAX_PDF_PAGES)
        except engine.EngineError as exc:
            raise InvalidInput(f"file: {exc}") from None
        page_count = doc.page_count
        doc.close()
        selected = params.get("page_select")
        if selected:
            outside = [n for n in selected if n > page_count]
            if outside:
                raise InvalidInput(
                    f"request.page_select: page {outside[0]} is out of range (the PDF has {page_count} pages)"
                )
            params["page_select"] = list(dict.fromkeys(selected))
        total_pages = len(params["page_select"]) if selected else page_count
    else:
        try:
            engine.load_image(data)
        except engine.EngineError as exc:
            raise InvalidInput(f"file: {exc}") from None
        total_pages = 1
    return Submission(
        params=params, filename=getattr(upload, "name", "") or "upload", data=data, total_pages=total_pages
    )


class TaskSerializer(serializers.ModelSerializer):
    """The task representation of API.md section 3."""

    task_id = serializers.UUIDField(source="id", read_only=True)
    file_name = serializers.CharField(source="input_name", read_only=True)
    progress = serializers.SerializerMethodField()

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
            "deadline_at",
            "progress",
            "result",
        ]

    def get_progress(self, task: OCRTask) -> dict:
        return {
            "total_pages": task.total_pages,
            "processed_pages": task.processed_pages,
            "failed_pages": task.failed_pages,
            "percentage": task.progress_percentage,
        }

    def to_representation(self, task: OCRTask) -> dict:
        data = super().to_representation(task)
        request = self.context.get("request")
        if task.streaming and request is not None:
            http = request.build_absolute_uri(f"/v1/ocr/stream/{task.pk}")
            data["stream_url"] = http
            data["ws_url"] = request.build_absolute_uri(f"/ws/ocr/tasks/{task.pk}/").replace("http", "ws", 1)
        return data
