"""A task's validated `request` parameters as one frozen value, and their documented ranges.

The API's serializers (ocr/api/serializers.py) validate a request into `TaskParams`; the row
stores `to_json()`, and workers read `OCRTask.parameters` back, so no code indexes string keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

DEFAULT_THRESHOLD = "auto"  # tesseract binarises: Otsu on even paper, else Sauvola; an int cuts globally
DEFAULT_OUTPUTS = ("text",)
OUTPUT_FORMATS = ("text", "words", "hocr", "alto", "tsv", "pdf")
ROTATE_CHOICES = ("none", "auto")
DEFAULT_CONTRAST = 1.3
DEFAULT_LANG = "eng"
DEFAULT_DPI = 300
CALLBACK_EVENT_GROUPS = ("terminal", "page")  # webhooks (ocr/webhooks.py): which events are POSTed
DEFAULT_CALLBACK_EVENTS = ("terminal",)

PARAMETER_RANGES = {
    "threshold": {"type": "'auto' or integer", "min": 0, "max": 1024, "default": DEFAULT_THRESHOLD},
    "contrast_level": {"type": "number", "min": 0.1, "max": 5.0, "default": DEFAULT_CONTRAST},
    "lang": {"type": "string: installed languages joined with '+', or 'auto'", "default": DEFAULT_LANG},
    "outputs": {"type": "array", "choices": list(OUTPUT_FORMATS), "default": list(DEFAULT_OUTPUTS)},
    "rotate": {"type": "string", "choices": list(ROTATE_CHOICES), "default": "none"},
    "deskew": {"type": "boolean", "default": False, "max_degrees": 15},
    "dpi": {"type": "integer", "min": 150, "max": 600, "default": DEFAULT_DPI, "pdf_only": True},
    "page_select": {"type": "array of 1-based page numbers", "default": None, "pdf_only": True},
    "text_layer": {"type": "string", "choices": ["auto", "ocr"], "default": "auto", "pdf_only": True},
    "prompt": {"type": "string", "default": None, "llm_only": True},
    "model": {"type": "string", "default": None, "llm_only": True},
    "deadline_seconds": {"type": "integer", "min": 1, "default": None},
    "task_id": {"type": "uuid", "default": None, "sync_only": True},
    "priority": {"type": "string", "choices": ["low", "normal", "high"], "default": "normal"},
    "limits": {
        "type": "object",
        "fields": {
            "max_processing_seconds": {"type": "integer", "min": 1},
            "max_cpu_seconds": {"type": "integer", "min": 1},
        },
        "default": None,
    },
    "callback_url": {"type": "http(s) URL on a host in OCR_WEBHOOK_ALLOWED_HOSTS", "default": None},
    "callback_events": {
        "type": "array",
        "choices": list(CALLBACK_EVENT_GROUPS),
        "default": list(DEFAULT_CALLBACK_EVENTS),
    },
}


@dataclass(frozen=True)
class TaskParams:
    threshold: int | str = DEFAULT_THRESHOLD
    contrast_level: float = DEFAULT_CONTRAST
    lang: str = DEFAULT_LANG
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    rotate: str = "none"
    deskew: bool = False
    deadline_seconds: int | None = None
    priority: str = "normal"
    # {"max_processing_seconds": N, "max_cpu_seconds": N}: the worker cancels the task past either
    limits: dict | None = None
    # Webhooks: POST each wanted event there (API.md section 10)
    callback_url: str | None = None
    callback_events: tuple[str, ...] = DEFAULT_CALLBACK_EVENTS
    # PDF kinds
    dpi: int = DEFAULT_DPI
    page_select: tuple[int, ...] | None = None
    text_layer: str = "auto"
    # LLM kinds
    prompt: str | None = None
    model: str | None = None

    @classmethod
    def from_json(cls, data: dict | None) -> TaskParams:
        """From a stored `params` (unknown keys ignored: rows written by other versions)."""
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in (data or {}).items() if key in known and value is not None}
        if "page_select" in values:
            values["page_select"] = tuple(values["page_select"])
        for name in ("outputs", "callback_events"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def to_json(self) -> dict:
        data = asdict(self)
        if self.page_select is not None:
            data["page_select"] = list(self.page_select)
        data["outputs"] = list(self.outputs)
        data["callback_events"] = list(self.callback_events)
        return data

    @property
    def adaptive_threshold(self) -> bool:
        return self.threshold == "auto"

    def wants(self, output: str) -> bool:
        return output in self.outputs

    def pages_of(self, page_count: int) -> list[int]:
        """The 1-based pages to read of a document of `page_count` pages."""
        return list(self.page_select) if self.page_select else list(range(1, page_count + 1))
