"""A long document cancelled: the cancel's answer against the pages its task has done.

A cancel's answer must not wait for work that grows with the document. It used to read the text
of every page done and write the partial result before answering; now the worker stores that
result once it has stopped, and reads assemble it from the pages meanwhile (progress.result_of).

Tasks are rows, written straight to the service's database: `processing`, with a worker's pid,
and 0, 100 or 500 (`--pages`) pages recorded of about 1,800 characters each (a page of text).
Each is cancelled once through daphne (POST /v1/ocr/tasks/{id}/cancel, one client, one after the
other, `--cancels` per size), on an idle service: no worker runs them, so the partial result is
checked as a client reads it (a GET after each size's last cancel shows every page done).

Target: the answer's p50 with the most pages at most 1.5x its p50 with none.

Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import harness
import results
from harness import log
from results import Row, p50_p95, verdict

PAGE_TEXT = ("The quick brown fox jumps over the lazy dog, page after page of a long report. " * 23)[:1800]


def running_task(pages: int):
    """A processing PDF task of `pages` + 1 pages with `pages` recorded, as a worker leaves it."""
    from django.utils import timezone

    from ocr.models import OCRPage, OCRTask

    task = OCRTask.objects.create(
        task_type="pdf",
        status="processing",
        total_pages=pages + 1,
        processed_pages=pages,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
        attempt=1,
        event_seq=2,
        worker_host="elsewhere",
        worker_pid=os.getpid(),  # no OCR process of its own: no node's killer finds one to kill
    )
    OCRPage.objects.bulk_create(
        OCRPage(task=task, page_number=n, text=PAGE_TEXT, source="ocr", processing_time=1.0, extra={"words": 300})
        for n in range(1, pages + 1)
    )
    return task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", default="0,100,500", help="pages done, comma-separated, ascending")
    parser.add_argument("--cancels", type=int, default=15, help="cancels per size")
    args = parser.parse_args()
    sizes = [int(size) for size in args.pages.split(",")]
    figures: dict = {}
    with harness.Service(http=True) as service:
        for size in sizes:
            tasks = [running_task(size) for _ in range(args.cancels)]
            harness.settle_database()
            answers = []
            for task in tasks:
                time.sleep(0.1)  # each cancel alone (the nodes' killers look for its processes for a while)
                started = time.perf_counter()
                code, body = harness.http_request(
                    service.base_url, "POST", f"/v1/ocr/tasks/{task.pk}/cancel", b'{"reason": "long document"}'
                )
                answers.append((time.perf_counter() - started) * 1000)
                if code != 200 or body.get("status") != "cancelled":
                    raise RuntimeError(f"cancel of {task.pk}: {code} {body}")
            code, shown = harness.http_request(service.base_url, "GET", f"/v1/ocr/tasks/{tasks[-1].pk}")
            kept = len(((shown.get("result") or {}) if code == 200 else {}).get("results", []))
            if kept != size:
                raise RuntimeError(f"task {tasks[-1].pk}: {kept} pages in the result read after the cancel, not {size}")
            figures[size] = harness.summary_ms(answers)
            log("%d pages done: cancel answered in p50 %.1f ms", size, figures[size]["p50"])
    growth = figures[sizes[-1]]["p50"] / figures[sizes[0]]["p50"]
    print(json.dumps({"cancel_response_ms": figures, "growth": round(growth, 2), "code": harness.code_version()}))
    rows = [Row(f"{size} pages done: cancel answer p50 / p95", p50_p95(figure)) for size, figure in figures.items()]
    rows.append(
        Row(
            f"answer p50 with {sizes[-1]} / with {sizes[0]} pages done",
            f"{growth:.2f}x",
            "<= 1.5x",
            verdict(growth <= 1.5),
        )
    )
    results.write_section(
        f"A long document cancelled: the answer against the pages done ({results.database_name()})",
        rows,
        notes="Processing tasks written straight to the database with their pages (about 1,800 characters "
        "each); each cancelled once through daphne from loopback, one at a time, on an idle service.",
    )


if __name__ == "__main__":
    main()
