"""Bulk cancel: one POST /v1/ocr/tasks/cancel of `--tasks` running and pending tasks.

Submits `--tasks` `slow_pdf` tasks (600 dpi OCR, seconds per page) to an isolated service
(benchmarks/harness.py), waits until every worker is mid-page (a tesseract running per worker
slot), then cancels them all in one call. A thread polls the service's tesseract processes every
1 ms from just before the request.

Figures: `response_ms` (the bulk call's round trip through daphne), `last_tesseract_gone_ms`
(the call's start -> no tesseract of the service left, reaped), the lists' sizes, and checks:
every task `cancelled` with exactly one `cancelled` event, no page recorded after `cancelled_at`.
Then the jobs the cancelled pending tasks left on the broker's list: how long the cluster takes
to drain them, and its CPU per job (each finds no pending task and ends).

Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import harness
import results
from harness import log
from results import Row, verdict


def drain(service: harness.Service, timeout: float = 300) -> tuple[int, float, float | None]:
    """The jobs of the cancelled pending tasks stay on the broker's list; each, taken by a
    worker, finds no pending task and ends. Measured from now (their tesseracts reaped):
    (jobs left, seconds until none is, qcluster CPU ms per job, its reaped children counted)."""
    from ocr import queue

    def cluster_cpu() -> float:
        seconds = service.cpu_seconds()
        return seconds["qcluster"] + seconds["tesseract"]  # "tesseract": reaped children (none run now)

    jobs, cpu_before, started = queue.queue_depth() or 0, cluster_cpu(), time.monotonic()
    deadline = started + timeout
    while queue.queue_depth():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cancelled tasks' jobs were not drained within {timeout} s")
        time.sleep(0.02)
    drain_seconds = time.monotonic() - started
    time.sleep(0.5)  # the last job taken ends
    cpu_ms = (cluster_cpu() - cpu_before) * 1000
    return jobs, round(drain_seconds, 2), round(cpu_ms / jobs, 2) if jobs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--task-pages", type=int, default=2)
    parser.add_argument("--dpi", type=int, default=600)
    args = parser.parse_args()

    from tests import factories

    pdf = factories.slow_pdf(args.task_pages)
    request = {"text_layer": "ocr", "dpi": args.dpi}
    with harness.Service(http=True) as service:
        from django.db.models import Count, F, Q

        from ocr.models import OCRPage, OCRTask

        prefix = str(service.tesseract_tmp)
        submit_started = time.monotonic()
        ids = [service.submit_pdf(pdf, request)[1]["task_id"] for _ in range(args.tasks)]
        submit_seconds = time.monotonic() - submit_started
        log("submitted %d tasks in %.1f s", len(ids), submit_seconds)
        deadline = time.monotonic() + 120
        while len(harness.tesseract_pids(prefix)) < service.workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start OCR within 120 s")
            time.sleep(0.01)
        time.sleep(0.3)  # mid-page
        statuses_before = dict(
            OCRTask.objects.filter(pk__in=ids).values_list("status").annotate(n=Count("id")).values_list("status", "n")
        )
        gone_at: list[float] = []

        def watch() -> None:
            while harness.tesseract_pids(prefix):
                time.sleep(0.001)
            gone_at.append(time.monotonic())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        code, body = harness.http_request(
            service.base_url,
            "POST",
            "/v1/ocr/tasks/cancel",
            json.dumps({"task_ids": ids, "reason": "bulk benchmark"}).encode(),
            {"Content-Type": "application/json"},
        )
        response_ms = (time.monotonic() - started) * 1000
        watcher.join(30)
        if code != 200:
            raise RuntimeError(f"bulk cancel answered {code}: {body}")
        stale_jobs, drain_seconds, cpu_ms_per_job = drain(service)
        # the checks cover the tasks this call cancelled (some finished while the queue filled)
        tasks = OCRTask.objects.filter(pk__in=body["cancelled"]).annotate(
            cancelled_events=Count("events", filter=Q(events__type="cancelled"))
        )
        wrong_events = tasks.exclude(cancelled_events=1).count()
        not_cancelled = tasks.exclude(status="cancelled").count()
        late_pages = OCRPage.objects.filter(
            task_id__in=body["cancelled"], created_at__gt=F("task__cancelled_at")
        ).count()
        database = "postgresql" if service.pg_name else "sqlite"

    result = {
        "tasks": args.tasks,
        "workers": service.workers,
        "database": database,
        "code": harness.code_version(),
        "statuses_before": statuses_before,
        "submit_seconds": round(submit_seconds, 1),
        "response_ms": round(response_ms, 1),
        "last_tesseract_gone_ms": round((gone_at[0] - started) * 1000, 1) if gone_at else None,
        "cancelled": len(body["cancelled"]),
        "already_finished": len(body["already_finished"]),
        "already_cancelled": len(body["already_cancelled"]),
        "not_cancelled": not_cancelled,
        "tasks_without_exactly_one_cancelled_event": wrong_events,
        "pages_after_cancel": late_pages,
        "stale_jobs": stale_jobs,
        "stale_jobs_drain_seconds": drain_seconds,
        "qcluster_cpu_ms_per_stale_job": cpu_ms_per_job,
    }
    print(json.dumps(result, indent=2))
    checks = not_cancelled + wrong_events + late_pages
    results.write_section(
        "Bulk cancel",
        [
            Row(
                f"one call cancelling {args.tasks} tasks ({statuses_before}): response",
                f"{result['response_ms']} ms",
                "",
                verdict(None),
            ),
            Row(
                "call start -> no tesseract of the service left",
                f"{result['last_tesseract_gone_ms']} ms",
                "",
                verdict(None),
            ),
            Row(
                "cancelled / already finished / already cancelled",
                f"{result['cancelled']} / {result['already_finished']} / {result['already_cancelled']}",
                "",
                verdict(None),
            ),
            Row(
                "jobs of the cancelled tasks left on the queue: drained in, qcluster CPU per job",
                f"{stale_jobs}: {drain_seconds} s, {cpu_ms_per_job} ms",
                "",
                verdict(None),
            ),
            Row.none("tasks not cancelled + without exactly one cancelled event + pages after the cancel", checks),
        ],
    )


if __name__ == "__main__":
    main()
