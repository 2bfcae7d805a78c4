"""Draining a worker node: SIGTERM to its `make run` mid-task loses nothing. Its workers get a
grace period (scripts/run.sh) to finish; past it their tesseracts are gone, and the task, left
without heartbeat, is re-queued by a sweeper with its finished pages kept, and another worker node
finishes it."""

import signal

import pytest

from ocr.models import OCRPage, OCRTask
from tests import factories
from tests.support import port_open, post_file, tesseract_pids, wait_for
from tests.test_nodes import Node

pytestmark = [pytest.mark.django_db(transaction=True)]
PAGES = 6  # more than two slots read in the grace period, so the task is normally handed on


def test_sigterm_to_a_worker_node_mid_task_loses_nothing(tmp_path):
    web = Node("web", "web", tmp_path)
    first = Node("worker", "first", tmp_path)
    second = None
    try:
        wait_for(lambda: port_open(web.port), timeout=60)
        status, body = post_file(
            web.url, "/v1/ocr/process-pdf", factories.slow_pdf(PAGES), {"dpi": 600, "text_layer": "ocr"}
        )
        assert status == 202, body
        task_id = body["task_id"]

        def one_page_done_and_reading_the_next():
            return OCRPage.objects.filter(task_id=task_id).exists() and tesseract_pids(first.slot_dir)

        wait_for(one_page_done_and_reading_the_next, timeout=300)
        kept = set(OCRPage.objects.filter(task_id=task_id).values_list("page_number", "text"))
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(20)
        assert not tesseract_pids(first.slot_dir)
        second = Node("worker", "second", tmp_path)
        wait_for(lambda: OCRTask.objects.get(pk=task_id).status in ("completed", "failed"), timeout=300)
        task = OCRTask.objects.get(pk=task_id)
        assert task.status == "completed" and task.processed_pages == PAGES
        if task.attempt == 1:  # the first node finished the task within its grace period
            assert task.worker_host == "first"
        else:
            # finished by another worker: "second", or the session's test cluster when its sweeper
            # was the one that re-queued the task (onto its own queue)
            assert task.attempt == 2 and task.worker_host != "first"
        assert kept <= set(OCRPage.objects.filter(task_id=task_id).values_list("page_number", "text"))
    finally:
        for node in (web, first, second):
            if node is not None and node.proc.poll() is None:
                node.stop()
