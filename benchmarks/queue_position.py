"""A long queue: the cost of a GET of a pending task (its `queue_position`) and of a worker's
pick of the next task, against the number of pending tasks.

The pending tasks are rows only (written straight to the service's database, no job on the
queue), so the workers stay idle and the queue stays as built: `--clients` users and anonymous
sessions, the three priorities, two tasks of each of a few clients processing, and `--history`
tasks finished two days ago (a service's past: the start estimate reads the last hour only). For each queue
length a task in the middle of the queue is read `--gets` times over one keep-alive connection
through daphne, and the start order a worker's pick reads (`scheduling.start_order`, 8
candidates) is read as many times in this process. A finished task's GET is the reference:
what a GET costs when the queue plays no part.

Target (a GET's cost must not grow with the queue): the GET's p50 at 5000 pending is at most
2x its p50 at 100 pending.

Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import harness
import results
from harness import log, timed_gets
from results import Row, p50_p95, verdict

PICK_CANDIDATES = 8


def build_queue(pending: int, clients: int, rng: random.Random) -> None:
    """Add pending rows until `pending` wait, spread over users and anonymous sessions."""
    from django.contrib.auth.models import User

    from ocr.models import OCRTask

    users = list(User.objects.filter(username__startswith="queue-"))
    while len(users) < clients // 2:
        users.append(User.objects.create_user(f"queue-{len(users)}"))
    owners = [{"owner": user} for user in users] + [{"session_key": f"s{n}"} for n in range(clients - len(users))]
    missing = pending - OCRTask.objects.filter(status="pending").count()
    OCRTask.objects.bulk_create(
        [
            OCRTask(task_type="pdf", priority=rng.choice(["high", "normal", "normal", "low"]), **rng.choice(owners))
            for _ in range(missing)
        ],
        batch_size=1000,
    )
    if not OCRTask.objects.filter(status="processing").exists():
        OCRTask.objects.bulk_create(
            [OCRTask(task_type="pdf", status="processing", **owner) for owner in owners[:3] for _ in range(2)]
        )


def build_history(count: int) -> None:
    """`count` tasks finished two days ago."""
    from datetime import timedelta

    from django.utils import timezone

    from ocr.models import OCRTask

    then = timezone.now() - timedelta(days=2)
    OCRTask.objects.bulk_create(
        [OCRTask(task_type="pdf", status="completed", started_at=then, completed_at=then) for _ in range(count)],
        batch_size=2000,
    )


def timed_picks(count: int) -> list[float]:
    from ocr import scheduling

    times = []
    for _ in range(count):
        started = time.perf_counter()
        scheduling.start_order(limit=PICK_CANDIDATES)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000", help="queue lengths, comma-separated, ascending")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--gets", type=int, default=100)
    parser.add_argument("--history", type=int, default=50000)
    args = parser.parse_args()
    rng = random.Random(1)
    sizes = [int(size) for size in args.sizes.split(",")]
    # the sweeper must not re-queue the rows meanwhile (they have no job)
    with harness.Service(http=True, extra_env={"OCR_PENDING_REQUEUE_SECONDS": "3600"}) as service:
        from ocr import scheduling
        from ocr.models import OCRTask

        finished = OCRTask.objects.create(task_type="pdf", status="completed", total_pages=1, processed_pages=1)
        build_history(args.history)
        timed_gets(service.base_url, f"/v1/ocr/tasks/{finished.pk}", 10)  # warm-up
        reference = timed_gets(service.base_url, f"/v1/ocr/tasks/{finished.pk}", args.gets)
        figures: dict = {"finished_get_ms": harness.summary_ms(reference), "queues": {}}
        for size in sizes:
            build_queue(size, args.clients, rng)
            harness.settle_database()
            order = scheduling.start_order()
            anonymous = set(OCRTask.objects.filter(status="pending", owner__isnull=True).values_list("id", flat=True))
            # the anonymous task nearest the middle of the queue (this client reads without a login)
            place = min((n for n, pk in enumerate(order) if pk in anonymous), key=lambda n: abs(n - size // 2))
            middle = OCRTask.objects.get(pk=order[place])
            position = scheduling.queue_place(middle).position
            gets = timed_gets(service.base_url, f"/v1/ocr/tasks/{middle.pk}", args.gets)
            picks = timed_picks(args.gets)
            figures["queues"][size] = {
                "position": position,
                "pending_get_ms": harness.summary_ms(gets),
                "pick_ms": harness.summary_ms(picks),
            }
            log("%d pending: GET p50 %.1f ms, pick p50 %.1f ms", size, *map(statistics.median, (gets, picks)))
    print(json.dumps(figures, indent=2))
    finished_p50 = figures["finished_get_ms"]["p50"]
    shortest = figures["queues"][sizes[0]]["pending_get_ms"]["p50"]
    rows = [Row("GET of a finished task, p50 / p95", p50_p95(figures["finished_get_ms"]), "-", "info")]
    for size, queue in figures["queues"].items():
        p50 = queue["pending_get_ms"]["p50"]
        rows.append(
            Row(
                f"{size} pending: GET of the task at position {queue['position']}, p50 / p95 (x finished)",
                f"{p50_p95(queue['pending_get_ms'])} ({p50 / finished_p50:.2f}x)",
            )
        )
        rows.append(Row(f"{size} pending: a worker's pick of the next task, p50 / p95", p50_p95(queue["pick_ms"])))
    longest = figures["queues"][sizes[-1]]["pending_get_ms"]["p50"]
    rows.append(
        Row(
            f"GET of a pending task, p50 at {sizes[-1]} pending / at {sizes[0]} pending",
            f"{longest / shortest:.2f}x",
            "<= 2x",
            verdict(longest / shortest <= 2),
        )
    )
    results.write_section(
        f"A long queue: GET of a pending task and a worker's pick ({results.database_name()})",
        rows,
        notes="Pending rows written straight to the database (no jobs: the workers stay idle); one client, "
        "one keep-alive connection through daphne; picks timed in the benchmark process.",
    )


if __name__ == "__main__":
    main()
