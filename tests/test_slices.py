"""PDFs sliced across workers (API.md section 12, ocr/slices.py): claims never overlap, a lost
slice is re-queued alone, and with real worker nodes a sliced task has one status, one gapless
stream and the result of an unsliced run; a cancel stops every slice on every node; resume."""

import os
import signal
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from ocr import engine, services, slices, upkeep
from ocr.models import OCRPage, OCRSlice, OCRTask, TaskEvent
from tests import factories
from tests.support import http_request, port_open, post_file, post_json, tesseract_pids, wait_for
from tests.test_nodes import Node
from tests.test_worker import assert_event_log, submit, wait_status


def sliced_task(pages: int = 6, size: int = 2, **kwargs) -> OCRTask:
    task = factories.submit_task(pages=pages, start=True, **kwargs)
    with override_settings(OCR_SLICE_PAGES=size):
        slices.create(task, list(range(1, pages + 1)))
    return task


@pytest.mark.django_db
def test_plan_and_create(no_worker, django_capture_on_commit_callbacks):
    assert slices.plan([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    with override_settings(OCR_SLICE_PAGES=16):
        assert not slices.is_sliced(list(range(1, 17))) and slices.is_sliced(list(range(1, 18)))
    task = factories.submit_task(pages=5, start=True)
    no_worker.clear()
    with django_capture_on_commit_callbacks(execute=True), override_settings(OCR_SLICE_PAGES=2):
        assert slices.create(task, [1, 2, 3, 4, 5]) == 3
        slices.create(task, [1, 2, 3, 4, 5])  # idempotent
    rows = list(OCRSlice.objects.filter(task=task).values_list("index", "first_page", "last_page", "pages", "status"))
    assert rows == [(0, 1, 2, [1, 2], "pending"), (1, 3, 4, [3, 4], "pending"), (2, 5, 5, [5], "pending")]
    assert no_worker.count(str(task.pk)) == 2 * (2 + slices.SPARE_JOBS)  # a job per further slice + spares, twice


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_take_each_slice_once(no_worker):
    task = sliced_task(pages=16, size=2)
    taken: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def claimer():
        try:
            while (claimed := slices.claim()) is not None:
                taken.append((claimed.index, claimed.attempt))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(taken) == [(index, 1) for index in range(8)]
    assert set(OCRSlice.objects.filter(task=task).values_list("status", flat=True)) == {"processing"}


@pytest.mark.django_db
def test_no_slice_of_a_stopped_task_and_higher_priority_pending_first(no_worker):
    task = sliced_task(pages=4)
    high = factories.submit_task(pages=1)
    OCRTask.objects.filter(pk=high.pk).update(priority="high")  # waits: it goes before normal slices
    assert slices.claim() is None
    assert slices.claim(task_id=task.pk).index == 0  # the task's own jobs still read it
    services.task_cancel(task=task, reason="stop")
    assert slices.claim(task_id=task.pk) is None


@pytest.mark.django_db
def test_lost_slice_is_requeued_alone_then_the_task_fails(no_worker, django_capture_on_commit_callbacks):
    task = sliced_task(pages=4)
    first, second = slices.claim(), slices.claim()
    pipeline = slices.SlicePipeline(task, None, first)
    outcome = services.PageOutcome(text="one", source="ocr", processing_time=0.1)
    assert pipeline.write(1, outcome)
    OCRSlice.objects.filter(pk=first.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=60))
    no_worker.clear()
    with django_capture_on_commit_callbacks(execute=True):
        report = slices.reap_lost_slices(lost_after=30)
    assert report == {"slices_requeued": 1, "slices_failed": 0, "slice_jobs_queued": 0}
    assert no_worker == [str(task.pk)]
    rows = dict(OCRSlice.objects.filter(task=task).values_list("index", "status"))
    assert rows == {0: "pending", 1: "processing"}
    task.refresh_from_db()
    assert task.status == "processing" and task.attempt == 1 and task.processed_pages == 1
    # the task-level reaper leaves a sliced task's lost work to this one
    OCRTask.objects.filter(pk=task.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=60))
    assert upkeep.reap_lost_tasks(lost_after=30)["requeued"] == 0
    # the lost worker, if it still runs, writes nothing more; the new attempt skips page 1
    assert not pipeline.write(2, outcome)
    again = slices.claim()
    assert (again.index, again.attempt) == (0, 2)
    assert slices.SlicePipeline(task, None, again).write(2, outcome)
    assert slices.SlicePipeline(task, None, second).write(3, outcome)
    # lost a second time: the task fails once, its pages kept
    OCRSlice.objects.filter(pk=again.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=60))
    assert slices.reap_lost_slices(lost_after=30)["slices_failed"] == 1
    task.refresh_from_db()
    assert task.status == "failed" and task.error_message == "Worker lost"
    assert [page["page_number"] for page in task.result["results"]] == [1, 2, 3]
    assert_event_log(task.pk, "failed")


