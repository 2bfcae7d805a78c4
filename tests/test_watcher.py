"""The worker's cancel watcher, in-process: a cancel reaches it through Redis at once."""

import subprocess
import time

import pytest

from ocr import engine, services
from ocr.pipeline import CancelWatcher
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


def test_a_wake_up_before_the_commit_waits_for_it_on_postgresql(settings):
    """The cancel wakes the worker from inside its transaction; on PostgreSQL the watcher's
    read waits for the row's lock and kills at the commit. Only that in-flight wake-up is sent
    here (no wake-up on commit) and the poll is 5 s away: a plain read would see `processing`
    and wait for the poll."""
    from django.db import connection, transaction

    from ocr import queue
    from ocr.models import OCRTask, TaskStatus

    if connection.vendor != "postgresql":
        pytest.skip("readers wait for a writer's lock only on PostgreSQL (SQLite ignores the in-flight wake-up)")
    settings.OCR_CANCEL_POLL_SECONDS = 5.0
    task = factories.submit_task(start=True)
    scope = engine.CancelScope()
    stand_in = subprocess.Popen(["sleep", "30"], start_new_session=True)
    with scope.track(stand_in):
        watcher = CancelWatcher(task, scope)
        watcher.start()
        time.sleep(0.3)  # subscribed and waiting
        with transaction.atomic():
            OCRTask.objects.filter(pk=task.pk).update(status=TaskStatus.CANCELLED)
            queue.wake_task_worker(task.pk, in_flight=True)
            time.sleep(0.5)  # the rest of the transaction
            assert stand_in.poll() is None  # nothing is killed before the commit
            committed = time.monotonic()
        stand_in.wait(timeout=3)
        killed_after = time.monotonic() - committed
    watcher.join(3)
    assert killed_after < 0.5, killed_after
    assert watcher.detected_at is not None and not watcher.is_alive()
