"""Hostile and unlucky input: giant pages, damaged PDFs, multi-frame TIFFs, long non-ASCII names,
and the memory cap of tesseract. Each is a clear 4xx, or a task that ends with its damage said."""

import io
import os

import pymupdf
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from ocr import engine
from ocr.api.requests import REPAIRED_WARNING
from ocr.models import OCRTask, TaskEvent
from tests import factories
from tests.test_worker import assert_event_log, submit, wait_status


@pytest.fixture
def client():
    return APIClient()


def giant_page_pdf(points: float = 14400) -> bytes:
    """A few hundred bytes declaring one page of 200 x 200 inches (the largest PDF page)."""
    doc = pymupdf.open()
    doc.new_page(width=points, height=points)
    data = doc.tobytes()
    doc.close()
    return data


@pytest.mark.django_db
def test_a_page_too_large_to_render_is_refused_at_submit(client, settings):
    data = giant_page_pdf()
    assert len(data) < 2000
    body = {"file": SimpleUploadedFile("huge.pdf", data), "request": '{"dpi": 150, "text_layer": "ocr"}'}
    response = client.post("/v1/ocr/process-pdf", body, format="multipart")
    assert response.status_code == 400
    assert "OCR_MAX_PAGE_PIXELS" in response.json()["detail"] and "page 1" in response.json()["detail"]
    settings.OCR_MAX_PAGE_PIXELS = 10**12  # the cap is a setting
    body = {"file": SimpleUploadedFile("huge.pdf", data), "request": '{"dpi": 150}'}
    assert client.post("/v1/ocr/process-pdf", body, format="multipart").status_code == 202
    assert OCRTask.objects.count() == 1


def test_the_cap_also_holds_where_pages_are_rendered():
    doc = pymupdf.open(stream=giant_page_pdf(), filetype="pdf")
    with pytest.raises(engine.EngineError, match="pixels"):
        engine.render_page(doc, 0, 150, max_pixels=50_000_000)


def test_tesseract_memory_is_capped():
    image = Image.open(io.BytesIO(factories.text_image("Memory cap")))
    assert "Memory" in engine.run_tesseract(image, lang="eng", dpi=144, memory_limit_mb=2048).text
    with pytest.raises(engine.OCRFailed):
        engine.run_tesseract(image, lang="eng", dpi=144, memory_limit_mb=20)


@pytest.mark.django_db
def test_multi_frame_tiff_is_refused_not_read_in_part(client):
    frames = [Image.open(io.BytesIO(factories.text_image(f"Frame {n}"))) for n in (1, 2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    response = client.post("/v1/ocr/process", {"file": SimpleUploadedFile("two.tif", buffer.getvalue())})
    assert response.status_code == 400 and "2 frames" in response.json()["detail"]


@pytest.mark.django_db
def test_long_non_ascii_file_name_is_stored_shortened(client, no_worker):
    name = "請求書" * 28 + ".png"  # 84 CJK characters: 252 bytes of UTF-8 before the extension
    response = client.post("/v1/ocr/process", {"file": SimpleUploadedFile(name, factories.text_image())})
    assert response.status_code == 202, response.content
    task = OCRTask.objects.get(pk=response.json()["task_id"])
    assert task.input_name == name and response.json()["file_name"] == name
    stored = os.path.basename(task.input_file.name)
    assert stored.endswith(".png") and len(stored.encode()) <= 100
    assert task.input_file.storage.exists(task.input_file.name)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kept", [0.33, 0.75])
def test_truncated_pdf_reports_its_lost_pages(cluster, kept):
    api = APIClient()
    data = factories.image_pdf(4, dpi=100)
    task_id = submit(api, "/v1/ocr/process-pdf", data[: int(len(data) * kept)], {"dpi": 150, "text_layer": "ocr"})
    task = wait_status(task_id, ["completed", "failed"], timeout=60)
    assert REPAIRED_WARNING in task.warnings
    assert task.processed_pages + task.failed_pages == task.total_pages == 4
    assert task.failed_pages >= 1 and task.processed_pages >= 1
    assert task.result["success"] is False
    failed = [r for r in task.result["results"] if not r["success"]]
    assert all("damaged PDF" in r["error_message"] for r in failed)
    events = assert_event_log(task_id, task.status)
    assert sum(e["type"] == "page_failed" for e in events) == task.failed_pages
    assert TaskEvent.objects.filter(task_id=task_id, type="page_failed").count() == len(failed)
    body = api.get(f"/v1/ocr/pdf-tasks/{task_id}").json()
    assert body["warnings"] == [REPAIRED_WARNING]
