"""A long history: what a Prometheus scrape of /metrics, and the first and a deep page of the
task list of the client that submitted most of them, cost as finished tasks and their pages pile
up (#11 defect 7: the cost must not grow with history).

Finished tasks are rows only (written straight to the service's database, ended two days ago,
`--pages` pages each, a tenth of them cancelled mid-task, nine in ten of one user), added until
each `--sizes` count is stored; at each, /metrics is scraped `--scrapes` times through daphne from
loopback (allowed by default), and that user lists its tasks as many times (token auth). The
first scrape after a size is built is reported apart: it adds up the history the service has not
seen yet (ocr/rollup.py), once. Rows written behind the service's back, ended in the past, are
not what a running service's rollup can meet (its tasks end now and are added up minutes later):
after each size the rollup row is dropped, as on a service first started on this database, and
every scrape must count every stored task (else the run fails). Without that, a size built
within FOLD_EVERY of the previous size's fold left all its pages unfolded and its tasks uncounted.

Targets: with the longest history, a scrape's p50 and the first list page's p50 at most 2x
theirs with the shortest.

Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import timedelta

import harness
import results
from harness import log, timed_gets
from results import Row, p50_p95, verdict


def build_history(tasks: int, pages: int, rng: random.Random, owners: list) -> None:
    """Add finished tasks (and their pages) until `tasks` are stored, nine in ten of owners[0];
    the metrics rollup starts again from nothing."""
    from django.utils import timezone

    from ocr.models import MetricsRollup, OCRPage, OCRTask

    then = timezone.now() - timedelta(days=2)
    missing = tasks - OCRTask.objects.count()
    for start in range(0, missing, 2000):
        made = OCRTask.objects.bulk_create(
            OCRTask(
                task_type="pdf",
                owner=owners[0] if rng.random() < 0.9 else rng.choice(owners[1:]),
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
    MetricsRollup.objects.all().delete()
    harness.settle_database()


def tasks_counted(base_url: str) -> int:
    """The tasks a scrape of /metrics counts (ocr_tasks_total over every label)."""
    status, text = harness.http_request(base_url, "GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"GET /metrics: {status} {text[:200]!r}")
    return round(sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("ocr_tasks_total{")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="finished tasks, comma-separated, ascending")
    parser.add_argument("--pages", type=int, default=4, help="pages per task")
    parser.add_argument("--scrapes", type=int, default=25)
    args = parser.parse_args()
    rng = random.Random(1)
    sizes = [int(size) for size in args.sizes.split(",")]
    figures: dict = {}
    with harness.Service(http=True) as service:
        from django.contrib.auth.models import User
        from rest_framework.authtoken.models import Token

        owners = [User.objects.create_user(f"history-{n}") for n in range(5)]
        auth = {"Authorization": f"Token {Token.objects.create(user=owners[0]).key}"}
        for size in sizes:
            started = time.monotonic()
            build_history(size, args.pages, rng, owners)
            log("%d finished tasks stored in %.0f s", size, time.monotonic() - started)
            first = timed_gets(service.base_url, "/metrics", 1, expect=b"ocr_tasks_total")[0]
            scrapes = timed_gets(service.base_url, "/metrics", args.scrapes, expect=b"ocr_tasks_total")
            if (counted := tasks_counted(service.base_url)) != size:
                raise RuntimeError(f"/metrics counts {counted} tasks of the {size} stored")
            deep = f"/v1/ocr/tasks?page={size * 9 // 10 // 20 // 2}"  # half way down the list
            figures[size] = {
                "pages": size * args.pages,
                "first_ms": round(first, 1),
                "scrape": harness.summary_ms(scrapes),
                "list_first_page": harness.summary_ms(
                    timed_gets(service.base_url, "/v1/ocr/tasks", args.scrapes, headers=auth)
                ),
                "list_deep_page": harness.summary_ms(timed_gets(service.base_url, deep, args.scrapes, headers=auth)),
            }
            log(
                "%d finished tasks: first scrape %.0f ms, then p50 %.1f ms; list p50 %.1f ms (page 1), %.1f ms (deep)",
                size,
                first,
                *(figures[size][name]["p50"] for name in ("scrape", "list_first_page", "list_deep_page")),
            )
    print(json.dumps(figures, indent=2))
    rows = []
    for size, figure in figures.items():
        rows += [
            Row(
                f"{size} finished tasks ({figure['pages']} pages): scrape p50 / p95 (the first)",
                f"{p50_p95(figure['scrape'])} ({figure['first_ms']:.0f} ms)",
            ),
            Row(
                f"{size} finished tasks: the heavy client's list, first page, p50 / p95",
                p50_p95(figure["list_first_page"]),
            ),
            Row(f"{size} finished tasks: the same list half way down, p50 / p95", p50_p95(figure["list_deep_page"])),
        ]
    for name, what in (("scrape", "scrape"), ("list_first_page", "first list page")):
        growth = figures[sizes[-1]][name]["p50"] / figures[sizes[0]][name]["p50"]
        rows.append(
            Row(
                f"{what} p50 at {sizes[-1]} / at {sizes[0]} finished tasks",
                f"{growth:.2f}x",
                "<= 2x",
                verdict(growth <= 2),
            )
        )
    results.write_section(
        f"A long history: a scrape of /metrics and a client's task list ({results.database_name()})",
        rows,
        notes="Finished tasks written straight to the database, ended two days ago; one client, one keep-alive "
        "connection through daphne, from loopback; lists of 20 tasks a page.",
    )


if __name__ == "__main__":
    main()
