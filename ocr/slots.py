"""Node-wide OCR slots: at most OCR_WORKERS tesseracts run on a host, whichever worker process
starts them.

A slot is a flock'ed file in OCR_SLOT_DIR; the kernel releases it when its holder closes it or
dies, so a killed worker never leaks a slot. A page that finds every slot taken sleeps until a
slot file is closed (inotify's IN_CLOSE_WRITE on the folder; a holder that is killed has its
files closed too) or its task is cancelled, and then tries again. It used to poll every 5 ms:
about 120 us of CPU a try, 2-3% of a core for each waiting page, taken from the tesseracts
whenever two worker processes share the slots (a queue of tasks).

No Django here.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from inotify_simple import INotify, flags

from .processes import CancelScope

logger = logging.getLogger(__name__)

# A waiting page tries again every RETRY_SECONDS even without a wake-up (none is lost: a release
# after a failed try leaves its event queued); where inotify is not available (the user's limit
# of inotify instances reached), it polls every POLL_SECONDS, as before.
RETRY_SECONDS = 0.5
POLL_SECONDS = 0.005
_warned_no_inotify = False  # said once per process: a node's condition, not a page's


class TesseractSlots:
    """A host-wide counting semaphore made of flock'ed files: at most `count` tesseracts run."""

    def __init__(self, directory: str, count: int) -> None:
        self.directory = directory
        self.count = count
        os.makedirs(directory, exist_ok=True)

    @contextmanager
    def acquire(self, scope: CancelScope | None = None) -> Iterator[int]:
        """Hold one free slot; waits for one (cancellable through `scope`: Cancelled)."""
        fds = [
            os.open(os.path.join(self.directory, f"slot-{slot}"), os.O_CREAT | os.O_RDWR, 0o666)
            for slot in range(self.count)
        ]
        try:
            if scope is not None:
                scope.check()
            held = _take_one(fds)
            if held is None:
                held = self._wait(fds, scope)
            yield held
        finally:
            for fd in fds:
                os.close(fd)  # closing the held descriptor releases its lock (and wakes a waiter)

    def _wait(self, fds: list[int], scope: CancelScope | None) -> int:
        with _Wakeups(self.directory) as wakeups, scope.on_cancel(wakeups.wake) if scope else nullcontext():
            while True:
                if scope is not None:
                    scope.check()
                held = _take_one(fds)  # after the watch began: a release since is seen
                if held is not None:
                    return held
                wakeups.wait()


def _take_one(fds: list[int]) -> int | None:
    for fd in fds:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        return fd
    return None


class _Wakeups:
    """What a waiting page sleeps on: the slot files' closes, and its task's cancel (`wake`)."""

    def __init__(self, directory: str) -> None:
        self._lock = threading.Lock()  # `wake` comes from the cancelling thread
        self._pipe_r, self._pipe_w = os.pipe()
        self._inotify: INotify | None = None
        try:
            self._inotify = INotify(nonblocking=True)
            self._inotify.add_watch(directory, flags.CLOSE_WRITE)
            self._poller = select.poll()  # not select(): no limit on descriptor numbers
            self._poller.register(self._inotify, select.POLLIN)
            self._poller.register(self._pipe_r, select.POLLIN)
        except OSError as exc:
            global _warned_no_inotify
            if not _warned_no_inotify:
                _warned_no_inotify = True
                logger.warning("OCR slots: no inotify on %s (%s): pages waiting for a slot poll", directory, exc)
            self._close_inotify()

    def __enter__(self) -> _Wakeups:
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            os.close(self._pipe_r)
            os.close(self._pipe_w)
            self._pipe_w = -1
        self._close_inotify()

    def _close_inotify(self) -> None:
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            inotify.close()

    def wake(self) -> None:
        with self._lock:
            if self._pipe_w >= 0:
                os.write(self._pipe_w, b"x")

    def wait(self) -> None:
        if self._inotify is None:
            time.sleep(POLL_SECONDS)
            return
        if any(fd == self._inotify.fileno() for fd, _ in self._poller.poll(RETRY_SECONDS * 1000)):
            self._inotify.read(timeout=0)  # drain: the next try sees every release up to now
