"""What `make chaos` breaks and how it watches: a private Redis and a private PostgreSQL cluster
(never the shared ones on 6379 / 5432, which other test runs use), small helpers of the
scenarios, a stream client that reconnects with `after` / `Last-Event-ID`, and the checks run
after every scenario.

Both servers listen on a free loopback port, keep their files in a temp dir, and are removed
by `close()`, which `benchmarks/chaos.py` calls on every way out (error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import harness
from harness import free_port, log, port_open

TERMINAL = ("completed", "failed", "cancelled")


# --- Private servers -----------------------------------------------------------------------


class PrivateRedis:
    """redis-server on a free loopback port, nothing on disk: a restart forgets every key,
    group and queued job (the harsh case: a crash, not a clean restart with persistence)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not listen on {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()


class PrivatePostgres:
    """A throw-away cluster: initdb in a temp dir as the `postgres` user (we run as root),
    trust auth, loopback only, on a free port; `stop()` / `start()` restart it."""

    def __init__(self) -> None:
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
        if not versions:
            raise RuntimeError("no /usr/lib/postgresql/*/bin: install postgresql to run the chaos scenarios")
        self.bin = Path(versions[-1])
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = self.root / "data"
        shutil.chown(self.root, "postgres", "postgres")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["runuser", "-u", "postgres", "--", str(self.bin / tool), *args]
        return subprocess.run(argv, cwd=self.root, capture_output=True, text=True, check=check)

    def start(self) -> None:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# --- Scenario helpers ------------------------------------------------------------------------


def pdf(pages: int, *, slow: bool = False) -> bytes:
    """Image-only pages: `slow` ones keep tesseract busy for seconds (dense 7 pt text), others ~1 s."""
    from tests import factories

    return factories.slow_pdf(pages) if slow else factories.image_pdf(pages, dpi=150)


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {timeout} s")


def ocr_running(service: harness.Service, count: int) -> bool:
    return len(harness.tesseract_pids(str(service.tesseract_tmp))) >= count


def post_cancel(service: harness.Service, path: str, payload: dict) -> tuple[int, float, dict]:
    """POST a cancel: (status code, round trip in ms, JSON answer)."""
    started = time.monotonic()
    body = json.dumps(payload).encode()
    code, answer = harness.http_request(service.base_url, "POST", path, body, {"Content-Type": "application/json"})
    return code, (time.monotonic() - started) * 1000, answer if isinstance(answer, dict) else {}


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def chattr(flag: str, folder) -> None:
    """+i / -i on `folder` and every folder under it (immutable: no new entry, even for root)."""
    folders = [str(folder), *(str(p) for p in folder.rglob("*") if p.is_dir())]
    subprocess.run(["chattr", flag, *folders], check=True)


# --- Streams -------------------------------------------------------------------------------


class FollowedStream(threading.Thread):
    """Follows one task over WebSocket or SSE until its terminal event, reconnecting with
    `?after=SEQ` (WebSocket) or `Last-Event-ID` (SSE) whenever the connection ends without it.
    `cut()` closes the connection from our side, as a client whose network dropped."""

    def __init__(self, base_url: str, task_id: str, transport: str, timeout: float = 240) -> None:
        super().__init__(name=f"{transport}-{task_id}", daemon=True)
        self.base_url, self.task_id, self.transport = base_url, task_id, transport
        self.deadline = time.monotonic() + timeout
        self.events: list[dict] = []
        self.connects = 0
        self.client = None
        self.finished = threading.Event()

    def _messages(self):
        last = self.events[-1]["seq"] if self.events else 0
        if self.transport == "ws":
            self.client = harness.WebSocketClient(self.base_url, f"/ws/ocr/tasks/{self.task_id}/?after={last}", 60)
            return self.client.messages()
        headers = {"Last-Event-ID": str(last)} if last else {}
        self.client = harness.SSEClient(self.base_url, f"/v1/ocr/stream/{self.task_id}", 60, headers=headers)
        return self.client.events()

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                try:
                    self.connects += 1
                    for _, event in self._messages():
                        if "seq" in event:
                            self.events.append(event)
                        if event.get("type") in TERMINAL:
                            return
                except Exception:
                    pass  # refused, reset, cut: connect again
                finally:
                    self.close()
                time.sleep(0.2)
        finally:
            self.finished.set()

    def cut(self) -> None:
        self.close()

    def close(self) -> None:
        client = self.client
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    def problems(self) -> list[str]:
        """What is wrong with what this client saw: gaps, duplicates, not one terminal event at the end."""
        seqs = [event["seq"] for event in self.events]
        found = []
        if seqs != list(range(1, len(seqs) + 1)):
            found.append(f"seqs {seqs}")
        terminals = [event["type"] for event in self.events if event["type"] in TERMINAL]
        if len(terminals) != 1 or self.events[-1]["type"] not in TERMINAL:
            found.append(f"terminal events {terminals}")
        return found


def open_streams(base_url: str, task_ids: list[str], transports=("ws", "sse")) -> list[FollowedStream]:
    """Streams following the tasks, each connected (its first event received) before this
    returns: the chaos that follows must meet open streams, not streams still connecting."""
    streams = [FollowedStream(base_url, task_id, transport) for task_id in task_ids for transport in transports]
    for stream in streams:
        stream.start()
    wait(lambda: all(stream.events or stream.finished.is_set() for stream in streams), 60, "every stream connected")
    return streams


# --- Checks after a scenario ----------------------------------------------------------------


def wait_terminal(task_ids: list[str], timeout: float) -> float:
    """Seconds until every task is terminal (raises after `timeout`)."""
    from ocr.models import OCRTask

    started = time.monotonic()
    while OCRTask.objects.filter(pk__in=task_ids).exclude(status__in=TERMINAL).exists():
        if time.monotonic() - started > timeout:
            left = list(OCRTask.objects.filter(pk__in=task_ids).exclude(status__in=TERMINAL).values("id", "status"))
            raise RuntimeError(f"tasks not terminal after {timeout} s: {left[:5]}")
        time.sleep(0.2)
    return time.monotonic() - started


def task_problems(task_ids: list[str]) -> dict[str, str]:
    """Tasks whose database state is not one terminal status with exactly one terminal event,
    last, in a gapless event log (id -> what is wrong)."""
    from ocr.models import OCRTask, TaskEvent

    statuses = dict(OCRTask.objects.filter(pk__in=task_ids).values_list("id", "status"))
    logs: dict[str, list[tuple[int, str]]] = {}
    for task_id, seq, type_ in TaskEvent.objects.filter(task_id__in=task_ids).values_list("task_id", "seq", "type"):
        logs.setdefault(str(task_id), []).append((seq, type_))
    found = {}
    for task_id in task_ids:
        status = statuses.get(uuid.UUID(task_id))
        log_ = sorted(logs.get(task_id, []))
        terminals = [type_ for _, type_ in log_ if type_ in TERMINAL]
        if status not in TERMINAL:
            found[task_id] = f"status {status}"
        elif [seq for seq, _ in log_] != list(range(1, len(log_) + 1)):
            found[task_id] = "gap or duplicate in the event log"
        elif terminals != [status] or log_[-1][1] != status:
            found[task_id] = f"terminal events {terminals} for status {status}"
    return found


def orphans_after(service: harness.Service, grace: float = 12.0) -> int:
    """Tesseract processes of the service still alive `grace` s after every task ended
    (the sweeper kills orphans every 5 s): each one is an orphan."""
    deadline = time.monotonic() + grace
    while harness.tesseract_pids(str(service.tesseract_tmp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(harness.tesseract_pids(str(service.tesseract_tmp)))


def new_task_seconds(service: harness.Service, timeout: float = 90) -> float | None:
    """Workers take new work: a one-page OCR task submitted now, seconds until completed (None: not)."""
    from ocr.models import OCRTask
    from tests import factories

    started = time.monotonic()
    try:
        _, body = service.submit_pdf(factories.image_pdf(1, dpi=100), {"dpi": 150, "text_layer": "ocr"})
        wait_terminal([body["task_id"]], timeout)
    except Exception as exc:
        log("chaos: the new task did not complete: %s", exc)
        return None
    if OCRTask.objects.get(pk=body["task_id"]).status != "completed":
        return None
    return time.monotonic() - started


def stream_problems(streams: list[FollowedStream], timeout: float = 60) -> dict[str, list[str]]:
    for stream in streams:
        stream.finished.wait(max(0.0, timeout))
    return {stream.name: stream.problems() for stream in streams if stream.problems()}


def aftermath(service: harness.Service, task_ids: list[str], streams: list[FollowedStream], timeout: float) -> dict:
    """The checks every scenario ends with: one terminal state per task (database and every
    stream), no orphan tesseract, and a new task still completes."""
    settle_seconds = wait_terminal(task_ids, timeout)
    wrong_tasks = task_problems(task_ids)
    wrong_streams = stream_problems(streams)
    for name, problem in [*wrong_tasks.items(), *wrong_streams.items()][:10]:
        log("chaos: PROBLEM %s: %s", name, problem)
    return {
        "settle_seconds": round(settle_seconds, 1),
        "tasks_without_one_terminal_state": len(wrong_tasks),
        "streams": len(streams),
        "stream_reconnects": sum(stream.reconnects for stream in streams),
        "streams_with_gap_duplicate_or_not_one_terminal": len(wrong_streams),
        "orphan_tesseracts": orphans_after(service),
        "new_task_completed_seconds": new_task_seconds(service),
    }


def aftermath_rows(figures: dict) -> list:
    from results import Row, verdict

    new_task = figures["new_task_completed_seconds"]
    return [
        Row.none("tasks with != 1 terminal state (database)", figures["tasks_without_one_terminal_state"]),
        Row.none(
            f"streams (of {figures['streams']}) with a gap, a duplicate or != 1 terminal event",
            figures["streams_with_gap_duplicate_or_not_one_terminal"],
        ),
        Row("stream reconnects", str(figures["stream_reconnects"]), "", "info"),
        Row.none("orphan tesseracts after the tasks ended", figures["orphan_tesseracts"]),
        Row(
            "a new task afterwards: completed in",
            "not completed" if new_task is None else f"{new_task:.1f} s",
            "completes",
            verdict(new_task is not None),
        ),
    ]


def completed_row(figure: str, statuses: dict, total: int):
    from results import Row, verdict

    done = statuses.get("completed", 0)
    return Row(figure, f"{done} of {total}", str(total), verdict(done == total))


def is_unwritable(folder: Path) -> bool:
    """True when creating a file in `folder` fails, as root too."""
    probe = folder / f".chaos-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError:
        return True
    probe.unlink()
    return False
