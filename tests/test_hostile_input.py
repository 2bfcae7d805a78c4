"""Hostile and unlucky input: giant pages, damaged PDFs, huge object counts, multi-frame TIFFs,
long non-ASCII, non-UTF-8 and path-traversal file names, and the memory cap of tesseract. Each is
a clear 4xx, or a task that ends with its damage said, in bounded time. (Empty files and
decompression bombs: tests/test_api_submit.py.)"""

import io
import os
from pathlib import Path

import pymupdf
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from ocr import engine
from ocr.api.requests import REPAIRED_WARNING
from ocr.models import OCRTask, TaskEvent
from tests import factories
from tests.support import http_request
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


@pytest.mark.parametrize("formats", [(), ("hocr",)], ids=["libtesseract", "tesseract-command"])
def test_tesseract_memory_is_capped(formats):
    image = Image.open(io.BytesIO(factories.text_image("Memory cap")))
    read = engine.run_tesseract(image, lang="eng", dpi=144, memory_limit_mb=2048, formats=formats)
    assert "Memory" in read.text
    with pytest.raises(engine.OCRFailed):
        engine.run_tesseract(image, lang="eng", dpi=144, memory_limit_mb=20, formats=formats)


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


def huge_object_count_pdf(objects: int) -> bytes:
    """One blank page among `objects` small dictionaries, with a correct cross-reference table."""
    parts = [b"%PDF-1.7\n"]
    offsets = []
    position = len(parts[0])
    bodies = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>",
    ]
    for number in range(1, objects):
        body = bodies[number - 1] if number <= len(bodies) else b"<</N %d>>" % number
        chunk = b"%d 0 obj%sendobj\n" % (number, body)
        offsets.append(position)
        parts.append(chunk)
        position += len(chunk)
    xref = [b"xref\n0 %d\n0000000000 65535 f \n" % objects, *(b"%010d 00000 n \n" % o for o in offsets)]
    trailer = b"trailer<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (objects, position)
    return b"".join(parts) + b"".join(xref) + trailer


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kept", [1.0, 0.5])
def test_pdf_with_a_huge_object_count_ends_in_bounded_time(cluster, kept):
    data = huge_object_count_pdf(150_000)  # about 7 MB; MuPDF repairs the cut one by scanning it all
    task_id = submit(APIClient(), "/v1/ocr/process-pdf", data[: int(len(data) * kept)], {"dpi": 150})
    task = wait_status(task_id, ["completed", "failed"], timeout=90)
    assert task.total_pages == 1 and task.processed_pages + task.failed_pages == 1
    assert (REPAIRED_WARNING in task.warnings) == (kept < 1)
    assert_event_log(task_id, task.status)


HOSTILE_NAMES = [
    b"../../../../etc/passwd.png",
    b"..\\..\\windows\\win.ini.png",
    b"/etc/cron.d/evil.png",
    b"\xff\xfe\x80 not utf-8.png",
    b"nul\x00byte.png",
    b"....//....//x.png",
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_file_names_never_leave_the_media_folder(live_daphne, settings, name):
    """Raw multipart over HTTP (a test client would clean the name before the server sees it)."""
    body = (
        b'--XB\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
        b"Content-Type: image/png\r\n\r\n" + factories.text_image("Name") + b"\r\n--XB--\r\n"
    )
    status, answer = http_request(
        live_daphne, "POST", "/v1/ocr/process", body, {"Content-Type": "multipart/form-data; boundary=XB"}
    )
    assert status in (202, 400), (status, answer)
    if status == 400:
        assert answer["detail"]
        return
    task = OCRTask.objects.get(pk=answer["task_id"])
    stored = task.input_file.name
    assert stored.startswith("uploads/") and "\x00" not in stored and "\\" not in stored
    assert ".." not in stored.split("/")
    media = Path(settings.MEDIA_ROOT).resolve()
    assert Path(task.input_file.path).resolve().is_relative_to(media)
    assert task.input_file.storage.exists(stored)