@pytest.mark.django_db
def test_cpu_limit_counts_every_slice(no_worker):
    task = sliced_task(pages=4)
    OCRTask.objects.filter(pk=task.pk).update(params={**task.params, "limits": {"max_cpu_seconds": 3}})
    task.refresh_from_db()
    mine, other = slices.claim(), slices.claim()
    watcher = slices.SliceWatcher(task, mine, engine.CancelScope())
    watcher.heartbeat()
    assert watcher.limit_exceeded() is None
    OCRSlice.objects.filter(pk=other.pk).update(cpu_seconds=3.5)  # reported by the other slice's worker
    watcher.heartbeat()
    assert watcher.limit_exceeded() == "Limit exceeded: max_cpu_seconds=3"


# --- Real worker nodes ------------------------------------------------------------------------

SLICE_ENV = {"OCR_SLICE_PAGES": "2", "OCR_WORKERS": "1"}


@pytest.fixture(scope="module")
def slice_nodes(django_db_setup, tmp_path_factory):
    """One web node and two worker nodes (one worker each), slices of 2 pages."""
    tmp_path = tmp_path_factory.mktemp("slice-nodes")
    started = {
        "web": Node("web", "slice-web", tmp_path, SLICE_ENV),
        "a": Node("worker", "slice-a", tmp_path, SLICE_ENV),
        "b": Node("worker", "slice-b", tmp_path, SLICE_ENV),
    }
    try:
        wait_for(lambda: port_open(started["web"].port), timeout=60)
        yield started
    finally:
        for node in started.values():
            node.stop()


def page_view(result: dict) -> list[tuple]:
    return [
        (page["page_number"], page["extracted_text"], page["source"], page["success"]) for page in result["results"]
    ]


@pytest.mark.django_db(transaction=True)
def test_sliced_run_equals_an_unsliced_one(slice_nodes, cluster):
    pdf = factories.image_pdf(5, dpi=150)
    reference_id = submit(APIClient(), "/v1/ocr/process-pdf", pdf, {"dpi": 150})  # the session cluster: unsliced
    reference = wait_status(reference_id, ["completed"], timeout=120)
    assert not OCRSlice.objects.filter(task_id=reference_id).exists()

    status, body = post_file(slice_nodes["web"].url, "/v1/ocr/process-pdf", pdf, {"dpi": 150})
    assert status == 202, body
    task = wait_status(body["task_id"], ["completed", "failed", "cancelled"], timeout=180)
    assert task.status == "completed" and task.processed_pages == 5 and task.attempt == 1
    assert page_view(task.result) == page_view(reference.result)
    assert {key: task.result[key] for key in ("success", "total_pages", "processed_pages", "dpi_used")} == {
        key: reference.result[key] for key in ("success", "total_pages", "processed_pages", "dpi_used")
    }
    rows = list(OCRSlice.objects.filter(task=task).values_list("pages", "status", "attempt"))
    assert rows == [([1, 2], "done", 1), ([3, 4], "done", 1), ([5], "done", 1)]
    events = assert_event_log(task.pk, "completed")
    expected = assert_event_log(reference_id, "completed")
    assert sorted(e["type"] for e in events) == sorted(e["type"] for e in expected)
    assert sorted(e["current_page"] for e in events if e["type"] == "page_completed") == [1, 2, 3, 4, 5]
    assert [e["processed_pages"] for e in events if e["type"] == "page_completed"] == [1, 2, 3, 4, 5]
    status, answer = http_request(slice_nodes["web"].url, "GET", f"/v1/ocr/tasks/{task.pk}")
    assert answer["status"] == "completed" and page_view(answer["result"]) == page_view(reference.result)


def both_nodes_reading(nodes, task_id) -> bool:
    """A page is recorded and each node holds a slice of the task and runs its tesseract; fails
    at once if the task ended first (the nodes never overlapped: see slices.SPARE_JOBS)."""
    task = OCRTask.objects.get(pk=task_id)
    assert task.status in ("pending", "processing"), f"task {task.status} ({task.error_message}) before both nodes read"
    if not OCRPage.objects.filter(task_id=task_id).exists():
        return False
    hosts = set(OCRSlice.objects.filter(task_id=task_id, status="processing").values_list("worker_host", flat=True))
    return hosts == {"slice-a", "slice-b"} and bool(
        tesseract_pids(nodes["a"].slot_dir) and tesseract_pids(nodes["b"].slot_dir)
    )


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_every_slice_on_every_node_then_resume(slice_nodes):
    web = slice_nodes["web"]
    pdf = factories.slow_pdf(4)
    status, body = post_file(web.url, "/v1/ocr/process-pdf", pdf, {"dpi": 600, "text_layer": "ocr"})
    assert status == 202, body
    task_id = body["task_id"]
    wait_for(lambda: both_nodes_reading(slice_nodes, task_id), timeout=120)
    status, answer = post_json(web.url, f"/v1/ocr/tasks/{task_id}/cancel", {"reason": "enough"})
    assert status == 200 and answer["status"] == "cancelled"
    wait_for(lambda: not tesseract_pids(slice_nodes["a"].slot_dir), timeout=5, interval=0.01)
    wait_for(lambda: not tesseract_pids(slice_nodes["b"].slot_dir), timeout=5, interval=0.01)
    wait_for(lambda: not OCRSlice.objects.filter(task_id=task_id, status="processing").exists(), timeout=10)
    task = OCRTask.objects.get(pk=task_id)
    kept = sorted(OCRPage.objects.filter(task_id=task_id).values_list("page_number", "text"))
    assert task.status == "cancelled" and 1 <= len(kept) < 4
    assert [(r["page_number"], r["extracted_text"]) for r in task.result["results"]] == kept
    assert set(OCRSlice.objects.filter(task_id=task_id).values_list("worker_host", flat=True)) >= {"slice-a", "slice-b"}
    assert_event_log(task_id, "cancelled")
    assert not OCRPage.objects.filter(task_id=task_id, created_at__gt=task.cancelled_at).exists()

    events_before = TaskEvent.objects.filter(task_id=task_id).count()
    status, body = post_json(web.url, f"/v1/ocr/tasks/{task_id}/resume")
    assert status == 202, body
    resumed = wait_status(body["task_id"], ["completed", "failed", "cancelled"], timeout=300)
    assert resumed.status == "completed" and resumed.processed_pages == 4
    pages = sorted(OCRPage.objects.filter(task_id=resumed.pk).values_list("page_number", "text"))
    assert [number for number, _ in pages] == [1, 2, 3, 4] and set(kept) <= set(pages)
    assert OCRSlice.objects.filter(task_id=resumed.pk, status="done").count() == 2
    assert_event_log(resumed.pk, "completed")
    assert TaskEvent.objects.filter(task_id=task_id).count() == events_before  # the old task is not changed


