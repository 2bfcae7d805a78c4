"""End to end with real qcluster workers and real tesseract: results, cancels, deadlines."""

import json
import os
import time
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django_q.models import Success
from rest_framework.test import APIClient

from ocr.models import OCRPage, OCRTask, TaskEvent
from tests import factories, support
from tests.support import tesseract_pids, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api(cluster):
    return APIClient()


def submit(api, path: str, data: bytes, request: dict | None = None, name: str = "doc.pdf") -> str:
    body = {"file": SimpleUploadedFile(name, data)}
    if request is not None:
        body["request"] = json.dumps(request)
    response = api.post(path, body, format="multipart")
    assert response.status_code == 202, response.content
    return response.json()["task_id"]


def status_of(task_id: str) -> str:
    return OCRTask.objects.values_list("status", flat=True).get(pk=task_id)


def wait_status(task_id: str, statuses, timeout: float = 60) -> OCRTask:
    wait_for(lambda: status_of(task_id) in statuses, timeout=timeout)
    return OCRTask.objects.get(pk=task_id)


def assert_event_log(task_id: str, terminal: str) -> list[dict]:
    events = list(TaskEvent.objects.filter(task_id=task_id).order_by("seq").values_list("payload", flat=True))
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    terminals = [e for e in events if e["type"] in ("completed", "failed", "cancelled")]
    assert [e["type"] for e in terminals] == [terminal] and events[-1]["type"] == terminal
    return events


def wait_mid_page(task_id: str, min_pages: int = 0) -> None:
    """Until the task is processing, has `min_pages` done, and a tesseract is running."""

    def ready():
        task = OCRTask.objects.get(pk=task_id)
        return task.status == "processing" and task.processed_pages >= min_pages and tesseract_pids()

    wait_for(ready, timeout=60, interval=0.01)
    time.sleep(0.2)


def test_pdf_is_ocrd_page_by_page(api):
    task_id = submit(api, "/v1/ocr/process-pdf", factories.image_pdf(3, dpi=200), {"dpi": 200})
    task = wait_status(task_id, ["completed"])
    body = api.get(f"/v1/ocr/pdf-tasks/{task_id}").json()
    assert body["progress"] == {"total_pages": 3, "processed_pages": 3, "failed_pages": 0, "percentage": 100.0}
    result = body["result"]
    assert result["success"] and result["dpi_used"] == 200 and result["total_pages"] == 3
    for number, page in enumerate(result["results"], 1):
        assert page["page_number"] == number and page["source"] == "ocr" and page["success"]
        assert page["threshold_used"] == "auto" and page["contrast_level_used"] == 1.3
        assert 80 <= page["mean_confidence"] <= 100 and page["lang_used"] == "eng"
        assert support.cer("\n".join(factories.page_lines(number)), page["extracted_text"]) < 0.02
    assert task.started_at and task.completed_at and task.completed_at >= task.started_at
    events = assert_event_log(task_id, "completed")
    assert [e["type"] for e in events].count("page_completed") == 3


def test_a_pdf_s_pages_share_page_readers_that_end_with_the_task(api):
    """ocr/page_readers.py: no more OCR processes than slots for the whole document (a process
    per page would make 6), and none left once the task is completed."""
    from django.conf import settings

    task_id = submit(api, "/v1/ocr/process-pdf", factories.image_pdf(6, dpi=150), {"dpi": 150})
    seen: set[int] = set()

    def completed():
        seen.update(tesseract_pids())
        return status_of(task_id) == "completed"

    wait_for(completed, timeout=60, interval=0.005)
    assert 1 <= len(seen) <= settings.OCR_WORKERS
    assert tesseract_pids() == []
    assert OCRTask.objects.get(pk=task_id).processed_pages == 6


def test_text_layer_pages_skip_ocr_and_image_tasks_complete(api):
    task_id = submit(api, "/v1/ocr/process-pdf", factories.text_pdf(2))
    wait_status(task_id, ["completed"], timeout=20)
    assert set(OCRPage.objects.filter(task_id=task_id).values_list("source", flat=True)) == {"text_layer"}
    image_id = submit(api, "/v1/ocr/process", factories.text_image("Hello OCR world"), name="a.png")
    task = wait_status(image_id, ["completed"], timeout=30)
    assert "Hello OCR world" in task.result["extracted_text"]
    assert task.result["threshold_used"] == "auto" and task.result["success"] is True
    assert task.result["mean_confidence"] > 50
    time.sleep(0.5)  # the cluster's monitor handles a job just after it ends
    assert not Success.objects.exists()  # no django-q2 record of it: the task's row is the record


