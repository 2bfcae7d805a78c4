"""Cancel racing completion, from threads on real database connections: one winner each time."""

import random
import threading
import time

import pytest
from django.db import connection

from ocr import progress, services
from ocr.exceptions import TaskNotCancellable
from ocr.models import OCRPage, OCRTask, PageSource, TaskEvent
from tests import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_worker")]

ROUNDS = 60


def new_processing_task() -> OCRTask:
    task = factories.submit_task(pages=2, start=True)
    factories.record_page(task_id=task.pk, page_number=1, text="one", source=PageSource.OCR, processing_time=0.1)
    return task


def race(task: OCRTask, *, last_page_done: bool) -> dict:
    """Fire a cancel and a completion (with or without the last page) together."""
    barrier = threading.Barrier(2)
    results = {}

    def cancel():
        barrier.wait()
        time.sleep(random.uniform(0, 0.003))  # jitter so that each side wins some rounds
        try:
            results["cancel"] = services.task_cancel(task=task, reason="race").newly_cancelled
        except TaskNotCancellable:
            results["cancel"] = False
        finally:
            connection.close()

    def complete():
        barrier.wait()
        time.sleep(random.uniform(0, 0.003))
        try:
            recorded = last_page_done or factories.record_page(
                task_id=task.pk, page_number=2, text="two", source=PageSource.OCR, processing_time=0.1
            )
            results["complete"] = services.task_finish(task_id=task.pk) if recorded else False
        finally:
            connection.close()

    threads = [threading.Thread(target=cancel), threading.Thread(target=complete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_cancel_and_completion_fired_together_have_exactly_one_winner():
    outcomes = {"cancelled": 0, "completed": 0}
    for round_number in range(ROUNDS):
        task = new_processing_task()
        last_page_done = round_number % 2 == 0
        if last_page_done:
            factories.record_page(
                task_id=task.pk, page_number=2, text="two", source=PageSource.OCR, processing_time=0.1
            )
        results = race(task, last_page_done=last_page_done)
        task.refresh_from_db()
        assert results["cancel"] != results["complete"], results  # exactly one winner
        assert task.status == ("cancelled" if results["cancel"] else "completed")
        outcomes[task.status] += 1
        events = list(TaskEvent.objects.filter(task=task).order_by("seq").values_list("seq", "type"))
        assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
        terminal = [kind for _, kind in events if kind in ("completed", "failed", "cancelled")]
        assert terminal == [task.status] and events[-1][1] == task.status
        pages = OCRPage.objects.filter(task=task).count()
        assert len(progress.result_of(task)["results"]) == pages == task.processed_pages
        if task.status == "cancelled":
            assert not OCRPage.objects.filter(task=task, created_at__gt=task.cancelled_at).exists()
    # both sides must have won sometimes, or the test did not race
    assert outcomes["cancelled"] > 0 and outcomes["completed"] > 0, outcomes
