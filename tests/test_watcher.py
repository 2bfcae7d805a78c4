"""The worker's cancel watcher, in-process: a cancel reaches it through Redis at once."""

import subprocess
import threading
import time
from contextlib import contextmanager

import pytest

from ocr import engine, services
from ocr.watcher import CancelWatcher, run_watched
from tests import factories
from tests.support import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_worker")]


def test_cancel_wakes_the_watcher_long_before_its_next_poll(settings):
    settings.OCR_CANCEL_POLL_SECONDS = 5.0  # only the wake-up can make it fast
    task = factories.submit_task(start=True)
    scope = engine.CancelScope()
    stand_in = subprocess.Popen(["sleep", "30"], start_new_session=True)  # plays a running tesseract
    with scope.track(stand_in):
        watcher = CancelWatcher(task, scope)
        watcher.start()
        time.sleep(0.3)  # subscribed and waiting
        started = time.monotonic()
        services.task_cancel(task=task, reason="wake up")
        stand_in.wait(timeout=3)
        killed_after = time.monotonic() - started
    watcher.join(3)
    assert killed_after < 0.5, killed_after
    assert watcher.detected_at is not None and not watcher.is_alive()


def test_watcher_without_redis_still_polls(settings, monkeypatch):
    monkeypatch.setattr("ocr.queue.subscribe_task_wakeups", lambda task_id: None)
    settings.OCR_CANCEL_POLL_SECONDS = 0.05
    task = factories.submit_task(start=True)
    scope = engine.CancelScope()
    watcher = CancelWatcher(task, scope)
    watcher.start()
    services.task_cancel(task=task, reason="polled")
    wait_for(lambda: scope.cancelled.is_set(), timeout=2)
    watcher.join(3)


def test_a_cancel_landing_as_the_work_ends_still_records_when_the_work_stopped():
    """The pages are done and the watcher stopped; the cancel commits before the task's finish:
    the finish is refused (the cancel won) and the task still says when its work stopped."""
    from ocr.models import OCRTask

    task = factories.submit_task(start=True)
    watcher = CancelWatcher(task, engine.CancelScope())

    def finish() -> bool:
        services.task_cancel(task=task, reason="just too late")
        return services.task_finish(task_id=task.pk, attempt=task.attempt)

    run_watched(task, watcher, lambda: None, finish)
    task = OCRTask.objects.get(pk=task.pk)
    assert watcher.detected_at is None  # the watcher never saw it
    assert task.status == "cancelled" and task.work_stopped_at is not None
    assert task.work_stopped_at >= task.cancelled_at


@contextmanager
def in_flight_cancel(task, *, commit: bool):
    """What task_cancel does on PostgreSQL up to its commit: the status UPDATE, the in-flight
    wake-up (and no wake-up on commit), then the commit, delayed here (the row held) until the
    tesseract stand-in is dead; then commit, or roll back."""
    from django.db import transaction

    from ocr import queue
    from ocr.models import OCRTask, TaskStatus

    class RolledBack(Exception):
        pass

    try:
        with transaction.atomic():
            OCRTask.objects.filter(pk=task.pk).update(status=TaskStatus.CANCELLED)
            queue.wake_task_worker(task.pk, in_flight=True)
            yield
            if not commit:
                raise RolledBack
    except RolledBack:
        pass


def watched_stand_in(task, settings):
    """A watcher (poll 5 s away: only a wake-up makes it act) over a tesseract stand-in."""
    from django.db import connection

    if connection.vendor != "postgresql":  # before any thread starts
        pytest.skip("readers wait for a writer's lock only on PostgreSQL (on SQLite the watcher waits for the commit)")
    settings.OCR_CANCEL_POLL_SECONDS = 5.0
    scope = engine.CancelScope()
    stand_in = subprocess.Popen(["sleep", "30"], start_new_session=True)
    watcher = CancelWatcher(task, scope)
    return scope, stand_in, watcher


def test_a_wake_up_before_the_commit_kills_at_once_and_confirms_on_postgresql(settings):
    """The cancel wakes the worker from inside its transaction: the kill does not wait for the
    rest of the transaction, and the watcher ends once the commit confirms the cancel."""
    from ocr.models import OCRTask, TaskStatus

    task = factories.submit_task(start=True)
    scope, stand_in, watcher = watched_stand_in(task, settings)

    def work():  # what the job does: waits for its tesseract, and stops when it is cancelled
        stand_in.wait()
        scope.check()

    with scope.track(stand_in):
        job = threading.Thread(target=run_watched, args=(task, watcher, work, lambda: None))
        job.start()
        time.sleep(0.3)  # subscribed and waiting
        with in_flight_cancel(task, commit=True):
            stand_in.wait(timeout=3)  # killed while the cancel has not committed yet
            time.sleep(0.3)  # the job has seen its tesseract die meanwhile
            assert watcher.is_alive()  # waiting for the commit to confirm
        job.join(5)
    assert watcher.detected_at is not None and not watcher.is_alive() and not job.is_alive()
    after = OCRTask.objects.get(pk=task.pk)
    assert after.status == TaskStatus.CANCELLED
    assert after.work_stopped_at is not None  # written after the confirmation, not before


def test_a_cancel_that_rolls_back_after_the_kill_requeues_the_attempt(settings):
    """Killed on the in-flight wake-up, but the cancel's transaction rolls back: the attempt
    is handed back to the queue (a status event says so) rather than left stopped and running."""
    from ocr.models import OCRTask, TaskEvent, TaskStatus

    task = factories.submit_task(start=True)
    scope, stand_in, watcher = watched_stand_in(task, settings)
    with scope.track(stand_in):
        watcher.start()
        time.sleep(0.3)
        with in_flight_cancel(task, commit=False):
            stand_in.wait(timeout=3)
    watcher.join(3)
    assert not watcher.is_alive()
    after = OCRTask.objects.get(pk=task.pk)
    assert after.status == TaskStatus.PENDING and after.worker_pid is None
    assert (
        list(TaskEvent.objects.filter(task_id=task.pk).order_by("seq").values_list("type", flat=True))[-1] == "status"
    )
