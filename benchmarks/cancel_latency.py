"""Cancel latency: how fast a cancel over HTTP stops a task's tesseract mid-page.

The queue is kept full (at least `--backlog` tasks more than workers, each a `slow_pdf` of
`--task-pages` pages OCR'd at 600 dpi, several seconds per page). Each round waits until a
`processing` task has a tesseract running (its PIDs are the tesseract processes whose parent
is the task's `worker_pid`, the qcluster worker process), lets it run a random 50-1000 ms
into the page, reads its tesseract PIDs again and POSTs /v1/ocr/tasks/{id}/cancel. A thread
waits on a pidfd of each of those PIDs from just before the request (see PidWatch).

Figures (milliseconds, p50/p95/p99/max over `--cancels` rounds):
- `cancel_response`: the cancel request's round trip through daphne (a);
- `kill_after_cancelled_at`: the task's `cancelled_at` (written in the cancel transaction,
  with the `cancelled` TaskEvent) -> the last of its tesseract processes dead (killed, reaped
  or not), on the same wall clock (b);
- `kill_after_response`: the 200 received -> the same moment (negative when the worker killed
  tesseract before the response arrived);
- `reaped_after_cancelled_at`: the same, until the worker also reaped them (gone from /proc).
- `gone_after_request_sent_ms`: the request leaving the client -> every tesseract of the task
  dead: what a user sees (targets: p50 < 25 ms, max < 50 ms; response p50 < 15 ms).
Every attempt is counted: answers other than a fresh 200 are reported in `dropped`, and rounds
whose tesseract had ended on its own before the request left in `ended_before_request` (they
are not latencies, and are no longer mixed into the percentiles as negative times).
Each round also checks that the `cancelled` event is stored and that no page of the task was
recorded after `cancelled_at`.

Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import sys
import threading
import time

import harness
import results
from harness import log
from results import Row, verdict


class PidWatch(threading.Thread):
    """Records when each of `pids` is dead (has exited: a zombie or gone) and gone (reaped).

    Death is waited for on a pidfd of each process (readable once it has exited), so the time
    is the kernel's wake-up, not a polling step, and the watch takes no CPU from the service
    meanwhile; only then is /proc polled every `interval` s until the worker has reaped them."""

    def __init__(self, pids: list[int], interval: float = 0.001, timeout: float = 10) -> None:
        super().__init__(name="pid-watch", daemon=True)
        self.pids = pids
        self.interval = interval
        self.timeout = timeout
        self.dead_at: dict[int, float] = {}
        self.gone_at: dict[int, float] = {}

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        poller = select.poll()
        pidfds: dict[int, int] = {}
        for pid in self.pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self.dead_at[pid] = self.gone_at[pid] = time.time()
                continue
            pidfds[fd] = pid
            poller.register(fd, select.POLLIN)
        try:
            while len(self.dead_at) < len(self.pids) and time.monotonic() < deadline:
                for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                    self.dead_at.setdefault(pidfds[fd], time.time())
                    poller.unregister(fd)
        finally:
            for fd in pidfds:
                os.close(fd)
        while len(self.gone_at) < len(self.pids) and time.monotonic() < deadline:
            for pid in self.pids:
                if pid not in self.gone_at and not os.path.exists(f"/proc/{pid}"):
                    self.gone_at[pid] = time.time()
            time.sleep(self.interval)


def task_tesseracts(prefix: str, worker_pid: int | None) -> list[int]:
    """Live tesseract processes of the task run by the worker process `worker_pid`."""
    if not worker_pid:
        return []
    return [pid for pid in harness.tesseract_pids(prefix) if harness.proc_ppid(pid) == worker_pid]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cancels", type=int, default=30)
    parser.add_argument("--task-pages", type=int, default=4)
    parser.add_argument("--dpi", type=int, default=600)
    parser.add_argument("--backlog", type=int, default=2, help="pending tasks kept beyond the workers")
    parser.add_argument("--min-delay", type=float, default=0.05, help="seconds of tesseract before the cancel")
    parser.add_argument("--max-delay", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--worker-node",
        metavar="NAME",
        help="across nodes: the tasks run on a worker node of this name (own OCR_NODE_NAME, slot folder "
        "and sweeper, no web) and the cancels go to the web node (daphne alone, as OCR_ROLE=web); on "
        "this one host",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)

    from tests import factories

    pdf = factories.slow_pdf(args.task_pages)
    request = {"text_layer": "ocr", "dpi": args.dpi}
    response_ms: list[float] = []
    kill_ms: list[float] = []
    kill_after_response_ms: list[float] = []
    reaped_ms: list[float] = []
    pages_after_cancel = 0
    missing_events = 0
    tesseracts_per_cancel: list[int] = []

    with harness.Service(http=True) as service:
        from ocr.models import OCRPage, OCRTask, TaskEvent

        if args.worker_node:  # this node becomes a web node (daphne alone), the worker node runs the tasks
            service.add_worker_node(args.worker_node)
            service.web_only()
        prefix = str(service.tesseract_tmp)
        meter = service.cpu_meter()
        workers = service.workers
        submitted: list[str] = []

        def fill_queue() -> None:
            active = OCRTask.objects.filter(pk__in=submitted, status__in=("pending", "processing")).count()
            for _ in range(workers + args.backlog - active):
                _, body = service.submit_pdf(pdf, request)
                submitted.append(body["task_id"])

        cancels_done = 0
        attempts = ended_before_request = 0
        dropped: dict[str, int] = {}
        gone_after_sent_ms: list[float] = []
        round_started = time.monotonic()
        while cancels_done < args.cancels:
            fill_queue()
            if time.monotonic() - round_started > 120:
                raise RuntimeError("no task with a running tesseract within 120 s")
            # A processing task with a tesseract running mid-page.
            candidates = OCRTask.objects.filter(pk__in=submitted, status="processing").values_list("pk", "worker_pid")
            chosen = None
            for task_id, worker_pid in candidates:
                if task_tesseracts(prefix, worker_pid):
                    chosen = (str(task_id), worker_pid)
                    break
            if chosen is None:
                time.sleep(0.02)
                continue
            task_id, worker_pid = chosen
            time.sleep(rng.uniform(args.min_delay, args.max_delay))
            pids = task_tesseracts(prefix, worker_pid)
            status = OCRTask.objects.filter(pk=task_id).values_list("status", flat=True).first()
            if not pids or status != "processing":
                continue  # the page (or the task) ended meanwhile: pick again
            watch = PidWatch(pids)
            watch.start()
            attempts += 1
            sent = time.perf_counter()
            sent_wall = time.time()
            code, body = harness.http_request(
                service.base_url,
                "POST",
                f"/v1/ocr/tasks/{task_id}/cancel",
                json.dumps({"reason": "cancel latency benchmark"}).encode(),
                {"Content-Type": "application/json"},
            )
            answered_perf = time.perf_counter()
            answered_wall = time.time()
            if code != 200 or body.get("status") != "cancelled" or body.get("message") == "Task was already cancelled":
                # counted and reported, never silently replaced
                outcome = f"{code} {body.get('message') or body.get('detail') or ''}".strip()
                dropped[outcome] = dropped.get(outcome, 0) + 1
                log("cancel of %s answered %s %s: not a fresh cancel, reported as dropped", task_id, code, body)
                watch.join()
                continue
            watch.join()
            task = OCRTask.objects.get(pk=task_id)
            cancelled_at = task.cancelled_at.timestamp()
            if len(watch.dead_at) < len(pids):
                raise RuntimeError(f"task {task_id}: tesseract {pids} still running 10 s after the cancel")
            last_dead = max(watch.dead_at.values())
            last_gone = max(watch.gone_at.values())
            if last_dead < sent_wall:
                # the page ended on its own before the request left: not a cancel latency
                ended_before_request += 1
                log("task %s: its tesseract had ended before the cancel was sent; reported apart", task_id[:8])
                continue
            gone_after_sent_ms.append((last_dead - sent_wall) * 1000)
            response_ms.append((answered_perf - sent) * 1000)
            kill_ms.append((last_dead - cancelled_at) * 1000)
            kill_after_response_ms.append((last_dead - answered_wall) * 1000)
            reaped_ms.append((last_gone - cancelled_at) * 1000)
            tesseracts_per_cancel.append(len(pids))
            if not TaskEvent.objects.filter(task_id=task_id, type="cancelled").exists():
                missing_events += 1
            late = OCRPage.objects.filter(task_id=task_id, created_at__gt=task.cancelled_at).count()
            pages_after_cancel += late
            cancels_done += 1
            round_started = time.monotonic()
            log(
                "cancel %d/%d: task %s, %d tesseract, response %.1f ms, killed %.1f ms after cancelled_at",
                cancels_done,
                args.cancels,
                task_id[:8],
                len(pids),
                response_ms[-1],
                kill_ms[-1],
            )

        # Stop the remaining tasks so that the workers stop at once.
        for task_id in OCRTask.objects.filter(pk__in=submitted, status__in=("pending", "processing")).values_list(
            "pk", flat=True
        ):
            harness.http_request(service.base_url, "POST", f"/v1/ocr/tasks/{task_id}/cancel", b"{}")
        database = "postgresql" if service.pg_name else "sqlite"
        started = OCRTask.objects.filter(pk__in=submitted, started_at__isnull=False)
        elsewhere = started.exclude(worker_host=args.worker_node).count() if args.worker_node else 0
        foreign_cpu_cores = round(meter.foreign_cores(), 2)
        from django.conf import settings

        poll_seconds = settings.OCR_CANCEL_POLL_SECONDS

    kill = harness.summary_ms(kill_ms)
    gone = harness.summary_ms(gone_after_sent_ms)
    response = harness.summary_ms(response_ms)
    result = {
        "cancels": len(kill_ms),
        "attempts": attempts,
        "dropped": dropped,
        "ended_before_request": ended_before_request,
        "gone_after_request_sent_ms": gone,
        "dpi": args.dpi,
        "workers": workers,
        "code": harness.code_version(),
        "database": database,
        "foreign_cpu_cores": foreign_cpu_cores,
        "cancel_response_ms": response,
        "kill_after_cancelled_at_ms": kill,
        "kill_after_response_ms": harness.summary_ms(kill_after_response_ms),
        "reaped_after_cancelled_at_ms": harness.summary_ms(reaped_ms),
        "tesseracts_per_cancel": {str(n): tesseracts_per_cancel.count(n) for n in sorted(set(tesseracts_per_cancel))},
        "cancelled_events_missing": missing_events,
        "pages_recorded_after_cancel": pages_after_cancel,
        "service_cancel_poll_seconds": poll_seconds,
        "targets": {
            "gone_p50_lt_25ms": gone["p50"] is not None and gone["p50"] < 25,
            "gone_max_lt_50ms": gone["max"] is not None and gone["max"] < 50,
            "response_p50_lt_15ms": response["p50"] is not None and response["p50"] < 15,
        },
    }
    print(json.dumps(result))

    def ms(summary: dict, key: str) -> str:
        return "-" if summary[key] is None else f"{summary[key]} ms"

    def below(summary: dict, key: str, bound: float) -> bool:
        return summary[key] is not None and summary[key] < bound

    where = "across nodes, " if args.worker_node else ""
    results.write_section(
        f"Cancel latency ({where}{'PostgreSQL' if database == 'postgresql' else 'SQLite'}, full queue)",
        [
            Row(
                "cancel accepted (cancelled_at) -> every tesseract of the task dead, p50 / p99",
                f"{ms(kill, 'p50')} / {ms(kill, 'p99')}",
                "p99 < 25 ms",
                verdict(below(kill, "p99", 25)),
            ),
            Row(
                "request sent -> every tesseract dead, p50 / max",
                f"{ms(gone, 'p50')} / {ms(gone, 'max')}",
                "p50 < 25 ms, max < 50 ms",
                verdict(below(gone, "p50", 25) and below(gone, "max", 50)),
            ),
            Row(
                "cancel response, p50 / p99",
                f"{ms(response, 'p50')} / {ms(response, 'p99')}",
                "p50 < 15 ms",
                verdict(below(response, "p50", 15)),
            ),
            Row(
                "cancels measured / dropped / page ended first",
                f"{len(kill_ms)} / {sum(dropped.values())} / {ended_before_request}",
                "",
                verdict(None),
            ),
            *(
                [Row("tasks started on another node than the worker node", str(elsewhere), "0", verdict(not elsewhere))]
                if args.worker_node
                else []
            ),
            Row(
                "cancelled events missing / pages recorded after the cancel",
                f"{missing_events} / {pages_after_cancel}",
                "0 / 0",
                verdict(missing_events == 0 and pages_after_cancel == 0),
            ),
        ],
        notes=(
            f"Web node (daphne) answers the cancel; the tasks run on worker node {args.worker_node!r} "
            "(its own OCR_NODE_NAME and slot folder, and its sweeper; the web node runs daphne alone, "
            "as OCR_ROLE=web does; the nodes share only PostgreSQL and Redis, here on one host). "
            if args.worker_node
            else ""
        )
        + f"{workers} workers, a backlog of {args.backlog} pending tasks, pages OCR'd at {args.dpi} dpi; "
        f"other programs used {foreign_cpu_cores} cores meanwhile.",
    )


if __name__ == "__main__":
    sys.exit(main())
