"""`make chaos`: break the service on purpose and check that no task is lost or doubled.

Five scenarios, each on a fresh isolated service (benchmarks/harness.py: qcluster, sweeper,
daphne, own queue, media, slot dir and database) backed by a private Redis and a private
PostgreSQL cluster on free loopback ports (benchmarks/chaos_env.py); the shared servers on
6379 and 5432 are never touched:

1. mass cancel of 200 running and pending tasks: half in one bulk call, half as single cancels
   from 20 threads at once;
2. kill -9 of a worker process mid-task;
3. Redis restarted (killed, nothing persisted) while WebSocket and SSE streams are open; half of
   the clients also drop their connection and reconnect with `after` / `Last-Event-ID`;
4. PostgreSQL restarted (`pg_ctl stop -m fast`, 3 s down) while tasks run and streams are open;
5. the media folder made unwritable while tasks are submitted and run: `chattr +i` on every
   folder under it, which refuses writes to root too (checked by a probe write).

After each: every task has exactly one terminal state (database and every stream), no tesseract
is left, and a new task completes. Prints one JSON object; writes one RESULTS.md section per
scenario. Recovery is sped up for a bounded run: OCR_WORKER_LOST_SECONDS=6 (heartbeat 1 s) and
OCR_PENDING_REQUEUE_SECONDS=10 instead of 30 s and 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import chaos_env
import harness
from chaos_env import aftermath, aftermath_rows, completed_row, ms, ocr_running, open_streams, pdf, post_cancel, wait
from harness import log
from results import Row, verdict, write_section

SERVICE_ENV = {"OCR_WORKER_LOST_SECONDS": "6", "OCR_HEARTBEAT_SECONDS": "1", "OCR_PENDING_REQUEUE_SECONDS": "10"}
OCR = {"text_layer": "ocr"}


# --- 1. mass cancel -------------------------------------------------------------------------


def mass_cancel(tasks: int = 200) -> tuple[dict, list[Row]]:
    data = pdf(2)  # small uploads, read at 600 dpi: seconds of tesseract per page
    with harness.Service(extra_env=SERVICE_ENV) as service:
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda _: service.submit_pdf(data, {**OCR, "dpi": 600})[1]["task_id"], range(tasks)))
        streams = open_streams(service.base_url, ids[:2] + random.sample(ids[2:], 8))
        wait(lambda: ocr_running(service, service.workers), 120, "every worker reading a page")
        time.sleep(0.3)
        from ocr.models import OCRTask

        before = Counter(OCRTask.objects.filter(pk__in=ids).values_list("status", flat=True))
        bulk_ids, single_ids = ids[0::2], ids[1::2]
        gone_at: list[float] = []

        def watch() -> None:
            while harness.tesseract_pids(str(service.tesseract_tmp)):
                time.sleep(0.002)
            gone_at.append(time.monotonic())

        started = time.monotonic()
        threading.Thread(target=watch, daemon=True).start()
        with ThreadPoolExecutor(21) as pool:
            bulk = pool.submit(post_cancel, service, "/v1/ocr/tasks/cancel", {"task_ids": bulk_ids, "reason": "chaos"})
            singles = list(pool.map(lambda i: post_cancel(service, f"/v1/ocr/tasks/{i}/cancel", {}), single_ids))
            bulk_code, bulk_ms, bulk_body = bulk.result()
        storm_ms = (time.monotonic() - started) * 1000
        figures = aftermath(service, ids, streams, timeout=120)
        final = dict(OCRTask.objects.filter(pk__in=ids).values_list("id", "status"))
    final = {str(task_id): status for task_id, status in final.items()}
    accepted = set(bulk_body.get("cancelled", []) if bulk_code == 200 else [])
    accepted |= {task_id for task_id, (code, _, _) in zip(single_ids, singles, strict=True) if code == 200}
    refused = [task_id for task_id, (code, _, _) in zip(single_ids, singles, strict=True) if code == 400]
    refused += list(bulk_body.get("already_finished", [])) if bulk_code == 200 else []
    codes = Counter([bulk_code] + [code for code, _, _ in singles])
    figures |= {
        "tasks": tasks,
        "statuses_before": dict(before),
        "statuses_after": dict(Counter(final.values())),
        "answers": dict(codes),
        "accepted_not_cancelled": sum(final[task_id] != "cancelled" for task_id in accepted),
        "refused_not_completed": sum(final[task_id] != "completed" for task_id in refused),
        "bulk_cancel_ms": round(bulk_ms, 1),
        "single_cancel_ms": harness.summary_ms([latency for _, latency, _ in singles]),
        "all_answers_ms": round(storm_ms, 1),
        "last_tesseract_gone_ms": round((gone_at[0] - started) * 1000, 1) if gone_at else None,
    }
    single = figures["single_cancel_ms"]
    rows = [
        Row("tasks before the cancels", ", ".join(f"{k} {v}" for k, v in sorted(before.items())), "", "info"),
        Row(
            "answers to 1 bulk cancel (100 ids) + 100 single cancels, at once",
            str(dict(codes)),
            "no 5xx",
            verdict(not any(code >= 500 for code in codes)),
        ),
        Row.none("cancels accepted whose task did not end cancelled", figures["accepted_not_cancelled"]),
        Row.none("cancels refused (already finished) whose task is not completed", figures["refused_not_completed"]),
        Row("bulk cancel of 100 ids: answer", ms(bulk_ms), "", "info"),
        Row("single cancel answer p50 / p99 (20 in flight)", f"{single['p50']} / {single['p99']} ms", "", "info"),
        Row("cancels sent -> last tesseract gone", ms(figures["last_tesseract_gone_ms"]), "", "info"),
        *aftermath_rows(figures),
    ]
    return figures, rows


# --- 2. kill -9 of a worker -----------------------------------------------------------------


def kill_worker() -> tuple[dict, list[Row]]:
    data = pdf(3, slow=True)
    with harness.Service(extra_env=SERVICE_ENV) as service:
        from ocr.models import OCRPage, OCRTask

        ids = [service.submit_pdf(data, {**OCR, "dpi": 150})[1]["task_id"] for _ in range(2)]
        streams = open_streams(service.base_url, ids)
        victim = ids[0]

        def mid_page_pid():
            task = OCRTask.objects.get(pk=victim)
            tesseracts = harness.tesseract_pids(str(service.tesseract_tmp))
            return task.processed_pages >= 1 and task.worker_pid in map(harness.proc_ppid, tesseracts) and task

        task = wait(mid_page_pid, 180, "the victim's worker mid-page")
        orphan = [
            pid
            for pid in harness.tesseract_pids(str(service.tesseract_tmp))
            if harness.proc_ppid(pid) == task.worker_pid
        ]
        kept = set(OCRPage.objects.filter(task_id=victim).values_list("page_number", "text"))
        os.kill(task.worker_pid, signal.SIGKILL)
        killed = time.monotonic()
        log("chaos: killed worker %d of task %s (tesseract %s)", task.worker_pid, victim, orphan)
        orphan_gone = wait(
            lambda: not any(os.path.exists(f"/proc/{p}") for p in orphan) and time.monotonic(),
            60,
            "the orphan tesseract killed",
        )
        chaos_env.wait_terminal([victim], 180)
        recovered = time.monotonic() - killed
        figures = aftermath(service, ids, streams, timeout=180)
        task = OCRTask.objects.get(pk=victim)
        pages_now = set(OCRPage.objects.filter(task_id=victim).values_list("page_number", "text"))
    figures |= {
        "victim_status": task.status,
        "victim_attempt": task.attempt,
        "victim_pages": f"{task.processed_pages}/{task.total_pages}",
        "pages_done_before_the_kill_kept": len(kept & pages_now),
        "pages_done_before_the_kill": len(kept),
        "kill_to_orphan_tesseract_killed_s": round(orphan_gone - killed, 1),
        "kill_to_task_completed_s": round(recovered, 1),
    }
    rows = [
        Row(
            "killed task: final state",
            f"{task.status}, attempt {task.attempt}, pages {figures['victim_pages']}",
            "completed, attempt 2",
            verdict(task.status == "completed" and task.attempt == 2),
        ),
        Row(
            "pages done before the kill, kept",
            f"{len(kept & pages_now)} of {len(kept)}",
            "all",
            verdict(kept <= pages_now),
        ),
        Row("kill -> orphan tesseract killed by the sweeper", f"{orphan_gone - killed:.1f} s", "", "info"),
        Row(
            "recovery: kill -> task completed",
            f"{recovered:.1f} s",
            "< lost-after 6 s + reaper 5 s + remaining pages",
            "info",
        ),
        *aftermath_rows(figures),
    ]
    return figures, rows


# --- 3. Redis restart with open streams ------------------------------------------------------


def redis_restart(redis: chaos_env.PrivateRedis) -> tuple[dict, list[Row]]:
    data = pdf(3)
    with harness.Service(extra_env=SERVICE_ENV) as service:
        request = {**OCR, "dpi": 150}
        ids = [service.submit_pdf(data, request, path="/v1/ocr/process-pdf-stream")[1]["task_id"] for _ in range(3)]
        ids += [service.submit_pdf(data, request)[1]["task_id"] for _ in range(2)]
        steady = open_streams(service.base_url, ids)
        cutters = open_streams(service.base_url, ids[:3])
        backlog = [service.submit_pdf(data, request)[1]["task_id"] for _ in range(4)]  # jobs on the list
        wait(lambda: any(s.events and s.events[-1]["type"] == "page_completed" for s in steady), 120, "a first page")
        from ocr.models import OCRTask

        ids += backlog
        pending = OCRTask.objects.filter(pk__in=ids, status="pending").count()
        for stream in cutters:
            stream.cut()
        down = time.monotonic()
        redis.kill()
        time.sleep(1.0)
        redis.start()
        downtime = time.monotonic() - down
        log("chaos: Redis restarted (%.1f s down, %d tasks pending: their jobs are lost)", downtime, pending)
        figures = aftermath(service, ids, steady + cutters, timeout=240)
        statuses = Counter(OCRTask.objects.filter(pk__in=ids).values_list("status", flat=True))
    figures |= {"redis_down_s": round(downtime, 1), "pending_at_restart": pending, "statuses": dict(statuses)}
    rows = [
        Row("Redis down (killed, restarted empty)", f"{downtime:.1f} s", "", "info"),
        Row("tasks pending at the restart (queued jobs lost)", str(pending), "", "info"),
        completed_row("tasks completed", statuses, len(ids)),
        Row("restart -> every task finished", f"{figures['settle_seconds']:.1f} s", "", "info"),
        *aftermath_rows(figures),
    ]
    return figures, rows


# --- 4. PostgreSQL restart while tasks run ---------------------------------------------------


def postgres_restart(pg: chaos_env.PrivatePostgres, down_seconds: float = 3.0) -> tuple[dict, list[Row]]:
    data = pdf(3)
    with harness.Service(extra_env=SERVICE_ENV) as service:
        ids = [service.submit_pdf(data, {**OCR, "dpi": 150})[1]["task_id"] for _ in range(4)]
        streams = open_streams(service.base_url, ids)
        wait(lambda: ocr_running(service, service.workers), 120, "every worker reading a page")
        down = time.monotonic()
        pg.stop("fast")
        time.sleep(down_seconds)
        pg.start()
        downtime = time.monotonic() - down
        log("chaos: PostgreSQL restarted (%.1f s down)", downtime)
        from django.db import connections

        connections.close_all()
        figures = aftermath(service, ids, streams, timeout=240)
        from ocr.models import OCRTask

        statuses = Counter(OCRTask.objects.filter(pk__in=ids).values_list("status", flat=True))
        errors = list(OCRTask.objects.filter(pk__in=ids, status="failed").values_list("error_message", flat=True))
    figures |= {"postgres_down_s": round(downtime, 1), "statuses": dict(statuses), "errors": errors}
    rows = [
        Row("PostgreSQL down (pg_ctl stop -m fast, start)", f"{downtime:.1f} s", "", "info"),
        completed_row("tasks completed", statuses, len(ids)),
        Row("restart -> every task finished", f"{figures['settle_seconds']:.1f} s", "", "info"),
        *aftermath_rows(figures),
    ]
    return figures, rows


# --- 5. media folder unwritable --------------------------------------------------------------


def media_unwritable() -> tuple[dict, list[Row]]:
    data = pdf(2)
    with harness.Service(extra_env=SERVICE_ENV) as service:
        from ocr.models import OCRTask

        request = {**OCR, "dpi": 150}
        ids = [service.submit_pdf(data, request)[1]["task_id"] for _ in range(3)]
        streams = open_streams(service.base_url, ids)
        wait(lambda: ocr_running(service, 1), 120, "a task reading a page")
        media = service.tmp / "media"
        chaos_env.chattr("+i", media)
        try:
            unwritable = chaos_env.is_unwritable(media) and all(
                chaos_env.is_unwritable(p) for p in media.rglob("*") if p.is_dir()
            )
            count_before = OCRTask.objects.count()
            answers = [
                harness.http_multipart(
                    service.base_url,
                    "/v1/ocr/process-pdf",
                    {"request": json.dumps(request)},
                    {"file": ("doc.pdf", data)},
                )
                for _ in range(5)
            ]
            created = OCRTask.objects.count() - count_before
        finally:
            chaos_env.chattr("-i", media)
        codes = Counter(code for code, _ in answers)
        ids += [body["task_id"] for code, body in answers if code == 202]
        details = sorted(
            {str(body.get("detail", body))[:120] for code, body in answers if code != 202 and isinstance(body, dict)}
        )
        figures = aftermath(service, ids, streams, timeout=180)
        statuses = Counter(OCRTask.objects.filter(pk__in=ids).values_list("status", flat=True))
    figures |= {
        "method": "chattr +i",
        "media_unwritable_for_root": unwritable,
        "submit_answers": dict(codes),
        "submit_details": details,
        "tasks_created_by_refused_submits": created - codes.get(202, 0),
        "statuses": dict(statuses),
    }
    rows = [
        Row(
            "method: chattr +i on media/ and its folders; a probe write as root fails",
            str(unwritable),
            "True",
            verdict(unwritable),
        ),
        Row("5 submits while unwritable: answers", str(dict(codes)), "503, no 500", verdict(set(codes) == {503})),
        Row(
            "tasks left behind by refused submits",
            str(created - codes.get(202, 0)),
            "0",
            verdict(created == codes.get(202, 0)),
        ),
        completed_row("tasks accepted before: completed", statuses, len(ids)),
        *aftermath_rows(figures),
    ]
    return figures, rows


# --- main -------------------------------------------------------------------------------------

SCENARIOS = ["mass_cancel", "kill_worker", "redis_restart", "postgres_restart", "media_unwritable"]
TITLES = {
    "mass_cancel": "Chaos: mass cancel of 200 running and pending tasks",
    "kill_worker": "Chaos: kill -9 of a worker mid-task",
    "redis_restart": "Chaos: Redis restarted with open WebSocket and SSE streams",
    "postgres_restart": "Chaos: PostgreSQL restarted while tasks run",
    "media_unwritable": "Chaos: media folder unwritable",
}


NOTES = (
    "Private redis-server and PostgreSQL cluster on loopback; a fresh service (2 workers, sweeper, daphne) per "
    "scenario with OCR_WORKER_LOST_SECONDS=6, OCR_HEARTBEAT_SECONDS=1, OCR_PENDING_REQUEUE_SECONDS=10."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=SCENARIOS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    report: dict = {"code": harness.code_version(), "scenarios": {}}
    with ExitStack() as stack:
        redis = chaos_env.PrivateRedis()
        stack.callback(redis.close)
        redis.start()
        pg = chaos_env.PrivatePostgres()
        stack.callback(pg.close)
        pg.start()
        log("chaos: private Redis on %d, private PostgreSQL on %d", redis.port, pg.port)
        # the services inherit these, and so does this process's Django (it reads the same database)
        os.environ["REDIS_URL"] = redis.url
        runs = {
            "mass_cancel": mass_cancel,
            "kill_worker": kill_worker,
            "redis_restart": lambda: redis_restart(redis),
            "postgres_restart": lambda: postgres_restart(pg),
            "media_unwritable": media_unwritable,
        }
        for name in args.only:
            log("chaos: --- %s", name)
            os.environ["DATABASE_URL"] = pg.url  # each service creates its database on the private cluster
            scenario_started = time.monotonic()
            try:
                figures, rows = runs[name]()
            except Exception as exc:
                log("chaos: %s FAILED: %r", name, exc)
                figures, rows = (
                    {"error": repr(exc)},
                    [Row("scenario ran to its end", repr(exc)[:200], "yes", "NOT met")],
                )
            figures["seconds"] = round(time.monotonic() - scenario_started, 1)
            rows.append(Row("scenario duration", f"{figures['seconds']:.0f} s", "", "info"))
            report["scenarios"][name] = figures
            write_section(TITLES[name], rows, command="make chaos", notes=NOTES)
    report["total_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
