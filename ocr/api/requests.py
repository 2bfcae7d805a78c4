"""The submit input: the `request` part of each kind (validated into TaskParams), and the
uploaded file, checked by size and content before any task exists."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.utils.module_loading import import_string
from rest_framework import serializers

from .. import engine
from ..exceptions import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from ..kinds import Kind
from ..params import DEFAULT_OUTPUTS, OUTPUT_FORMATS, PARAMETER_RANGES, TaskParams
from .callbacks import CallbackFieldsMixin
from .fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField

IMAGE_KINDS = ("jpeg", "png", "bmp", "tiff", "webp")
REPAIRED_WARNING = "The PDF is damaged and was repaired: pages whose content was lost are reported as failed pages"


def _range(name: str) -> dict:
    spec = PARAMETER_RANGES[name]
    return {"min_value": spec.get("min"), "max_value": spec.get("max")}


class LimitsSerializer(serializers.Serializer):
    """`request.limits`: the worker cancels the task past either (cancelled_by `system`)."""

    max_processing_seconds = StrictIntegerField(min_value=1, required=False)
    max_cpu_seconds = StrictIntegerField(min_value=1, required=False)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return super().to_internal_value(data)


class ThresholdField(serializers.Field):
    """ "auto" (adaptive binarisation) or an integer 0..1024 (a global cut at threshold*255/1024)."""

    default_error_messages = {
        "invalid": 'Must be "auto" or an integer between {min} and {max}.',
    }

    def to_internal_value(self, data):
        spec = PARAMETER_RANGES["threshold"]
        if data == "auto":
            return data
        if isinstance(data, bool) or not isinstance(data, int) or not spec["min"] <= data <= spec["max"]:
            self.fail("invalid", min=spec["min"], max=spec["max"])
        return data

    def to_representation(self, value):
        return value


class OCRParamsSerializer(CallbackFieldsMixin, serializers.Serializer):
    threshold = ThresholdField(default=PARAMETER_RANGES["threshold"]["default"])
    contrast_level = StrictFloatField(**_range("contrast_level"), default=PARAMETER_RANGES["contrast_level"]["default"])
    lang = StrictCharField(default=PARAMETER_RANGES["lang"]["default"], max_length=200)
    outputs = serializers.ListField(
        child=serializers.ChoiceField(choices=OUTPUT_FORMATS),
        default=list(DEFAULT_OUTPUTS),
        allow_empty=False,
        max_length=len(OUTPUT_FORMATS),
    )
    rotate = serializers.ChoiceField(choices=PARAMETER_RANGES["rotate"]["choices"], default="none")
    deskew = StrictBooleanField(default=False)
    deadline_seconds = StrictIntegerField(min_value=1, required=False, allow_null=True)
    task_id = serializers.UUIDField(required=False, allow_null=True)
    priority = serializers.ChoiceField(choices=PARAMETER_RANGES["priority"]["choices"], default="normal")
    limits = LimitsSerializer(required=False)

    def validate_rotate(self, value: str) -> str:
        if value == "auto" and not engine.osd_available():
            raise serializers.ValidationError("'auto' needs tesseract's osd data (tesseract-ocr-osd)")
        return value

    def validate_outputs(self, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    def validate_lang(self, value: str) -> str:
        if value == "auto":
            if not engine.osd_available():
                raise serializers.ValidationError("'auto' needs tesseract's osd data (tesseract-ocr-osd)")
            return value
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
    dpi = StrictIntegerField(**_range("dpi"), default=PARAMETER_RANGES["dpi"]["default"])
    page_select = serializers.ListField(
        child=StrictIntegerField(min_value=1), required=False, allow_null=True, allow_empty=False, max_length=10000
    )
    text_layer = serializers.ChoiceField(choices=PARAMETER_RANGES["text_layer"]["choices"], default="auto")


class LLMFieldsMixin(serializers.Serializer):
    prompt = StrictCharField(required=False, allow_null=True, max_length=20000)
    model = StrictCharField(required=False, allow_null=True, max_length=200)


class LLMParamsSerializer(LLMFieldsMixin, OCRParamsSerializer):
    pass


class PDFLLMParamsSerializer(LLMFieldsMixin, PDFParamsSerializer):
    pass


@dataclass(frozen=True)
class ParsedRequest:
    """The `request` part: the task's parameters, and the client's own task id (sync calls)."""

    params: TaskParams
    task_id: uuid.UUID | None


def _flatten_errors(errors, prefix: str = "request") -> list[str]:
    if isinstance(errors, dict):
        return [msg for key, value in errors.items() for msg in _flatten_errors(value, f"{prefix}.{key}")]
    if isinstance(errors, list) and errors and not all(isinstance(e, str) for e in errors):
        return [msg for i, value in enumerate(errors) for msg in _flatten_errors(value, f"{prefix}[{i}]")]
    return [f"{prefix}: {' '.join(str(e) for e in errors) if isinstance(errors, list) else errors}"]


def _field_errors(errors: dict) -> str:
    return "; ".join(f"{name}: {' '.join(str(e) for e in messages)}" for name, messages in errors.items())


def parse_request(raw, kind: Kind) -> ParsedRequest:
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
    serializer = import_string(kind.params_serializer)(data=data)
    if not serializer.is_valid():
        messages = _flatten_errors(serializer.errors)
        raise InvalidInput("; ".join(messages), errors=serializer.errors)
    values = dict(serializer.validated_data)
    task_id = values.pop("task_id", None)
    return ParsedRequest(params=TaskParams.from_json(values), task_id=task_id)


@dataclass
class Upload:
    params: TaskParams
    filename: str
    data: bytes
    total_pages: int
    warnings: list[str]


def read_upload(upload, kind: Kind, params: TaskParams) -> Upload:
    """Check the uploaded file by size and content; open it to refuse what workers could not read.
    Returns the parameters completed by what the file says (the selected pages, deduplicated)."""
    if upload is None or isinstance(upload, str):
        raise InvalidInput("file: missing; send the document as the multipart/form-data part 'file'")
    limit = settings.OCR_MAX_PDF_BYTES if kind.is_pdf else settings.OCR_MAX_IMAGE_BYTES
    if upload.size > limit:
        raise PayloadTooLarge(f"file: {upload.size} bytes is larger than the limit of {limit} bytes")
    data = upload.read()
    if not data:
        raise InvalidInput("file: is empty")
    found = engine.sniff_kind(data[:2048])
    if kind.is_pdf and found != "pdf":
        what = f"a {found} image" if found else "an unsupported type"
        raise UnsupportedMediaType(f"file: expected a PDF, got {what}; images go to /v1/ocr/process")
    if not kind.is_pdf and found not in IMAGE_KINDS:
        what = "a PDF" if found == "pdf" else "an unsupported type"
        raise UnsupportedMediaType(
            f"file: expected an image ({', '.join(IMAGE_KINDS)}), got {what}"
            + ("; PDFs go to /v1/ocr/process-pdf" if found == "pdf" else "")
        )
    if kind.is_pdf:
        try:
            doc = engine.open_pdf(data, settings.OCR_MAX_PDF_PAGES)
        except engine.EngineError as exc:
            raise InvalidInput(f"file: {exc}") from None
        page_count = doc.page_count
        warnings = [REPAIRED_WARNING] if doc.is_repaired else []
        try:
            for number in params.pages_of(page_count) if not params.page_select else params.page_select:
                if number <= page_count:
                    engine.check_page_size(doc.load_page(number - 1), params.dpi, settings.OCR_MAX_PAGE_PIXELS)
        except engine.EngineError as exc:
            raise InvalidInput(f"file: {exc}") from None
        finally:
            doc.close()
        if params.page_select:
            outside = [n for n in params.page_select if n > page_count]
            if outside:
                raise InvalidInput(
                    f"request.page_select: page {outside[0]} is out of range (the PDF has {page_count} pages)"
                )
            params = TaskParams.from_json({**params.to_json(), "page_select": list(dict.fromkeys(params.page_select))})
        total_pages = len(params.pages_of(page_count))
    else:
        try:
            engine.load_image(data, settings.OCR_MAX_PAGE_PIXELS)
        except engine.EngineError as exc:
            raise InvalidInput(f"file: {exc}") from None
        total_pages, warnings = 1, []
    name = getattr(upload, "name", "") or "upload"
    return Upload(params=params, filename=name, data=data, total_pages=total_pages, warnings=warnings)
