"""Test documents made on the fly with pymupdf and Pillow (no binary fixtures)."""

from __future__ import annotations

import io

import pymupdf
from PIL import Image

SAMPLE_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Cancellation that really stops the work.",
    "Optical character recognition of scanned pages.",
]


def page_lines(number: int) -> list[str]:
    return [f"Page {number} of the sample document."] + SAMPLE_LINES


def text_pdf(pages: int = 2, *, lines=page_lines, fontsize: float = 14) -> bytes:
    """A PDF whose pages carry a real text layer."""
    doc = pymupdf.open()
    for number in range(1, pages + 1):
        page = doc.new_page()
        for i, line in enumerate(lines(number)):
            page.insert_text((72, 100 + i * fontsize * 2), line, fontsize=fontsize)
    data = doc.tobytes()
    doc.close()
    return data


def image_pdf(pages: int = 2, *, dpi: int = 150, lines=page_lines, fontsize: float = 14) -> bytes:
    """An image-only PDF (no text layer): each page is the raster of a text page."""
    source = pymupdf.open(stream=text_pdf(pages, lines=lines, fontsize=fontsize), filetype="pdf")
    out = pymupdf.open()
    for page in source:
        pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
        new = out.new_page(width=page.rect.width, height=page.rect.height)
        new.insert_image(new.rect, pixmap=pix)
    data = out.tobytes()
    out.close()
    source.close()
    return data


def dense_lines(number: int) -> list[str]:
    """About 80 lines of small text: a page tesseract needs seconds for at high dpi."""
    return [f"Line {i} of page {number}: lorem ipsum dolor sit amet consectetur adipiscing elit." for i in range(80)]


def slow_pdf(pages: int = 3) -> bytes:
    """Image-only pages that keep tesseract busy for several seconds each at 600 dpi."""
    return image_pdf(pages, dpi=200, lines=dense_lines, fontsize=7)


def text_image(text: str = "Hello OCR world", *, format: str = "PNG", size=(900, 200)) -> bytes:
    page_doc = pymupdf.open()
    page = page_doc.new_page(width=size[0] / 2, height=size[1] / 2)
    page.insert_text((20, size[1] / 4), text, fontsize=20)
    pix = page.get_pixmap(dpi=144, colorspace=pymupdf.csGRAY)
    image = Image.frombytes("L", (pix.width, pix.height), pix.samples)
    page_doc.close()
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def encrypted_pdf() -> bytes:
    doc = pymupdf.open(stream=text_pdf(1), filetype="pdf")
    data = doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")
    doc.close()
    return data


PARAMS = {"threshold": 500, "contrast_level": 1.3, "lang": "eng", "dpi": 150, "text_layer": "ocr"}


def submit_task(task_type: str = "pdf", *, pages: int = 1, start: bool = False, **kwargs):
    """A task through the real submit service (with the test's default parameters); `start`
    also moves it to processing, as a worker would."""
    from django.conf import settings
    from django.test import override_settings

    from ocr import kinds, services
    from ocr.params import TaskParams

    kind = kinds.get(task_type)
    data = text_pdf(1) if kind.is_pdf else text_image()
    kwargs.setdefault("total_pages", pages if kind.is_pdf else 1)
    # admission refuses LLM kinds while no LLM server is configured; these tasks never reach one
    with override_settings(OCR_LLM_BASE_URL=settings.OCR_LLM_BASE_URL or "http://127.0.0.1:9/v1"):
        task = services.task_submit(kind=kind, params=TaskParams.from_json(PARAMS), filename="in", data=data, **kwargs)
    if start:
        return services.task_start(task_id=task.pk, total_pages=kwargs["total_pages"])
    return task


def record_page(
    *,
    task_id,
    page_number: int,
    text: str = "x",
    source: str = "ocr",
    processing_time: float = 0.1,
    success: bool = True,
    error: str | None = None,
    attempt: int | None = None,
) -> bool:
    """Record a page as a worker would (services.page_record with a PageOutcome)."""
    from ocr import services

    outcome = services.PageOutcome(
        text=text, source=source, processing_time=processing_time, success=success, error=error
    )
    return services.page_record(task_id=task_id, page_number=page_number, outcome=outcome, attempt=attempt)
