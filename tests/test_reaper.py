"""Lost work: a worker killed with SIGKILL, a job lost by the broker, orphan tesseracts."""

import glob
import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from ocr import queue, services, tasks, upkeep
from ocr.models import OCRPage, OCRTask, PageSource, TaskEvent
from ocr.queue import queued_task_ids
from tests import factories
from tests.support import tesseract_pids, wait_for
from tests.test_worker import assert_event_log, submit, wait_mid_page


def started_task(pages=2) -> OCRTask:
    return factories.submit_task(pages=pages, start=True)


def age_heartbeat(task: OCRTask, seconds: float = 60) -> None:
    OCRTask.objects.filter(pk=task.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=seconds))


@pytest.mark.django_db
def test_lost_task_is_requeued_once_then_failed(django_capture_on_commit_callbacks, no_worker):
    task = started_task()
    factories.record_page(
        task_id=task.pk, page_number=1, text="one", source=PageSource.OCR, processing_time=0.1, attempt=1
    )
    age_heartbeat(task)
    first_queued = OCRTask.objects.get(pk=task.pk).enqueued_at
    with django_capture_on_commit_callbacks(execute=True):
        report = upkeep.reap_lost_tasks(lost_after=30)
    assert report["requeued"] == 1
    task.refresh_from_db()
    assert task.status == "pending" and task.attempt == 1 and task.processed_pages == 1
    assert task.enqueued_at > first_queued  # stamped by the UPDATE that made it pending again
    assert no_worker == [str(task.pk)]  # queued again
    # the lost worker, if it still runs, can no longer write; the next attempt can
    again = services.task_start(task_id=task.pk, total_pages=2)
    assert again.attempt == 2
    assert not factories.record_page(
        task_id=task.pk, page_number=2, text="old", source="ocr", processing_time=0.1, attempt=1
    )
    # lost a second time: failed, with its one terminal event and the page kept
    age_heartbeat(task)
    assert upkeep.reap_lost_tasks(lost_after=30)["failed"] == 1
    task.refresh_from_db()
    assert task.status == "failed" and task.error_message == "Worker lost"
    assert [r["extracted_text"] for r in task.result["results"]] == ["one"]
    assert TaskEvent.objects.filter(task=task, type="failed").count() == 1


@pytest.mark.django_db
def test_live_heartbeat_is_left_alone(no_worker):
    task = started_task()
    assert services.task_heartbeat(task_id=task.pk, attempt=1)
    assert upkeep.reap_lost_tasks(lost_after=30) == {
        "requeued": 0,
        "failed": 0,
        "pending_requeued": 0,
        "cancelled_results_stored": 0,
    }
    assert not services.task_heartbeat(task_id=task.pk, attempt=7)
    # cancelled with a page done, its worker alive and stopping: its result is left to it
    factories.record_page(task_id=task.pk, page_number=1, text="one", source="ocr", processing_time=0.1, attempt=1)
    services.task_cancel(task=task, reason="r")
    assert OCRTask.objects.get(pk=task.pk).result is None
    assert upkeep.reap_lost_tasks(lost_after=30)["cancelled_results_stored"] == 0


@pytest.mark.django_db
def test_a_task_cancelled_before_its_first_page_whose_worker_died_gets_its_result(no_worker):
    """A running PDF's cancel leaves its result to the worker even before its first page; a lost
    worker's is stored by the reaper. An image's result before its page is none: nothing to store."""
    pdf, image = started_task(pages=3), factories.submit_task("ocr", start=True)
    for task in (pdf, image):
        services.task_cancel(task=task, reason="r")
        assert OCRTask.objects.get(pk=task.pk).result is None
        age_heartbeat(task)
    assert upkeep.reap_lost_tasks(lost_after=30)["cancelled_results_stored"] == 1
    stored = OCRTask.objects.get(pk=pdf.pk).result
    assert stored["results"] == [] and stored["total_pages"] == 3 and stored["success"] is False
    assert OCRTask.objects.get(pk=image.pk).result is None
    assert upkeep.reap_lost_tasks(lost_after=30)["cancelled_results_stored"] == 0


@pytest.mark.django_db
def test_pending_job_lost_by_the_broker_is_queued_again():
    from django_q.brokers import get_broker

    task = factories.submit_task()
    assert task.enqueued_at is not None  # stamped by the INSERT: its job goes on the queue at commit
    get_broker().purge_queue()  # as if a dying worker had taken the job
    OCRTask.objects.filter(pk=task.pk).update(created_at=timezone.now() - timedelta(seconds=120), enqueued_at=None)
    assert upkeep.reap_lost_tasks(lost_after=30, requeue_pending_after=60)["pending_requeued"] == 1
    assert str(task.pk) in queued_task_ids()
    assert OCRTask.objects.get(pk=task.pk).enqueued_at is not None
    # already on the queue: not queued twice
    OCRTask.objects.filter(pk=task.pk).update(enqueued_at=timezone.now() - timedelta(seconds=120))
    assert upkeep.reap_lost_tasks(lost_after=30, requeue_pending_after=60)["pending_requeued"] == 0
    get_broker().purge_queue()