@pytest.mark.django_db(transaction=True)
def test_a_deadline_stops_every_slice_on_every_node(slice_nodes):
    web = slice_nodes["web"]
    # 4 s: each node's slice of 2 pages at 600 dpi takes longer even on a fast machine (with 8 s
    # a machine whose tesseract reads a page in 3.5 s finished the task before the deadline)
    request = {"dpi": 600, "text_layer": "ocr", "deadline_seconds": 4}
    status, body = post_file(web.url, "/v1/ocr/process-pdf", factories.slow_pdf(4), request)
    assert status == 202, body
    reading = {"a": False, "b": False}

    def ended() -> bool:
        for name in reading:
            reading[name] = reading[name] or bool(tesseract_pids(slice_nodes[name].slot_dir))
        return OCRTask.objects.get(pk=body["task_id"]).status in ("completed", "failed", "cancelled")

    wait_for(ended, timeout=60, interval=0.05)
    task = OCRTask.objects.get(pk=body["task_id"])
    assert task.status == "cancelled" and task.cancelled_by == "deadline", task.status
    assert task.cancellation_reason == "Deadline of 4 s exceeded"
    assert reading == {"a": True, "b": True}  # each node read a slice before the deadline
    wait_for(lambda: not tesseract_pids(slice_nodes["a"].slot_dir), timeout=5, interval=0.01)
    wait_for(lambda: not tesseract_pids(slice_nodes["b"].slot_dir), timeout=5, interval=0.01)
    wait_for(lambda: not OCRSlice.objects.filter(task_id=task.pk, status="processing").exists(), timeout=10)
    assert task.processed_pages < 4
    assert not OCRPage.objects.filter(task_id=task.pk, created_at__gt=task.cancelled_at).exists()
    assert_event_log(task.pk, "cancelled")


@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_slice_requeues_that_slice_alone(slice_nodes):
    web = slice_nodes["web"]
    status, body = post_file(web.url, "/v1/ocr/process-pdf", factories.slow_pdf(4), {"dpi": 600, "text_layer": "ocr"})
    assert status == 202, body
    task_id = body["task_id"]

    def slice_mid_second_page():
        for row in OCRSlice.objects.filter(task_id=task_id, status="processing"):
            done = OCRPage.objects.filter(task_id=task_id, page_number__in=row.pages).count()
            node = slice_nodes["a"] if row.worker_host == "slice-a" else slice_nodes["b"]
            if done == 1 and tesseract_pids(node.slot_dir):
                return row
        return None

    victim = wait_for(slice_mid_second_page, timeout=300)
    kept = set(OCRPage.objects.filter(task_id=task_id, page_number__in=victim.pages).values_list("id", "text"))
    os.kill(victim.worker_pid, signal.SIGKILL)
    task = wait_status(task_id, ["completed", "failed", "cancelled"], timeout=300)
    assert task.status == "completed" and task.processed_pages == 4 and task.attempt == 1
    attempts = dict(OCRSlice.objects.filter(task_id=task_id).values_list("index", "attempt"))
    assert attempts == {victim.index: 2, 1 - victim.index: 1}
    assert kept <= set(OCRPage.objects.filter(task_id=task_id).values_list("id", "text"))  # not redone
    assert sorted(OCRPage.objects.filter(task_id=task_id).values_list("page_number", flat=True)) == [1, 2, 3, 4]
    assert_event_log(task_id, "completed")
    wait_for(lambda: not tesseract_pids(slice_nodes["a"].slot_dir) and not tesseract_pids(slice_nodes["b"].slot_dir))
