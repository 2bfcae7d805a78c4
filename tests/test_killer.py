"""The node's killer (ocr/killer.py): a cancel kills the task's OCR processes on this node even
while their worker process cannot run a line of Python (here: stopped with SIGSTOP, as a worker
whose render holds the GIL is, for the watcher thread), and only that task's."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from ocr import engine, killer, queue

from . import factories
from .conftest import ROOT
from .support import tesseract_pids, wait_for

# A stand-in worker: OCRs one slow page through the engine under a scope labelled with a task
# id, in a page folder under PAGES_DIR; "cancel" on stdin cancels the scope (as the task's
# watcher does); prints how the page ended.
WORKER = """
import sys, threading
from PIL import Image
from ocr import engine, processes
pages_dir, label, image_path = sys.argv[1:4]
processes.KILLED_OUTSIDE_WAIT_SECONDS = 2.0
scope = engine.CancelScope(label=label)
def cancel_on_request():
    if sys.stdin.readline().strip() == "cancel":
        scope.cancel()
threading.Thread(target=cancel_on_request, daemon=True).start()
try:
    engine.run_tesseract(Image.open(image_path), lang="eng", dpi=600, scope=scope, tmpdir=pages_dir)
    print("completed", flush=True)
except engine.Cancelled:
    print("cancelled", flush=True)
except engine.OCRFailed as exc:
    print("failed:", exc, flush=True)
"""


@pytest.fixture(scope="module")
def slow_page(tmp_path_factory) -> str:
    image = engine.render_page(engine.open_pdf(factories.slow_pdf(1)), 0, 600)
    path = tmp_path_factory.mktemp("page") / "slow.png"
    image.save(path)
    return str(path)


def start_worker(pages_dir: str, task_id: str, slow_page: str) -> tuple[subprocess.Popen, int]:
    """A stand-in worker and the PID of its running OCR process."""
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, pages_dir, task_id, slow_page],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    folder = os.path.join(pages_dir, f"page-{worker.pid}-{task_id}-")
    pids = wait_for(lambda: tesseract_pids(folder), timeout=30)
    return worker, pids[0]


def dead(pid: int) -> bool:
    """Exited (a zombie, or reaped and gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def publish(task_id: str, message: bytes) -> None:
    from django.conf import settings

    queue.redis_client(settings.REDIS_URL).publish(queue._wakeup_channel(task_id), message)


@pytest.fixture
def node_killer(tmp_path):
    pages_dir = tmp_path / "pages"
    pages_dir.mkdir()
    thread = killer.NodeKiller(str(pages_dir))
    thread.start()
    time.sleep(0.3)  # subscribed
    yield thread
    thread.stop()
    thread.join(5)


def test_a_cancel_kills_the_task_s_ocr_on_this_node_while_its_worker_cannot_run(node_killer, slow_page):
    """Only a cancel's wake-ups (in flight, or committed) kill, and only the task's processes;
    the stopped worker, once it runs again, takes its killed page for cancelled when its
    watcher says so; when no one does (KILLED_OUTSIDE_WAIT_SECONDS), it reads the page again,
    and fails it only when that process is killed too."""
    pages_dir = node_killer.pages_dir
    cancelled_task, other_task = str(uuid.uuid4()), str(uuid.uuid4())
    worker, ocr = start_worker(pages_dir, cancelled_task, slow_page)
    other, other_ocr = start_worker(pages_dir, other_task, slow_page)
    try:
        for process in (worker, other):
            os.kill(process.pid, signal.SIGSTOP)  # its threads (the watcher) cannot act
        publish(cancelled_task, queue.WAKE_COMMITTED)  # another change than a cancel: look only
        time.sleep(0.5)
        assert not dead(ocr)
        publish(cancelled_task, queue.WAKE_IN_FLIGHT)
        wait_for(lambda: dead(ocr), timeout=2)
        time.sleep(0.3)
        assert not dead(other_ocr)  # another task's page goes on
        for process in (worker, other):
            os.kill(process.pid, signal.SIGCONT)
        worker.stdin.write("cancel\n")  # the watcher's word, once the worker runs again
        worker.stdin.flush()
        assert worker.stdout.readline().strip() == "cancelled"

        publish(other_task, queue.WAKE_CANCELLED)  # the wake-up of a committed cancel
        wait_for(lambda: dead(other_ocr), timeout=2)
        started = time.monotonic()
        # No watcher's word: the page is read again (a new process, which the killer, still
        # holding the task, kills again), and then fails.
        assert other.stdout.readline().strip() == "failed: tesseract exited with -9:"
        assert time.monotonic() - started > 3.5  # two waits for a word
        assert "no cancel: page read again" in other.communicate(timeout=10)[1]
    finally:
        for process in (worker, other):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait()
    assert tesseract_pids(pages_dir) == []


@pytest.mark.django_db(transaction=True)
def test_a_cancel_kills_before_its_transaction_commits_on_every_database(node_killer, slow_page):
    """The cancel's in-flight wake-up (sent before its commit, the row held) reaches the killer on
    SQLite as well as PostgreSQL: the page dies while the cancel's transaction is still open,
    and the worker takes it for cancelled on the watcher's word, after the commit."""
    from django.db import transaction

    from ocr import services

    task = factories.submit_task(start=True)
    worker, ocr = start_worker(node_killer.pages_dir, str(task.pk), slow_page)
    try:
        with transaction.atomic():  # the cancel's own transaction is nested: it commits with this one
            services.task_cancel(task=task, reason="killed before the commit")
            wait_for(lambda: dead(ocr), timeout=2)
        worker.stdin.write("cancel\n")
        worker.stdin.flush()
        assert worker.stdout.readline().strip() == "cancelled"
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate(timeout=10)


def test_the_killer_finds_a_task_s_folders_by_their_names(tmp_path):
    task_id = str(uuid.uuid4())
    names = [
        f"page-12-{task_id}-abc",
        f"page-13-{task_id}-osd-def",
        f"page-14-{uuid.uuid4()}-ghi",
        "page-15-jkl",  # a page of no task (the synchronous reader)
        f"other-{task_id}-",
    ]
    assert killer.task_folders(str(tmp_path), names, task_id) == [
        (12, str(tmp_path / names[0])),
        (13, str(tmp_path / names[1])),
    ]
    scope = engine.CancelScope(label=task_id)
    assert engine.page_folder_prefix(scope.label) == f"page-{os.getpid()}-{task_id}-"
    assert engine.page_folder_prefix(scope.label, "osd") == f"page-{os.getpid()}-{task_id}-osd-"
    assert engine.page_folder_prefix() == f"page-{os.getpid()}-"
