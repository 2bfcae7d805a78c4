"""The opt-in tier (`make test-llm`, marker `llm`): the real local model (scripts/llm_server.py:
llama.cpp through xllamacpp, Gemma 3 270M, one thread, temperature 0) end to end through real
workers. A 270M base model is no good proofreader: a page may as well keep its OCR text with
the guard's reason; what is proven is the path, the per-page results and the cancel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from ocr.models import OCRPage, OCRTask
from tests import factories
from tests.conftest import LLM_TEST_PORT, LLM_TEST_URL, ROOT
from tests.support import stop_process, wait_for

pytestmark = [pytest.mark.llm, pytest.mark.django_db(transaction=True)]
MODEL_ALIAS = "gemma-3-270m"
SERVER_URL = f"http://127.0.0.1:{LLM_TEST_PORT}"


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    pytest.importorskip("xllamacpp", reason="pip install -r requirements-llm.txt (make test-llm does it)")
    log_path = tmp_path_factory.mktemp("llm") / "llm_server.log"
    env = {**os.environ, "LLM_PORT": str(LLM_TEST_PORT), "LLM_THREADS": "1", "LLM_ALIAS": MODEL_ALIAS}
    proc = subprocess.Popen(
        [sys.executable, "scripts/llm_server.py"],
        cwd=ROOT,
        env=env,
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = time.monotonic()
    while True:
        try:
            urllib.request.urlopen(f"{SERVER_URL}/health", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() - started > 180:
                raise RuntimeError(f"model server did not start: {log_path.read_text()[-3000:]}") from None
            time.sleep(0.2)
    print(f"model server up in {time.monotonic() - started:.1f} s")
    yield proc
    stop_process(proc)


@pytest.fixture
def api(cluster, model_server, settings):
    settings.OCR_LLM_BASE_URL = LLM_TEST_URL
    settings.OCR_LLM_MODEL = MODEL_ALIAS
    return APIClient()


def submit(api, data: bytes, request: dict) -> str:
    body = {"file": SimpleUploadedFile("doc.pdf", data), "request": json.dumps(request)}
    response = api.post("/v1/ocr/process-pdf-with-llm", body, format="multipart")
    assert response.status_code == 202, response.content
    return response.json()["task_id"]


def generating() -> bool:
    slots = json.load(urllib.request.urlopen(f"{SERVER_URL}/slots", timeout=2))
    return any(slot.get("is_processing") for slot in slots)


def open_connections(port: int) -> int:
    """Server-side TCP connections of the model server still open (established or half-closed)."""
    count = 0
    with open("/proc/net/tcp") as handle:
        for line in handle.readlines()[1:]:
            local, _, state = line.split()[1:4]
            if int(local.split(":")[1], 16) == port and state in ("01", "08"):  # ESTABLISHED, CLOSE_WAIT
                count += 1
    return count


def test_real_model_refines_a_three_page_pdf(api):
    started = time.monotonic()
    task_id = submit(api, factories.image_pdf(3, dpi=200), {"dpi": 200, "model": MODEL_ALIAS})
    wait_for(lambda: OCRTask.objects.get(pk=task_id).status in ("completed", "failed"), timeout=280, interval=0.1)
    task = OCRTask.objects.get(pk=task_id)
    print(f"3-page pdf_llm task {task.status} in {time.monotonic() - started:.1f} s")
    assert task.status == "completed", task.error_message
    pages = task.result["results"]
    assert [p["page_number"] for p in pages] == [1, 2, 3]
    for page in pages:
        print(
            f"page {page['page_number']}: source {page['source']}, llm {page['llm_processing_time']:.2f} s, "
            f"total {page['processing_time']:.2f} s, {page['error_message'] or 'refined text used'}"
        )
        assert page["success"] and page["extracted_text"] and page["model_used"] == MODEL_ALIAS
        assert page["llm_processing_time"] > 0
        if page["source"] == "ocr":
            assert page["error_message"].startswith("LLM answer not used")
        else:
            assert page["source"] == "llm" and page["error_message"] is None


def test_real_model_cancel_during_generation(api):
    task_id = submit(api, factories.image_pdf(3, dpi=200), {"dpi": 200})
    wait_for(lambda: OCRPage.objects.filter(task_id=task_id).exists(), timeout=200, interval=0.02)
    wait_for(generating, timeout=60, interval=0.005)
    time.sleep(0.1)
    assert open_connections(LLM_TEST_PORT) >= 1
    sent_at = time.monotonic()
    response = api.post(f"/v1/ocr/pdf-llm-tasks/{task_id}/cancel", {"reason": "mid generation"}, format="json")
    answered_at = time.monotonic()
    assert response.status_code == 200 and response.json()["message"] == "PDF LLM task successfully cancelled"
    wait_for(lambda: open_connections(LLM_TEST_PORT) == 0, timeout=5, interval=0.001)
    closed_at = time.monotonic()
    wait_for(lambda: not generating(), timeout=5, interval=0.002)
    idle_at = time.monotonic()
    print(
        f"cancel request {(answered_at - sent_at) * 1000:.1f} ms; model server closed its connections "
        f"{(closed_at - answered_at) * 1000:.1f} ms after the 200; "
        f"slots idle after {(idle_at - answered_at) * 1000:.1f} ms"
    )
    assert closed_at - answered_at < 0.1
    task = OCRTask.objects.get(pk=task_id)
    assert task.status == "cancelled" and task.processed_pages >= 1
    time.sleep(0.5)
    assert not OCRPage.objects.filter(task_id=task_id, created_at__gt=task.cancelled_at).exists()
    wait_for(lambda: OCRTask.objects.get(pk=task_id).work_stopped_at is not None, timeout=5)
    kept = OCRTask.objects.get(pk=task_id).result["results"]  # stored by the stopped worker
    assert len(kept) == task.processed_pages and all(p["extracted_text"] for p in kept)
