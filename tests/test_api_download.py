"""GET /v1/ocr/tasks/{id}/download (API.md section 9): every format, through real workers and
through the worker's own pipeline run in the test (text-layer, OCR and failed pages together)."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET

import pymupdf
import pytest
from rest_framework.test import APIClient

from ocr import engine, kinds, services
from ocr.models import OCRTask
from ocr.params import TaskParams
from ocr.pipeline import PagePipeline
from tests import factories
from tests.support import cer, tesseract_pids, wait_for
from tests.test_worker import submit, wait_mid_page, wait_status

ALL = ["text", "words", "hocr", "alto", "tsv", "pdf"]
FORMATS = ["text", "json", "words", "hocr", "alto", "tsv", "pdf"]
HOCR_NS = {"h": "http://www.w3.org/1999/xhtml"}
ALTO_NS = {"a": "http://www.loc.gov/standards/alto/ns-v3#"}


def download(api, task_id: str, output_format: str, prefix: str = "tasks"):
    response = api.get(f"/v1/ocr/{prefix}/{task_id}/download", {"format": output_format})
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, body


def check_documents(api, task_id: str, *, pages: list[int], ocr_pages: list[int]) -> dict:
    """Every format downloads, parses, and holds the recorded `pages` (words for `ocr_pages`)."""
    bodies = {}
    for output_format in FORMATS:
        response, body = download(api, task_id, output_format)
        assert response.status_code == 200, (output_format, body[:300])
        assert response["Content-Disposition"].startswith("attachment; filename=")
        bodies[output_format] = body
    task = OCRTask.objects.get(pk=task_id)
    assert response["OCR-Pages"] == f"{task.processed_pages}/{task.total_pages}"
    assert bodies["text"].decode().count("\f") == len(pages) - 1
    assert json.loads(bodies["json"])["task_id"] == task_id
    words = json.loads(bodies["words"])
    assert [entry["page_number"] for entry in words] == pages
    for entry in words:
        if entry["page_number"] in ocr_pages:
            assert entry["words"] and all(len(w["bbox"]) == 4 and 0 <= w["confidence"] <= 100 for w in entry["words"])
    hocr = ET.fromstring(bodies["hocr"])
    assert [div.get("id") for div in hocr.iterfind(".//h:div[@class='ocr_page']", HOCR_NS)] == [
        f"page_{n}" for n in pages
    ]
    alto = ET.fromstring(bodies["alto"])
    assert [int(p.get("PHYSICAL_IMG_NR")) for p in alto.iterfind(".//a:Page", ALTO_NS)] == pages
    tsv_rows = [row.split("\t") for row in bodies["tsv"].decode().splitlines()]
    assert tsv_rows[0][0] == "page_number"
    assert {int(row[0]) for row in tsv_rows[1:]} <= set(pages) and {int(row[0]) for row in tsv_rows[1:]} >= set(
        ocr_pages
    )
    pdf = pymupdf.open(stream=bodies["pdf"], filetype="pdf")
    assert pdf.page_count == len(pages)
    return {"pdf": pdf, "words": words, "text": bodies["text"].decode()}


@pytest.mark.django_db(transaction=True)
def test_every_format_through_real_workers(cluster):
    api = APIClient()
    task_id = submit(api, "/v1/ocr/process-pdf", factories.image_pdf(2, dpi=200), {"dpi": 200, "outputs": ALL})
    task = wait_status(task_id, ["completed", "failed"])
    assert task.status == "completed", task.error_message
    found = check_documents(api, task_id, pages=[1, 2], ocr_pages=[1, 2])
    for number, page in enumerate(found["pdf"], start=1):
        assert cer(" ".join(factories.page_lines(number)), " ".join(page.get_text().split())) < 0.03
    result = api.get(f"/v1/ocr/pdf-tasks/{task_id}").json()["result"]["results"]
    assert all(80 <= page["mean_confidence"] <= 100 and page["lang_used"] == "eng" for page in result)
    typed, body = download(api, task_id, "pdf", prefix="pdf-tasks")
    assert typed.status_code == 200 and body.startswith(b"%PDF")
    assert download(api, task_id, "pdf", prefix="llm-tasks")[0].status_code == 404

    # an image task: the image becomes the PDF page; a format not asked for is a 409 naming `outputs`
    image_id = submit(
        api, "/v1/ocr/process", factories.text_image("Searchable image text"), {"outputs": ["pdf"]}, name="a.png"
    )
    wait_status(image_id, ["completed"], timeout=60)
    response, body = download(api, image_id, "pdf")
    page = pymupdf.open(stream=body, filetype="pdf")[0]
    assert "Searchable image text" in " ".join(page.get_text().split()) and page.get_images()
    response, body = download(api, image_id, "hocr")
    assert response.status_code == 409 and "outputs" in json.loads(body)["detail"]
    assert json.loads(body)["field"] == "outputs"
    response, body = download(api, image_id, "docx")
    assert response.status_code == 400 and "format" in json.loads(body)["detail"]


@pytest.mark.django_db(transaction=True)
def test_download_of_a_cancelled_task_holds_its_finished_pages(cluster):
    api = APIClient()
    task_id = submit(
        api, "/v1/ocr/process-pdf", factories.slow_pdf(4), {"dpi": 300, "text_layer": "ocr", "outputs": ["text", "pdf"]}
    )
    wait_mid_page(task_id, min_pages=1)
    response = api.post(f"/v1/ocr/tasks/{task_id}/cancel", {"reason": "enough"}, format="json")
    assert response.status_code == 200
    wait_for(lambda: not tesseract_pids(), timeout=5)
    task = OCRTask.objects.get(pk=task_id)
    assert task.status == "cancelled" and 1 <= task.processed_pages < 4
    response, body = download(api, task_id, "pdf")
    assert response.status_code == 200 and response["OCR-Pages"] == f"{task.processed_pages}/4"
    pdf = pymupdf.open(stream=body, filetype="pdf")
    assert pdf.page_count == task.processed_pages + task.failed_pages
    assert "lorem ipsum" in pdf[0].get_text()
    response, body = download(api, task_id, "text")
    assert response["OCR-Pages"] == f"{task.processed_pages}/4" and body.decode().count("\f") == pdf.page_count - 1


def mixed_pdf() -> bytes:
    """Page 1 with a text layer, pages 2 and 3 scanned (image only)."""
    doc = pymupdf.open(stream=factories.text_pdf(1), filetype="pdf")
    scanned = pymupdf.open(stream=factories.image_pdf(3, dpi=200), filetype="pdf")
    doc.insert_pdf(scanned, from_page=1, to_page=2)
    return doc.tobytes()


@pytest.mark.django_db
def test_every_format_with_a_text_layer_page_and_a_failed_page(no_worker, settings, tmp_path):
    settings.OCR_SLOT_DIR = str(tmp_path)
    data = mixed_pdf()
    params = TaskParams(dpi=200, outputs=tuple(ALL))
    task = services.task_submit(kind=kinds.get("pdf"), params=params, filename="mixed.pdf", data=data)
    started_task = services.task_start(task_id=task.pk, total_pages=3)
    pipeline = PagePipeline(started_task, engine.CancelScope())
    with engine.open_pdf(data) as doc:
        pipeline.run_pdf(doc, [1, 2])
    pipeline.record_failure(3, engine.OCRFailed("tesseract exited with 1: broken page"), time.perf_counter())
    assert services.task_finish(task_id=task.pk, attempt=started_task.attempt)
    api = APIClient()
    found = check_documents(api, str(task.pk), pages=[1, 2, 3], ocr_pages=[2])
    text_layer_words = found["words"][0]["words"]
    assert [w["text"] for w in text_layer_words][:3] == ["Page", "1", "of"]
    scale = 200 / 72
    first_word = pymupdf.open(stream=data, filetype="pdf")[0].get_text("words", sort=True)[0]
    assert text_layer_words[0]["bbox"] == [round(v * scale) for v in first_word[:4]]
    pdf = found["pdf"]
    assert "Page 1 of the sample document." in pdf[0].get_text()  # the original text layer
    assert cer(" ".join(factories.page_lines(2)), " ".join(pdf[1].get_text().split())) < 0.03
    assert pdf[2].get_text().strip() == ""  # the failed page: the original, no text
    assert found["text"].split("\f")[2] == ""
    result = api.get(f"/v1/ocr/tasks/{task.pk}").json()["result"]["results"]
    assert "mean_confidence" not in result[0] and result[1]["mean_confidence"] > 80
    assert result[2]["success"] is False
