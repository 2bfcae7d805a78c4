"""The OCR processes of a task: the CancelScope that kills them on cancel, their memory cap, and
the clean-up of what killed workers leave behind (the node-wide slots that bound how many run:
ocr/slots.py).

No Django here. Each tesseract runs in its own process group (`start_new_session=True`), so a
kill reaches it and anything it started; killing a group and reaping it takes 3-5 ms here.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


class Cancelled(Exception):
    """The work was cancelled while it ran."""


# How long a page whose OCR process was killed from outside waits for the task's watcher to
# cancel the scope before it is read again (engine._run): the watcher's lock-waiting read lasts
# up to watcher.LOCK_WAIT_MS, its polls come every OCR_CANCEL_POLL_SECONDS; and a node's killer
# holds a cancelled task no longer (killer.HOLD_BUSY_SECONDS).
KILLED_OUTSIDE_WAIT_SECONDS = 5.0


class CancelScope:
    """Tracks the tesseract processes (and other closable work, such as an LLM's HTTP stream)
    of one task so that a cancel can stop them at once."""

    def __init__(self, label: str = "") -> None:
        # Names the page folders of this scope's processes (page_folder_prefix), so that this
        # node's killer (ocr/killer.py) can find them by task without this process's help.
        self.label = label
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._resident: set[subprocess.Popen] = set()  # page readers (ocr/page_readers.py), idle or not
        self._closers: set[Callable[[], None]] = set()
        self.cancelled = threading.Event()
        # A worker process runs one job at a time: its reaped children since now are this task's.
        self._reaped_cpu_at_start = reaped_children_cpu()

    def cpu_seconds(self) -> float:
        """CPU time of this scope's processes: those reaped since it began, plus the running ones."""
        with self._lock:
            pids = {proc.pid for proc in self._procs | self._resident}
        return reaped_children_cpu() - self._reaped_cpu_at_start + sum(process_cpu(pid) for pid in pids)

    def cancel(self) -> int:
        """Mark cancelled, run the closers, kill every running process group; return how many were killed."""
        with self._lock:
            self.cancelled.set()
            procs = list(self._procs)
            closers = list(self._closers)
        for closer in closers:
            _run_closer(closer)
        for proc in procs:
            kill_group(proc.pid)
        return len(procs)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()

    def await_verdict(self) -> None:
        """One of our processes was killed from outside (SIGKILL not sent by `cancel`): by this
        node's killer on a cancel, which this task's watcher confirms in a moment by cancelling
        the scope (or, if the cancel rolled back, by re-queuing the attempt and cancelling the
        scope as well), or by the kernel (out of memory). Wait for the watcher's word, so that a
        killed page is not taken for a failed one; raises Cancelled once it comes, returns after
        KILLED_OUTSIDE_WAIT_SECONDS without one."""
        if self.cancelled.wait(KILLED_OUTSIDE_WAIT_SECONDS):
            raise Cancelled()

    def running(self) -> int:
        with self._lock:
            return len(self._procs)

    @contextmanager
    def track(self, proc: subprocess.Popen) -> Iterator[None]:
        with self._lock:
            self._procs.add(proc)
            cancelled = self.cancelled.is_set()
        if cancelled:  # cancelled between our check and the process start
            kill_group(proc.pid)
        try:
            yield
        finally:
            with self._lock:
                self._procs.discard(proc)

    def add_resident(self, proc: subprocess.Popen) -> None:
        """A process of this task that outlives a page (a page reader): its CPU time counts while
        it lives (then as a reaped child). `track` it while it reads a page, to kill it on cancel."""
        with self._lock:
            self._resident.add(proc)

    def remove_resident(self, proc: subprocess.Popen) -> None:
        """The page reader has been reaped."""
        with self._lock:
            self._resident.discard(proc)

    @contextmanager
    def on_cancel(self, closer: Callable[[], None]) -> Iterator[None]:
        """Call `closer` (from the cancelling thread) if the scope is cancelled while the block runs."""
        with self._lock:
            self._closers.add(closer)
            cancelled = self.cancelled.is_set()
        if cancelled:
            _run_closer(closer)
        try:
            yield
        finally:
            with self._lock:
                self._closers.discard(closer)


def reaped_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """utime + stime of a live (or not yet reaped) process from /proc/<pid>/stat; 0 once gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_closer(closer: Callable[[], None]) -> None:
    try:
        closer()
    except Exception:  # a closer must never stop the others or the process kills
        logger.warning("cancel closer %r failed", closer, exc_info=True)


def kill_group(pid: int) -> bool:
    """SIGKILL the process group led by `pid` (an OCR process: it leads its own session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    # A killed process still frees its memory before it is gone (2-5 ms of CPU for a page at
    # 600 dpi). At the lowered weight of `lower_priority` that took 10-15 ms on a busy machine;
    # its session's group gets the normal weight back (allowed without privilege: nice >= 0).
    _set_autogroup_nice(pid, 0)
    return True


def lower_priority(pid: int, niceness: int, *, group: bool = True) -> None:
    """Run `pid` at `niceness` (never raised): OCR yields the CPU to the service's own processes
    (API, cancel watchers), so a cancel or a page event is served at once on a machine whose
    cores all run tesseract; alone on the CPU, tesseract runs as fast as before.

    `pid` leads a session of its own (start_new_session). Where the kernel groups sessions for
    scheduling (autogroup, on by default in Debian's and Ubuntu's kernels), a process's nice
    value only ranks it within its session's group, and each group weighs as much as any other:
    so the group's nice value is lowered too (/proc/PID/autogroup; raising it needs no privilege),
    unless not `group`."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, max(niceness, os.getpriority(os.PRIO_PROCESS, pid)))
    except (ProcessLookupError, PermissionError, OSError):
        pass  # gone already, or not allowed here
    if group:
        _set_autogroup_nice(pid, niceness)


def lower_own_priority(niceness: int, *, session_of: str) -> None:
    """Run this process (its threads to come too) at `niceness`, never raised; its session's
    scheduling group as well (see lower_priority) when the session is `session_of`'s own, its
    leader's command line naming it (run.sh, the test and benchmark harnesses and service managers
    start each program in a session of its own): a session shared with other programs, such as a
    shell's that also started daphne, keeps its group's weight, or they would lose it too.
    Called from the process's main thread (its `pid`'s)."""
    try:
        with open(f"/proc/{os.getsid(0)}/cmdline", "rb") as handle:
            leader = handle.read().split(b"\0")
    except OSError:
        leader = []
    lower_priority(os.getpid(), niceness, group=session_of.encode() in leader)


def _set_autogroup_nice(pid: int, niceness: int) -> None:
    try:
        with open(f"/proc/{pid}/autogroup", "w") as handle:
            handle.write(str(niceness))
    except OSError:
        pass  # no autogroups (the kernel's own setting or build), or the process is gone


def limit_memory(pid: int, megabytes: int) -> None:
    limit = megabytes * 1024 * 1024
    try:
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
    except (ProcessLookupError, PermissionError, OSError):
        pass  # gone already, or not allowed here: the slot cap still bounds how many run


PAGE_FILE_PREFIX = "page-"


def page_folder_prefix(label: str = "", kind: str = "") -> str:
    """The name a page folder starts with: `page-<worker pid>-[<scope label>-][<kind>-]`. The pid
    tells apart the pages of workers that are gone (remove_orphan_pages); the label (the task's
    id) lets this node's killer find a task's OCR processes (ocr/killer.py)."""
    return PAGE_FILE_PREFIX + "".join(f"{part}-" for part in (str(os.getpid()), label, kind) if part)


# glibc.malloc.hugetlb=1: tesseract's heap in transparent huge pages (where the kernel offers
# them, as with Debian's default "madvise"): a killed tesseract of a 600 dpi page is gone in
# 1-2.5 ms instead of 4-11 ms (fewer page tables to free, measured here on a busy machine),
# and it read a 300 dpi page a few percent faster (pairs run side by side, same page).
HUGE_PAGES = "glibc.malloc.hugetlb=1"
TESSERACT_ENV = {
    **os.environ,
    "OMP_THREAD_LIMIT": "1",
    "GLIBC_TUNABLES": ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), HUGE_PAGES])),
}
# Niceness of every tesseract (0 = as the worker): lower than the API's and the watchers'.
TESSERACT_NICE = int(os.environ.get("OCR_TESSERACT_NICE", "10") or 0)


def start_ocr_process(
    argv: list[str], *, stdin=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE, memory_limit_mb: int = 0
) -> subprocess.Popen:
    """An OCR process as every one runs: one thread (TESSERACT_ENV), in a session of its own (a
    kill reaches it and anything it starts), at TESSERACT_NICE, its address space capped at
    `memory_limit_mb` (0: not from here)."""
    proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=TESSERACT_ENV, start_new_session=True)
    if memory_limit_mb:
        limit_memory(proc.pid, memory_limit_mb)
    if TESSERACT_NICE:
        lower_priority(proc.pid, TESSERACT_NICE)
    return proc


# The program that reads most pages through libtesseract (see ocr/libtesseract.py).
PAGE_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libtesseract.py")


def ocr_input(argv: list[bytes]) -> str | None:
    """The page image an OCR process reads, from its command line (`tesseract IMAGE ...` or
    `python ... PAGE_PROGRAM IMAGE ...`); None for any other process."""
    if len(argv) > 1 and os.path.basename(argv[0]) == b"tesseract":
        return argv[1].decode(errors="replace")
    program = os.fsencode(PAGE_PROGRAM)
    if program in argv[:-1]:
        return argv[argv.index(program) + 1].decode(errors="replace")
    return None


def remove_orphan_pages(pages_dir: str) -> int:
    """Delete page images (and their folders) whose worker process is gone (killed before its
    `finally` ran)."""
    removed = 0
    for name in os.listdir(pages_dir):
        if not name.startswith(PAGE_FILE_PREFIX):
            continue
        try:
            pid = int(name[len(PAGE_FILE_PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if os.path.exists(f"/proc/{pid}"):
            continue
        path = os.path.join(pages_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
        removed += 1
    if removed:
        logger.warning("removed %d page images of workers that are gone", removed)
    return removed


def kill_orphans(pages_dir: str) -> int:
    """Kill OCR processes (`ocr_input`) reading a page from `pages_dir` whose worker is gone.

    A worker killed with SIGKILL leaves its tesseract running (it has its own session): its
    parent becomes init or a subreaper, no longer a Python process."""
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                page = ocr_input(handle.read().split(b"\0"))
            if page is None or not page.startswith(pages_dir):
                continue
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{parent}/cmdline", "rb") as handle:
                parent_program = handle.read().split(b"\0")[0]
        except (OSError, ValueError, IndexError):
            continue
        if parent == 1 or b"python" not in os.path.basename(parent_program):
            try:
                os.killpg(int(entry), signal.SIGKILL)
                killed += 1
                logger.warning("killed orphan tesseract %s (%s)", entry, page)
            except (ProcessLookupError, PermissionError):
                pass
            # its page folder (input and output files) had no one left to delete it
            folder = os.path.dirname(page)
            if os.path.dirname(folder) == pages_dir.rstrip("/"):
                shutil.rmtree(folder, ignore_errors=True)
    return killed
