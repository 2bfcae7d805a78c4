"""The node's killer: kills a cancelled task's OCR processes on this node the moment the cancel
is announced, from a process that is not the task's worker.

Why: the task's own watcher is a thread of its worker process, and that process also renders
pages, in pymupdf calls that hold the GIL for a whole page (about 200 ms for a page of a 600 dpi
scan, measured with a 1 ms ticker thread): a cancel that arrives meanwhile waits for the render
before the watcher can kill. The killer runs as a thread of the sweeper (one per worker node),
which has nothing else to do at that moment.

How: it listens on every task's wake-up channel (ocr.queue). A cancel wakes the task's workers
twice: from inside its transaction once all is written, just before the commit (`in-flight`),
and on commit (`cancelled`). On either, the killer looks for the task's page folders in this node's
pages folder (their names carry the task's id: processes.page_folder_prefix), finds the OCR
processes reading from them among their worker's children, and kills their process groups. It
keeps looking every TICK_SECONDS for HOLD_SECONDS, so that a page started by the worker before
its watcher has seen the cancel is killed as well.

The watcher stays the authority: it confirms the cancel (or, should the cancel roll back after
the in-flight wake-up, re-queues the attempt, pages done kept), and the worker waits for its
word when a process of its own dies of a SIGKILL it did not send (CancelScope.await_verdict), so
a killed page is never recorded as failed; with no word (the attempt re-queued by a roll-back
and started again meanwhile), the page is read again (engine._run). Without Redis the killer
does nothing, and the watchers' polls still stop every task.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from . import queue
from .processes import PAGE_FILE_PREFIX, kill_group, ocr_input

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.005
HOLD_SECONDS = 1.0  # a cancel's task is looked for this long ...
HOLD_BUSY_SECONDS = 5.0  # ... and while its page folders remain, up to this long
STOPPING = (queue.WAKE_IN_FLIGHT, queue.WAKE_CANCELLED)


def task_folders(pages_dir: str, names: list[str], task_id: str) -> list[tuple[int, str]]:
    """(worker pid, folder) of each page folder of `task_id` among `names` (pages_dir's listing)."""
    marker = f"-{task_id}-"
    found = []
    for name in names:
        if name.startswith(PAGE_FILE_PREFIX) and marker in name:
            try:
                found.append((int(name[len(PAGE_FILE_PREFIX) :].split("-", 1)[0]), os.path.join(pages_dir, name)))
            except ValueError:
                continue
    return found


def children(pid: int) -> list[int]:
    """The child processes of `pid` (of each of its threads), or every process when the kernel
    does not list children (/proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []  # the worker is gone: its orphans are the sweeper's (processes.kill_orphans)
    pids: list[int] = []
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                pids.extend(int(child) for child in handle.read().split())
        except FileNotFoundError:
            return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
        except (OSError, ValueError):
            continue
    return pids


def kill_task_processes(pages_dir: str, names: list[str], task_id: str, killed: set[int]) -> int:
    """Kill the OCR processes reading a page of `task_id` from `pages_dir` (adding their pids to
    `killed`, and skipping those already there: they are dying); return its page folders found.
    A process is known by its command line (processes.ocr_input), so a reused pid is never
    killed; a dead one (a zombie) has none."""
    folders = task_folders(pages_dir, names, task_id)
    for worker, folder in folders:
        for pid in children(worker):
            if pid in killed:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    page = ocr_input(handle.read().split(b"\0"))
            except OSError:
                continue
            if page is not None and page.startswith(folder + os.sep) and kill_group(pid):
                killed.add(pid)
    return len(folders)


@dataclass
class Held:
    """A cancelled task the killer looks for: until when, and the pids it has killed."""

    until: float
    busy_until: float
    killed: set[int] = field(default_factory=set)


class NodeKiller(threading.Thread):
    """The killer thread (see the module's docstring); `stop()` ends it within a second."""

    def __init__(self, pages_dir: str) -> None:
        super().__init__(name="node-killer", daemon=True)
        self.pages_dir = pages_dir
        self.stopped = threading.Event()
        self.held: dict[str, Held] = {}

    def run(self) -> None:
        lost = False
        while not self.stopped.is_set():
            pubsub = queue.subscribe_all_task_wakeups()
            if pubsub is None:
                lost = True
                self.stopped.wait(1.0)
                continue
            if lost:
                logger.info("node killer: listening to task wake-ups again")
                lost = False
            try:
                self.serve(pubsub)
            except Exception as exc:  # Redis lost (restarted): subscribe again
                logger.warning("node killer: wake-ups lost (%s), subscribing again", exc)
                lost = True
                self.stopped.wait(0.5)
            finally:
                pubsub.close()

    def serve(self, pubsub) -> None:
        while not self.stopped.is_set():
            message = pubsub.get_message(timeout=TICK_SECONDS if self.held else 1.0)
            while message is not None:
                if message.get("type") == "pmessage" and message["data"] in STOPPING:
                    task_id = queue.task_of_wakeup(message["channel"])
                    now = time.monotonic()
                    self.held.setdefault(task_id, Held(now + HOLD_SECONDS, now + HOLD_BUSY_SECONDS))
                message = pubsub.get_message(timeout=0)
            if self.held:
                self.look()

    def look(self) -> None:
        """One look for the held tasks' OCR processes on this node: kill them."""
        try:
            names = os.listdir(self.pages_dir)
        except OSError:
            names = []
        now = time.monotonic()
        for task_id, held in list(self.held.items()):
            before = len(held.killed)
            folders = kill_task_processes(self.pages_dir, names, task_id, held.killed)
            if len(held.killed) > before:
                logger.info("task %s: node killer killed %d OCR processes", task_id, len(held.killed) - before)
            if now >= held.busy_until or (now >= held.until and not folders):
                del self.held[task_id]

    def stop(self) -> None:
        self.stopped.set()