def page_age() -> float:
    """Seconds since the newest page in flight began: its image is written (in a page reader's
    folder, ocr/page_readers.py) just before it is read, and deleted once it is read."""
    from django.conf import settings

    newest = 0.0
    for page in glob.glob(os.path.join(settings.OCR_SLOT_DIR, "pages", "*", "page.bmp")):
        try:
            newest = max(newest, os.stat(page).st_mtime)
        except FileNotFoundError:
            continue
    return time.time() - newest


def worker_pid_of(task_id) -> int:
    return wait_for(lambda: OCRTask.objects.get(pk=task_id).worker_pid)


@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_task_is_recovered_and_leaves_no_tesseract(cluster):
    from rest_framework.test import APIClient

    api = APIClient()
    task_id = submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(4), {"dpi": 600, "text_layer": "ocr"})
    wait_mid_page(task_id, min_pages=1)
    # kill when a page has just started: it has seconds of work left, so only a kill ends it early
    wait_for(lambda: tesseract_pids() and page_age() < 0.3, timeout=30, interval=0.005)
    os.kill(worker_pid_of(task_id), signal.SIGKILL)
    # the reaper (ocr_sweeper) kills the orphan tesseract and re-queues; a new worker finishes
    task = wait_for(lambda: OCRTask.objects.filter(pk=task_id, status="completed").first(), timeout=90)
    assert task.attempt == 2 and task.processed_pages == 4
    assert sorted(OCRPage.objects.filter(task_id=task_id).values_list("page_number", flat=True)) == [1, 2, 3, 4]
    assert_event_log(task_id, "completed")
    assert "orphan tesseract" in cluster.log() and "re-queued" in cluster.log()
    wait_for(lambda: not tesseract_pids(), timeout=5)


@pytest.mark.django_db(transaction=True)
def test_cancel_of_a_task_whose_worker_died(cluster):
    from rest_framework.test import APIClient

    api = APIClient()
    task_id = submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(4), {"dpi": 600, "text_layer": "ocr"})
    wait_mid_page(task_id, min_pages=1)
    os.kill(worker_pid_of(task_id), signal.SIGKILL)
    response = api.post(f"/v1/ocr/tasks/{task_id}/cancel", {"reason": "dead worker"}, format="json")
    assert response.status_code == 200
    assert_event_log(task_id, "cancelled")
    wait_for(lambda: not tesseract_pids(), timeout=10)  # the orphan is killed by the reaper
    task = OCRTask.objects.get(pk=task_id)
    assert task.status == "cancelled" and task.result is None  # its page's text was left to its worker
    read = api.get(f"/v1/ocr/tasks/{task_id}").json()["result"]  # reads assemble it meanwhile
    done = sorted(OCRPage.objects.filter(task_id=task_id).values_list("page_number", flat=True))
    assert done and [page["page_number"] for page in read["results"]] == done
    # once the worker counts as lost, the sweeper (a real one, in the cluster) stores the partial result
    age_heartbeat(task)
    task = wait_for(lambda: OCRTask.objects.filter(pk=task_id, result__isnull=False).first(), timeout=10)
    assert task.result == read
    assert task.work_stopped_at is None  # when its work stopped is not known
    assert "partial result stored" in cluster.log()
    assert upkeep.reap_lost_tasks(lost_after=30)["cancelled_results_stored"] == 0


def test_a_redis_restart_is_seen_by_its_run_id(private_redis):
    import redis

    server = redis.from_url(private_redis.url)
    before = queue.redis_run_id(server)
    assert before and queue.redis_run_id(server) == before
    private_redis.stop()
    assert queue.redis_run_id(server) is None
    private_redis.start()  # empty: every job on its list is gone
    assert queue.redis_run_id(server) not in (None, before)


@pytest.mark.django_db
def test_after_a_redis_restart_pending_work_not_on_the_queue_is_queued_again_at_once(monkeypatch):
    from django_q.brokers import get_broker

    task = factories.submit_task()  # never committed here: its job is not on the queue
    monkeypatch.setattr(tasks, "_broker_run_id", queue.redis_run_id())  # the last pass saw this Redis
    assert tasks.reap()["pending_requeued"] == 0  # queued just now: a worker may hold its job
    monkeypatch.setattr(tasks, "_broker_run_id", "the run before a restart")
    assert tasks.reap()["pending_requeued"] == 1
    assert str(task.pk) in queued_task_ids()
    assert tasks._broker_run_id == queue.redis_run_id()  # once only
    assert tasks.reap()["pending_requeued"] == 0
    get_broker().purge_queue()