def test_cancel_mid_page_kills_tesseract_and_keeps_partial_pages(api):
    task_id = submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(4), {"dpi": 600, "text_layer": "ocr"})
    wait_mid_page(task_id)
    running = tesseract_pids()
    assert 1 <= len(running) <= 2  # never more than OCR_WORKERS
    response = api.post(f"/v1/ocr/tasks/{task_id}/cancel", {"reason": "mid page"}, format="json")
    assert response.status_code == 200 and response.json()["message"] == "PDF task successfully cancelled"
    accepted = time.monotonic()
    wait_for(lambda: not tesseract_pids(), timeout=2, interval=0.005)
    assert time.monotonic() - accepted < 0.5
    task = OCRTask.objects.get(pk=task_id)
    assert task.status == "cancelled" and task.cancellation_reason == "mid page"
    time.sleep(0.5)  # nothing may be written after the cancel, even late
    assert not OCRPage.objects.filter(task_id=task_id, created_at__gt=task.cancelled_at).exists()
    shown = api.get(f"/v1/ocr/tasks/{task_id}").json()["result"]
    wait_for(lambda: OCRTask.objects.get(pk=task_id).work_stopped_at is not None, timeout=5)
    assert OCRTask.objects.get(pk=task_id).result == shown  # stored by the stopped worker, as shown before
    assert_event_log(task_id, "cancelled")
    # the worker is free for the next task at once
    quick = submit(api, "/v1/ocr/process", factories.text_image(), name="a.png")
    wait_status(quick, ["completed"], timeout=15)


def test_cancel_during_last_page_keeps_the_earlier_ones(api):
    task_id = submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(3), {"dpi": 600, "text_layer": "ocr"})
    wait_mid_page(task_id, min_pages=2)
    assert api.post(f"/v1/ocr/pdf-tasks/{task_id}/cancel").status_code == 200
    wait_for(lambda: not tesseract_pids(), timeout=2, interval=0.005)
    body = api.get(f"/v1/ocr/tasks/{task_id}").json()
    assert body["status"] == "cancelled" and body["cancellation_reason"] == "User requested cancellation"
    kept = body["result"]["results"]
    assert len(kept) == body["progress"]["processed_pages"] >= 2
    assert all(page["extracted_text"] for page in kept)
    last = assert_event_log(task_id, "cancelled")[-1]
    assert last["processed_pages"] == len(kept) and last["cancellation_reason"] == "User requested cancellation"
    wait_for(lambda: OCRTask.objects.get(pk=task_id).result is not None, timeout=5)
    assert OCRTask.objects.get(pk=task_id).result == body["result"]  # stored by the stopped worker


def test_pending_task_cancelled_before_pickup_is_skipped(api, cluster):
    busy = [
        submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(2), {"dpi": 600, "text_layer": "ocr"}) for _ in range(2)
    ]
    queued = submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(1), {"dpi": 600, "text_layer": "ocr"})
    wait_for(lambda: all(status_of(t) == "processing" for t in busy), timeout=30)
    assert status_of(queued) == "pending"
    assert api.post(f"/v1/ocr/tasks/{queued}/cancel").status_code == 200
    for task_id in busy:
        api.post(f"/v1/ocr/tasks/{task_id}/cancel")
    wait_for(lambda: f"task {queued}: cancelled before start, skipped" in cluster.log(), timeout=20)
    task = OCRTask.objects.get(pk=queued)
    assert task.status == "cancelled" and task.started_at is None and task.result["results"] == []
    assert_event_log(queued, "cancelled")


def test_deadline_cancels_running_and_queued_tasks(api):
    running = submit(
        api, "/v1/ocr/process-pdf", factories.slow_pdf(3), {"dpi": 600, "text_layer": "ocr", "deadline_seconds": 2}
    )
    # two blockers: when `running` is cancelled, its worker takes the second one, not `queued`
    blockers = [
        submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(2), {"dpi": 600, "text_layer": "ocr"}) for _ in range(2)
    ]
    queued = submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(1), {"dpi": 600, "deadline_seconds": 1})
    task = wait_status(running, ["cancelled"], timeout=10)
    assert task.cancellation_reason == "Deadline of 2 s exceeded" and task.cancelled_by == "deadline"
    assert (task.cancelled_at - task.created_at).total_seconds() < 5
    late = wait_status(queued, ["cancelled"], timeout=10)
    assert late.cancellation_reason == "Deadline of 1 s exceeded" and late.started_at is None
    for blocker in blockers:
        api.post(f"/v1/ocr/tasks/{blocker}/cancel")
    wait_for(lambda: not tesseract_pids(), timeout=3)


