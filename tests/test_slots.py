"""The node-wide OCR slots (ocr/slots.py): a page waiting for a slot sleeps until one is freed,
by a release or by its holder's death, or until its task is cancelled; it does not poll."""

import subprocess
import sys
import threading
import time

import pytest

from ocr import slots
from ocr.processes import Cancelled, CancelScope
from tests.support import wait_for

HOLD_ALL = """
import fcntl, os, sys, time
fds = [os.open(os.path.join(sys.argv[1], f"slot-{n}"), os.O_CREAT | os.O_RDWR) for n in range(int(sys.argv[2]))]
for fd in fds:
    fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def full(tmp_path, monkeypatch):
    """Two slots, both held by another process (as by another worker's pages); counts the tries
    of this process's waiters. No retry without a wake-up within the test."""
    monkeypatch.setattr(slots, "RETRY_SECONDS", 60.0)
    tries = []
    take_one = slots._take_one
    monkeypatch.setattr(slots, "_take_one", lambda fds: tries.append(1) or take_one(fds))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_ALL, str(tmp_path), "2"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    yield slots.TesseractSlots(str(tmp_path), 2), holder, tries
    holder.kill()
    holder.wait()


def waiter(target, *args) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run():
        try:
            with target.acquire(*args) as fd:
                outcome.append(fd)
        except Cancelled as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_waiting_page_sleeps_until_its_holder_dies(full):
    target, holder, tries = full
    thread, outcome = waiter(target)
    time.sleep(1.0)
    assert not outcome and len(tries) <= 2, len(tries)  # polling every 5 ms would have tried ~200 times
    holder.kill()  # its slot files are closed by the kernel: a wake-up
    thread.join(timeout=5)
    assert outcome and isinstance(outcome[0], int) and len(tries) <= 4, (outcome, len(tries))


def test_a_release_in_this_process_wakes_a_waiting_page(full, tmp_path):
    target, holder, tries = full
    holder.kill()
    holder.wait()
    with target.acquire(), target.acquire():
        thread, outcome = waiter(target)
        time.sleep(0.5)
        assert not outcome and len(tries) <= 4
    thread.join(timeout=5)
    assert outcome and isinstance(outcome[0], int)


def test_a_cancel_wakes_a_waiting_page(full):
    target, _, tries = full
    scope = CancelScope()
    thread, outcome = waiter(target, scope)
    time.sleep(0.3)
    started = time.monotonic()
    scope.cancel()
    thread.join(timeout=5)
    assert outcome and isinstance(outcome[0], Cancelled) and time.monotonic() - started < 2


def test_without_inotify_a_waiting_page_polls(full, monkeypatch):
    target, holder, tries = full

    def no_inotify(**kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(slots, "INotify", no_inotify)
    thread, outcome = waiter(target)
    wait_for(lambda: len(tries) > 10, timeout=5)
    holder.kill()
    thread.join(timeout=5)
    assert outcome and isinstance(outcome[0], int)
