"""`make run`'s script (scripts/run.sh) stops everything it started, however it is stopped:
Ctrl-C/SIGTERM, a closed terminal (SIGHUP to its process group), or its own death (SIGKILL)."""

import os
import signal
import subprocess
import time
import uuid

import pytest

from tests.conftest import ROOT, service_env
from tests.support import alive, free_port, port_open, proc_ppid, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_worker")]


def descendants(root: int) -> set[int]:
    """Every live process below `root` (children in other sessions included)."""
    found, frontier = set(), {root}
    while frontier:
        children = {int(p) for p in os.listdir("/proc") if p.isdigit() and proc_ppid(int(p)) in frontier}
        children -= found
        found |= children
        frontier = children
    return found


def marked(mark: str) -> set[int]:
    """Every live process whose environment holds `mark`: all that a run started, however deep
    and whenever started (qcluster forks its workers after start-up), even once reparented."""
    needle = f"OCR_TEST_RUN={mark}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0") and alive(int(entry)):
                    found.add(int(entry))
        except (OSError, ValueError):
            continue
    return found


def cmdlines(pids: set[int]) -> dict[int, str]:
    lines = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                lines[pid] = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return lines


def start_run_script(web_processes: int = 1):
    port, mark = free_port(), uuid.uuid4().hex
    proc = subprocess.Popen(
        ["bash", "scripts/run.sh"],
        cwd=ROOT,
        env={**service_env(), "PORT": str(port), "OCR_WEB_PROCESSES": str(web_processes), "OCR_TEST_RUN": mark},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as in a terminal
    )
    wait_for(lambda: port_open(port), timeout=60)
    wait_for(lambda: len(daphnes(proc.pid)) == web_processes, timeout=30)
    wait_for(lambda: len(descendants(proc.pid)) >= 4, timeout=30)  # daphne, sweeper, qcluster and its workers
    return proc, mark


def daphnes(root: int) -> set[int]:
    def is_daphne(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                return b"/daphne\0" in handle.read()
        except OSError:
            return False

    return {pid for pid in descendants(root) if is_daphne(pid)}


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(lambda proc: os.killpg(proc.pid, signal.SIGHUP), id="terminal-closed"),
        pytest.param(lambda proc: proc.send_signal(signal.SIGTERM), id="sigterm"),
        pytest.param(lambda proc: proc.send_signal(signal.SIGKILL), id="script-killed"),
    ],
)
@pytest.mark.parametrize("web_processes", [1, 2])
def test_every_way_of_stopping_leaves_nothing_running(how, web_processes):
    proc, mark = start_run_script(web_processes)
    how(proc)
    deadline = time.monotonic() + 10
    while (marked(mark) or proc.poll() is None) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = marked(mark)
    described = cmdlines(left)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)
    assert not left, f"still running 10 s after the stop: {described}"


def test_several_web_processes_share_the_port():
    proc, _ = start_run_script(web_processes=2)
    try:
        listening = {pid: listening_sockets(pid) for pid in daphnes(proc.pid)}
        assert len(listening) == 2 and all(listening.values())
        assert len(set.union(*listening.values())) == 1, f"not one shared socket: {listening}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def listening_sockets(pid: int) -> set[str]:
    """The socket inodes on file descriptor 3 (where scripts/web.py hands its socket over)."""
    return {os.readlink(f"/proc/{pid}/fd/3")}
