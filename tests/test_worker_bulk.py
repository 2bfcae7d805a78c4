"""Many tasks at once with real qcluster workers and real tesseract: bulk cancel, a batch
cancelled mid-way, resume after a cancel, and the CPU and processing-time limits."""

import json
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from ocr.models import OCRPage, OCRTask, TaskEvent
from tests import factories
from tests.support import tesseract_pids, wait_for
from tests.test_worker import assert_event_log, status_of, submit, wait_mid_page, wait_status

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = {"dpi": 600, "text_layer": "ocr"}


@pytest.fixture
def api(cluster):
    return APIClient()


def cancelled_event_count(task_id) -> int:
    return TaskEvent.objects.filter(task_id=task_id, type="cancelled").count()


def test_bulk_cancel_of_running_pending_and_finished_tasks(api):
    done = submit(api, "/v1/ocr/process-pdf", factories.text_pdf(1))
    wait_status(done, ["completed"], timeout=30)
    running = [submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(3), SLOW) for _ in range(2)]
    pending = [submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(1), SLOW) for _ in range(2)]
    wait_for(lambda: all(status_of(t) == "processing" for t in running) and tesseract_pids(), timeout=30)
    assert all(status_of(t) == "pending" for t in pending)
    response = api.post(
        "/v1/ocr/tasks/cancel", {"task_ids": [*running, *pending, done], "reason": "bulk"}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert sorted(body["cancelled"]) == sorted(running + pending)
    assert body["already_finished"] == [done] and body["already_cancelled"] == body["not_found"] == []
    wait_for(lambda: not tesseract_pids(), timeout=2, interval=0.005)
    for task_id in running + pending:
        task = OCRTask.objects.get(pk=task_id)
        assert task.status == "cancelled" and task.cancellation_reason == "bulk"
        assert cancelled_event_count(task_id) == 1
        assert_event_log(task_id, "cancelled")
    time.sleep(0.5)  # nothing written after the cancel, even late
    for task_id in running:
        cancelled_at = OCRTask.objects.get(pk=task_id).cancelled_at
        assert not OCRPage.objects.filter(task_id=task_id, created_at__gt=cancelled_at).exists()
    assert status_of(done) == "completed"


def test_batch_cancelled_mid_way_cascades_to_its_tasks(api):
    files = [SimpleUploadedFile(f"slow{i}.pdf", factories.slow_pdf(2)) for i in range(3)]
    files.append(SimpleUploadedFile("small.png", factories.text_image()))
    response = api.post("/v1/ocr/batches", {"file": files, "request": json.dumps(SLOW)}, format="multipart")
    assert response.status_code == 202, response.content
    batch = response.json()
    assert [t["task_type"] for t in batch["tasks"]] == ["pdf", "pdf", "pdf", "ocr"]
    ids = [t["task_id"] for t in batch["tasks"]]
    wait_mid_page(ids[0])
    status = api.get(f"/v1/ocr/batches/{batch['batch_id']}").json()
    assert status["status"] == "processing" and status["counts"]["processing"] >= 1
    response = api.post(f"/v1/ocr/batches/{batch['batch_id']}/cancel", {"reason": "stop all"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["message"] == "Batch successfully cancelled"
    wait_for(lambda: not tesseract_pids(), timeout=2, interval=0.005)
    tasks = {str(t.pk): t for t in OCRTask.objects.filter(batch_id=batch["batch_id"])}
    assert sorted(body["cancelled"] + body["already_finished"]) == sorted(ids)
    for task_id in body["cancelled"]:
        assert tasks[task_id].status == "cancelled" and tasks[task_id].cancellation_reason == "stop all"
        assert_event_log(task_id, "cancelled")
    status = api.get(f"/v1/ocr/batches/{batch['batch_id']}").json()
    assert status["status"] == "cancelled"
    assert status["counts"]["cancelled"] == len(body["cancelled"])
    assert status["counts"]["pending"] == status["counts"]["processing"] == 0
    assert status["progress"]["processed_pages"] == sum(t.processed_pages for t in tasks.values())


def page_texts(task_id) -> dict[int, str]:
    return dict(OCRPage.objects.filter(task_id=task_id).values_list("page_number", "text"))


def test_resume_after_cancel_equals_an_uninterrupted_run(api):
    document = factories.image_pdf(10)
    request = {"text_layer": "ocr", "dpi": 150}
    old = submit(api, "/v1/ocr/process-pdf", document, request)
    wait_for(lambda: OCRTask.objects.get(pk=old).processed_pages >= 3, timeout=60, interval=0.01)
    assert api.post(f"/v1/ocr/tasks/{old}/cancel").status_code == 200
    before = OCRTask.objects.get(pk=old)
    shown_before = api.get(f"/v1/ocr/tasks/{old}").json()["result"]  # partial, as clients read it
    kept = {p.page_number: p for p in OCRPage.objects.filter(task_id=old, success=True)}
    assert 3 <= len(kept) < 10
    response = api.post(f"/v1/ocr/pdf-tasks/{old}/resume")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["resumed_from"] == old and body["task_type"] == "pdf" and body["status"] == "pending"
    assert body["progress"]["processed_pages"] == len(kept)
    new = body["task_id"]
    resumed = wait_status(new, ["completed"], timeout=90)
    assert resumed.processed_pages == 10 and resumed.failed_pages == 0 and resumed.parameters.dpi == 150
    copied = {p.page_number: p for p in OCRPage.objects.filter(task_id=new, page_number__in=list(kept))}
    for number, page in kept.items():  # copied, not recomputed
        assert copied[number].text == page.text and copied[number].processing_time == page.processing_time
        assert copied[number].source == page.source
    events = assert_event_log(new, "completed")
    assert sorted(e["current_page"] for e in events if e["type"] == "page_completed") == sorted(
        set(range(1, 11)) - set(kept)
    )
    assert events[-1]["processed_pages"] == 10 and events[-1]["progress_percentage"] == 100.0
    assert [r["page_number"] for r in resumed.result["results"]] == list(range(1, 11))
    # the old task is unchanged
    after = OCRTask.objects.get(pk=old)
    assert (after.status, after.processed_pages) == ("cancelled", before.processed_pages)
    assert after.result == shown_before == api.get(f"/v1/ocr/tasks/{old}").json()["result"]  # stored by its worker
    # the same document run without interruption gives the same pages
    fresh = submit(api, "/v1/ocr/process-pdf", document, request)
    wait_status(fresh, ["completed"], timeout=90)
    assert page_texts(fresh) == page_texts(new)
    assert [r["extracted_text"] for r in OCRTask.objects.get(pk=fresh).result["results"]] == [
        r["extracted_text"] for r in resumed.result["results"]
    ]


@pytest.mark.parametrize(
    "limits, reason",
    [
        ({"max_cpu_seconds": 2}, "Limit exceeded: max_cpu_seconds=2"),
        ({"max_processing_seconds": 2}, "Limit exceeded: max_processing_seconds=2"),
    ],
)
def test_limits_cancel_a_long_task(api, limits, reason):
    task_id = submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(4), {**SLOW, "limits": limits})
    task = wait_status(task_id, ["cancelled", "completed", "failed"], timeout=60)
    assert task.status == "cancelled" and task.cancellation_reason == reason and task.cancelled_by == "system"
    wait_for(lambda: not tesseract_pids(), timeout=2, interval=0.005)
    ran = (task.cancelled_at - task.started_at).total_seconds()
    assert ran >= 0.5  # not cancelled before any work
    assert_event_log(task_id, "cancelled")
    assert api.get(f"/v1/ocr/tasks/{task_id}").json()["cancelled_by"] == "system"
