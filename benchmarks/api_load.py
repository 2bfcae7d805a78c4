"""The API under many clients, through the Python client (client/, `ocrsite_client`) and daphne.

Phase `dispatch`: with idle workers, `--dispatch` one-page text-layer PDFs are submitted one after
the other (each waits for the previous to finish); latency = the request leaving the client ->
the task's `started_at` (written by the worker that took it; same machine, same clock). Target:
p50 < 20 ms.

Phase `mixed`: `--clients` clients (spread over `--processes` processes of threads, so that the
load generator is not one GIL) loop for `--seconds`: submit a one-page text-layer PDF, GET it
three times, cancel it (200 while it runs or waits, 400 once it has finished: both are answers,
not errors). Figures per operation: p50/p99 and errors (5xx, 429, refused or timed-out
connections, any other status).

Phase `get`: the same clients only GET their last task for `--seconds`: requests per second and
p99 (#11: >= 250 req/s, p99 < 300 ms).

The load generator runs on the same 2 cores as daphne, the workers and the database: the figures
are those of the whole machine. Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import threading
import time

import harness
import results
from harness import log
from results import Row, verdict

TERMINAL = ("completed", "failed", "cancelled")


def client_process(base_url: str, pdf: bytes, clients: int, phase: str, seconds: float, task_ids, out) -> None:
    """One process of `clients` threads; puts a list of (operation, ms, outcome) on `out`."""
    from ocrsite_client import Client
    from ocrsite_client.errors import APIError

    records: list[tuple[str, float, str]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def timed(op: str, call):
        started = time.perf_counter()
        outcome, value = "ok", None
        try:
            value = call()
        except APIError as exc:
            outcome = str(exc.status_code)
        except Exception as exc:  # refused, reset, timed out: all errors
            outcome = type(exc).__name__
        with lock:
            records.append((op, (time.perf_counter() - started) * 1000, outcome))
        return value

    def mixed(client: Client) -> None:
        while time.monotonic() < stop_at:
            task = timed("submit", lambda: client.submit(pdf, filename="a.pdf", request={"text_layer": "auto"}))
            if not task:
                continue
            task_id = task["task_id"]
            task_ids.append(task_id)
            for _ in range(3):
                timed("get", lambda task_id=task_id: client.get(task_id))
            timed("cancel", lambda task_id=task_id: client.cancel(task_id, "api load benchmark"))

    def gets(client: Client, task_id: str) -> None:
        while time.monotonic() < stop_at:
            timed("get", lambda: client.get(task_id))

    threads = []
    own = list(task_ids)
    for index in range(clients):
        client = Client(base_url, timeout=30)
        if phase == "mixed":
            target, args = mixed, (client,)
        else:
            target, args = gets, (client, own[index % len(own)])
        threads.append(threading.Thread(target=target, args=args, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    out.put(records)


def run_clients(service: harness.Service, pdf: bytes, args, phase: str, task_ids) -> list[tuple[str, float, str]]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    per_process = [args.clients // args.processes + (i < args.clients % args.processes) for i in range(args.processes)]
    procs = [
        context.Process(
            target=client_process, args=(service.base_url, pdf, n, phase, args.seconds, task_ids, out), daemon=True
        )
        for n in per_process
    ]
    for proc in procs:
        proc.start()
    records: list[tuple[str, float, str]] = []
    for _ in procs:
        records += out.get(timeout=args.seconds + 120)
    for proc in procs:
        proc.join(30)
    return records


def children_cpu() -> float:
    """CPU seconds of this process's reaped children: the client processes once joined."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def operations(records: list[tuple[str, float, str]], seconds: float) -> dict:
    figures = {}
    for op in sorted({r[0] for r in records}):
        mine = [r for r in records if r[0] == op]
        outcomes: dict[str, int] = {}
        for _, _, outcome in mine:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        # A cancel of a task that finished first answers 400: an answer, not an error.
        expected = {"ok", "400"} if op == "cancel" else {"ok"}
        figures[op] = {
            **harness.summary_ms([r[1] for r in mine]),
            "per_second": round(len(mine) / seconds, 1),
            "outcomes": outcomes,
            "errors": sum(n for outcome, n in outcomes.items() if outcome not in expected),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dispatch", type=int, default=30, help="tasks in the dispatch phase")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--processes", type=int, default=5, help="processes the clients are spread over")
    parser.add_argument("--seconds", type=float, default=20, help="length of the mixed and the get phase")
    parser.add_argument(
        "--web-processes", type=int, default=2, help="OCR_WEB_PROCESSES: daphne processes on the port (scripts/web.py)"
    )
    args = parser.parse_args()

    from tests import factories

    pdf = factories.text_pdf(1)
    with harness.Service(http=True, web_processes=args.web_processes) as service:
        from ocrsite_client import Client

        from ocr.models import OCRTask

        def wait_terminal(ids: list[str], timeout: float = 120) -> None:
            deadline = time.monotonic() + timeout
            while OCRTask.objects.filter(pk__in=ids).exclude(status__in=TERMINAL).exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tasks not terminal within {timeout} s")
                time.sleep(0.05)

        log("dispatch: %d tasks one after the other", args.dispatch)
        dispatch_ms: list[float] = []
        with Client(service.base_url) as client:
            client.get(client.submit(pdf, filename="warm.pdf")["task_id"])  # warm up daphne and the workers
            time.sleep(1)
            for _ in range(args.dispatch):
                sent = time.time()
                task_id = client.submit(pdf, filename="d.pdf", request={"text_layer": "auto"})["task_id"]
                wait_terminal([task_id])
                started = OCRTask.objects.get(pk=task_id).started_at
                dispatch_ms.append((started.timestamp() - sent) * 1000)
                time.sleep(0.2)  # idle workers again: each submit meets a waiting worker

        manager = multiprocessing.get_context("spawn").Manager()
        task_ids = manager.list()
        meter = service.cpu_meter()
        log("mixed: %d clients, %s s", args.clients, args.seconds)
        mixed = operations(run_clients(service, pdf, args, "mixed", task_ids), args.seconds)
        ids = list(task_ids)
        wait_terminal(ids, timeout=300)
        not_terminal = OCRTask.objects.filter(pk__in=ids).exclude(status__in=TERMINAL).count()
        log("get: %d clients, %s s", args.clients, args.seconds)
        service_cpu, clients_cpu = sum(service.cpu_seconds().values()), children_cpu()
        gets = operations(run_clients(service, pdf, args, "get", ids[-args.clients :]), args.seconds)["get"]
        service_cpu = sum(service.cpu_seconds().values()) - service_cpu
        clients_cpu = children_cpu() - clients_cpu
        gets["cpu_ms_per_request"] = {
            "service": round(service_cpu / max(1, gets["count"]) * 1000, 2),
            "clients": round(clients_cpu / max(1, gets["count"]) * 1000, 2),
        }
        foreign_cpu_cores = round(meter.foreign_cores(), 2)
        database = "postgresql" if service.pg_name else "sqlite"

    dispatch = harness.summary_ms(dispatch_ms)
    mixed_errors = sum(op["errors"] for op in mixed.values())
    worst_p99 = max(op["p99"] or 0 for op in mixed.values())
    result = {
        "database": database,
        "code": harness.code_version(),
        "workers": service.workers,
        "clients": args.clients,
        "dispatch_ms": dispatch,
        "mixed": mixed,
        "tasks_submitted": len(ids),
        "tasks_not_terminal": not_terminal,
        "get": gets,
        "foreign_cpu_cores": foreign_cpu_cores,
    }
    print(json.dumps(result))
    rows = [
        Row(
            "submit -> worker start (started_at), p50 / p95 / max",
            f"{dispatch['p50']} / {dispatch['p95']} / {dispatch['max']} ms",
            "p50 < 20 ms",
            verdict(dispatch["p50"] is not None and dispatch["p50"] < 20),
        ),
        *(
            Row(
                f"{args.clients} clients, {op}: p50 / p99, per s",
                f"{figures['p50']} / {figures['p99']} ms, {figures['per_second']}/s",
                "",
                verdict(None),
            )
            for op, figures in mixed.items()
        ),
        Row.none(f"{args.clients} clients mixed: errors (5xx, 429, refused, timeouts)", mixed_errors),
        Row(f"{args.clients} clients mixed: worst p99", f"{worst_p99} ms", "", verdict(None)),
        Row.none("tasks not terminal after the load", not_terminal),
        Row(
            f"{args.clients} clients GET only: requests per s, p99",
            f"{gets['per_second']}/s, {gets['p99']} ms",
            ">= 250/s, p99 < 300 ms",
            verdict(gets["per_second"] >= 250 and (gets["p99"] or 1e9) < 300 and gets["errors"] == 0),
        ),
        Row(
            "GET only: CPU per request, service / load generator",
            f"{gets['cpu_ms_per_request']['service']} / {gets['cpu_ms_per_request']['clients']} ms",
            "",
            verdict(None),
        ),
    ]
    results.write_section(
        "API under load",
        rows,
        notes=f"{service.workers} workers, {args.web_processes} daphne processes (OCR_WEB_PROCESSES); "
        f"the {args.clients} clients (the Python client, httpx) run on the same "
        f"cores in {args.processes} processes; other programs used {foreign_cpu_cores} cores meanwhile.",
    )


if __name__ == "__main__":
    sys.exit(main())
