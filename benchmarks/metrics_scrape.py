"""A long history: what a Prometheus scrape of /metrics costs as finished tasks and their pages
pile up (#11 defect 7: the cost must not grow with history).

Finished tasks are rows only (written straight to the service's database, ended two days ago,
`--pages` pages each, a tenth of them cancelled mid-task), added until each `--sizes` count is
stored; at each, /metrics is scraped `--scrapes` times through daphne from loopback (allowed by
default). The first scrape after a size is built is reported apart: it adds up the history the
service has not seen yet (ocr/rollup.py), once.

Target: the scrape's p50 with the longest history at most 2x its p50 with the shortest.

Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import time
from datetime import timedelta
from urllib.parse import urlsplit

import harness
import results
from harness import log
from results import Row, verdict


def build_history(tasks: int, pages: int, rng: random.Random) -> None:
    """Add finished tasks (and their pages) until `tasks` are stored."""
    from django.db import connection
    from django.utils import timezone

    from ocr.models import OCRPage, OCRTask

    then = timezone.now() - timedelta(days=2)
    missing = tasks - OCRTask.objects.count()
    for start in range(0, missing, 2000):
        made = OCRTask.objects.bulk_create(
            OCRTask(
                task_type="pdf",
                worker_host=rng.choice(["node-a", "node-b"]),
                total_pages=pages,
                processed_pages=pages,
                started_at=then - timedelta(seconds=30),
                **(
                    {"status": "cancelled", "cancelled_at": then, "cancelled_by": "user", "cancellation_reason": "x"}
                    if rng.random() < 0.1
                    else {"status": "completed", "completed_at": then}
                ),
            )
            for _ in range(min(2000, missing - start))
        )
        OCRPage.objects.bulk_create(
            OCRPage(task=task, page_number=n, text="page text", processing_time=rng.uniform(0.2, 6))
            for task in made
            for n in range(1, pages + 1)
        )
    OCRTask.objects.filter(created_at__gt=then).update(created_at=then)
    OCRPage.objects.filter(created_at__gt=then).update(created_at=then)
    if connection.vendor == "postgresql":  # as autovacuum does within a minute of many inserts
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


def timed_scrapes(base_url: str, count: int) -> list[float]:
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        times.append((time.perf_counter() - started) * 1000)
        if response.status != 200 or b"ocr_tasks_total" not in body:
            raise RuntimeError(f"/metrics: {response.status} {body[:200]!r}")
    connection.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="finished tasks, comma-separated, ascending")
    parser.add_argument("--pages", type=int, default=4, help="pages per task")
    parser.add_argument("--scrapes", type=int, default=15)
    args = parser.parse_args()
    rng = random.Random(1)
    sizes = [int(size) for size in args.sizes.split(",")]
    figures: dict = {}
    with harness.Service(http=True) as service:
        for size in sizes:
            started = time.monotonic()
            build_history(size, args.pages, rng)
            log("%d finished tasks stored in %.0f s", size, time.monotonic() - started)
            first = timed_scrapes(service.base_url, 1)[0]
            scrapes = timed_scrapes(service.base_url, args.scrapes)
            figures[size] = {"pages": size * args.pages, "first_ms": round(first, 1), **harness.summary_ms(scrapes)}
            log("%d finished tasks: first scrape %.0f ms, then p50 %.1f ms", size, first, figures[size]["p50"])
    print(json.dumps(figures, indent=2))
    rows = []
    for size, figure in figures.items():
        rows.append(
            Row(
                f"{size} finished tasks ({figure['pages']} pages): scrape p50 / p95 (the first)",
                f"{figure['p50']:.1f} / {figure['p95']:.1f} ms ({figure['first_ms']:.0f} ms)",
            )
        )
    growth = figures[sizes[-1]]["p50"] / figures[sizes[0]]["p50"]
    rows.append(
        Row(
            f"scrape p50 at {sizes[-1]} / at {sizes[0]} finished tasks", f"{growth:.2f}x", "<= 2x", verdict(growth <= 2)
        )
    )
    database = "PostgreSQL" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "SQLite"
    results.write_section(
        f"A long history: a scrape of /metrics ({database})",
        rows,
        notes="Finished tasks written straight to the database, ended two days ago; one client, one keep-alive "
        "connection through daphne, from loopback.",
    )


if __name__ == "__main__":
    main()
