"""The task-kind registry: every per-kind fact (paths, labels, messages, parameters) is read here.

A kind is `ocr` (one image), `llm` (one image, text refined by a model), `pdf` or `pdf_llm`.
Code elsewhere asks a kind what it is (`kind.is_pdf`, `kind.uses_llm`) and never compares slugs.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models


class TaskType(models.TextChoices):
    OCR = "ocr", "OCR"
    LLM = "llm", "LLM"
    PDF = "pdf", "PDF"
    PDF_LLM = "pdf_llm", "PDF LLM"


@dataclass(frozen=True)
class Kind:
    slug: str
    label: str  # as the API names it: "PDF LLM task successfully cancelled"
    ui_label: str  # as the browser UI shows it
    is_pdf: bool
    uses_llm: bool
    submit_slug: str  # POST /v1/ocr/{submit_slug}, {submit_slug}-sync, {submit_slug}-stream (PDF kinds)
    typed_prefix: str | None  # GET /v1/ocr/{typed_prefix}/{id}: this kind only; None: the universal path only
    params_serializer: str  # dotted path of the `request` serializer

    @property
    def cancel_message(self) -> str:
        return f"{self.label} task successfully cancelled"

    @property
    def streamable(self) -> bool:
        return self.is_pdf


KINDS: dict[str, Kind] = {
    kind.slug: kind
    for kind in (
        Kind(
            slug=TaskType.OCR,
            label="OCR",
            ui_label="Image",
            is_pdf=False,
            uses_llm=False,
            submit_slug="process",
            typed_prefix=None,
            params_serializer="ocr.api.requests.OCRParamsSerializer",
        ),
        Kind(
            slug=TaskType.LLM,
            label="LLM",
            ui_label="Image + LLM",
            is_pdf=False,
            uses_llm=True,
            submit_slug="process-with-llm",
            typed_prefix="llm-tasks",
            params_serializer="ocr.api.requests.LLMParamsSerializer",
        ),
        Kind(
            slug=TaskType.PDF,
            label="PDF",
            ui_label="PDF",
            is_pdf=True,
            uses_llm=False,
            submit_slug="process-pdf",
            typed_prefix="pdf-tasks",
            params_serializer="ocr.api.requests.PDFParamsSerializer",
        ),
        Kind(
            slug=TaskType.PDF_LLM,
            label="PDF LLM",
            ui_label="PDF + LLM",
            is_pdf=True,
            uses_llm=True,
            submit_slug="process-pdf-with-llm",
            typed_prefix="pdf-llm-tasks",
            params_serializer="ocr.api.requests.PDFLLMParamsSerializer",
        ),
    )
}

STREAM_CANCEL_MESSAGE = "Streaming task successfully cancelled"


def get(slug: str) -> Kind:
    return KINDS[slug]


def for_document(*, is_pdf: bool, uses_llm: bool) -> Kind:
    """The kind that reads a document of this type (batches judge each file by its content)."""
    return next(kind for kind in KINDS.values() if kind.is_pdf == is_pdf and kind.uses_llm == uses_llm)


def pdf_kinds() -> list[str]:
    return [kind.slug for kind in KINDS.values() if kind.is_pdf]


def llm_kinds() -> list[str]:
    return [kind.slug for kind in KINDS.values() if kind.uses_llm]
