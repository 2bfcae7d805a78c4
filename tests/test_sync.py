"""Sync submit through a live daphne: waits for the end, cancellable by others and by leaving."""

import threading
import uuid

import pytest

from ocr.models import OCRTask
from tests import factories
from tests.support import connection, multipart, post_file, post_json, tesseract_pids, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = {"dpi": 600, "text_layer": "ocr"}


def test_sync_pdf_returns_the_completed_task(live_daphne, cluster):
    status, body = post_file(live_daphne, "/v1/ocr/process-pdf-sync", factories.image_pdf(2), {"dpi": 150})
    assert status == 200, body
    assert body["status"] == "completed" and len(body["result"]["results"]) == 2
    assert "quick brown fox" in body["result"]["results"][0]["extracted_text"]
    status, body = post_file(live_daphne, "/v1/ocr/process-sync", factories.text_image("Hello sync"), name="a.png")
    assert status == 200 and "Hello sync" in body["result"]["extracted_text"]


def test_sync_bad_input_is_a_4xx(live_daphne):
    status, body = post_file(live_daphne, "/v1/ocr/process-pdf-sync", b"not a pdf")
    assert status == 415 and "expected a PDF" in body["detail"]
    status, body = post_file(live_daphne, "/v1/ocr/process-pdf-sync", factories.text_pdf(1), {"dpi": 1})
    assert status == 400 and "request.dpi" in body["detail"]
    assert OCRTask.objects.count() == 0


def test_sync_call_cancelled_by_another_client(live_daphne, cluster):
    task_id = str(uuid.uuid4())
    answer = {}

    def call():
        answer["status"], answer["body"] = post_file(
            live_daphne, "/v1/ocr/process-pdf-sync", factories.slow_pdf(3), {**SLOW, "task_id": task_id}
        )

    thread = threading.Thread(target=call)
    thread.start()
    wait_for(lambda: OCRTask.objects.filter(pk=task_id, status="processing").exists() and tesseract_pids())
    status, body = post_json(live_daphne, f"/v1/ocr/tasks/{task_id}/cancel", {"reason": "other client"})
    assert status == 200 and body["status"] == "cancelled"
    thread.join(10)
    assert answer["status"] == 200
    assert answer["body"]["status"] == "cancelled" and answer["body"]["cancellation_reason"] == "other client"
    wait_for(lambda: not tesseract_pids(), timeout=2)
    # a task_id that exists already is a conflict
    status, body = post_file(live_daphne, "/v1/ocr/process-pdf-sync", factories.text_pdf(1), {"task_id": task_id})
    assert status == 409


def test_sync_client_disconnect_cancels_the_task(live_daphne, cluster):
    task_id = str(uuid.uuid4())
    body, content_type = multipart(
        {
            "file": ("slow.pdf", factories.slow_pdf(3)),
            "request": f'{{"dpi": 600, "text_layer": "ocr", "task_id": "{task_id}"}}',
        }
    )
    conn = connection(live_daphne)
    conn.request("POST", "/v1/ocr/process-pdf-sync", body=body, headers={"Content-Type": content_type})
    wait_for(lambda: OCRTask.objects.filter(pk=task_id, status="processing").exists() and tesseract_pids())
    conn.sock.close()  # the client goes away mid-wait
    conn.close()
    wait_for(lambda: OCRTask.objects.get(pk=task_id).status == "cancelled", timeout=5)
    task = OCRTask.objects.get(pk=task_id)
    assert task.cancellation_reason == "Client disconnected" and task.cancelled_by == "disconnect"
    wait_for(lambda: not tesseract_pids(), timeout=2)