def test_workers_apply_threshold_contrast_and_page_select(api):
    """A worker that ignored the parameters would read the page anyway, and every page."""
    data = factories.image_pdf(3, dpi=200)
    plain = submit(
        api,
        "/v1/ocr/process-pdf",
        data,
        {"threshold": 0, "contrast_level": 1.0, "dpi": 200, "page_select": [2], "text_layer": "ocr"},
    )
    blinded = submit(
        api, "/v1/ocr/process-pdf", data, {"threshold": 1024, "contrast_level": 0.1, "dpi": 200, "page_select": [2]}
    )
    flat = submit(api, "/v1/ocr/process-pdf", data, {"threshold": 0, "contrast_level": 0.1, "dpi": 200})
    wait_status(plain, ["completed"])
    body = api.get(f"/v1/ocr/pdf-tasks/{plain}").json()
    (page,) = body["result"]["results"]
    assert page["page_number"] == 2 and "Page 2 of the sample" in page["extracted_text"]
    assert page["threshold_used"] == 0 and page["contrast_level_used"] == 1.0 and body["result"]["dpi_used"] == 200
    # contrast 0.1 pulls white down to grey 140, and threshold 1024 turns every pixel under 255
    # black: nothing left to read (with either parameter ignored, the text would survive)
    wait_status(blinded, ["completed", "failed"])
    (page,) = api.get(f"/v1/ocr/pdf-tasks/{blinded}").json()["result"]["results"]
    assert "sample" not in page["extracted_text"] and page["threshold_used"] == 1024
    # every page of the document when no page_select is given
    wait_status(flat, ["completed", "failed"])
    results = api.get(f"/v1/ocr/pdf-tasks/{flat}").json()["result"]["results"]
    assert [r["page_number"] for r in results] == [1, 2, 3]
    assert all(r["contrast_level_used"] == 0.1 for r in results)


def test_admin_cancel_stops_a_real_worker_mid_page(api):
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    task_id = submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(3), {"dpi": 600, "text_layer": "ocr"})
    wait_mid_page(task_id)
    operator = User.objects.create_user("operator", is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="cancel_any_task"))
    browser = Client()
    browser.force_login(operator)
    response = browser.post(f"/admin/ocr/ocrtask/{task_id}/cancel/", {"reason": "from the admin"})
    assert response.status_code == 302
    wait_for(lambda: not tesseract_pids(), timeout=2, interval=0.005)
    task = wait_status(task_id, ["cancelled"])
    assert task.cancelled_by == "admin" and task.cancellation_reason == "from the admin"
    assert_event_log(task_id, "cancelled")
    wait_for(lambda: OCRTask.objects.get(pk=task_id).work_stopped_at is not None, timeout=5)


def test_websocket_cancel_stops_a_real_worker_mid_page(api):
    from asgiref.sync import async_to_sync
    from channels.testing import WebsocketCommunicator

    from ocrsite.asgi import application

    task_id = submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(3), {"dpi": 600, "text_layer": "ocr"})
    wait_mid_page(task_id)

    async def cancel_over_the_socket():
        socket = WebsocketCommunicator(application, f"/ws/ocr/tasks/{task_id}/", headers=[(b"host", b"t")])
        assert (await socket.connect())[0]
        await socket.send_json_to({"action": "cancel", "reason": "from the socket"})
        frames = []
        while not frames or frames[-1].get("type") != "cancelled":
            frames.append(await socket.receive_json_from(timeout=10))
        await socket.disconnect()
        return frames

    frames = async_to_sync(cancel_over_the_socket)()
    answers = [f for f in frames if f["type"] == "cancel_result"]
    assert len(answers) == 1 and answers[0]["status_code"] == 200
    assert frames.index(answers[0]) < len(frames) - 1  # the answer precedes the cancelled event
    wait_for(lambda: not tesseract_pids(), timeout=2, interval=0.005)
    assert wait_status(task_id, ["cancelled"]).cancelled_by == "websocket"


def test_workers_and_their_qcluster_yield_the_cpu_but_not_the_killers_sweeper(api, cluster, settings):
    """OCR_WORKER_NICE (10) for a worker process and its qcluster's session group (ocr/apps.py);
    the sweeper, whose killer kills a cancelled task's tesseracts, keeps its weight."""
    task = wait_status(submit(api, "/v1/ocr/process", factories.text_image(), name="a.png"), ["completed"], 30)
    assert settings.OCR_WORKER_NICE == 10
    assert os.getpriority(os.PRIO_PROCESS, task.worker_pid) == 10
    if os.path.exists("/proc/self/autogroup"):  # "/autogroup-42 nice 10"
        assert Path(f"/proc/{task.worker_pid}/autogroup").read_text().split()[-1] == "10"
        assert Path(f"/proc/{cluster.procs[1].pid}/autogroup").read_text().split()[-1] == "0"
