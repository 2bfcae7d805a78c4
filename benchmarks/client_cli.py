"""The Python client and `ocr-client` against an isolated service (benchmarks/harness.py).

1. Ctrl-C: each round runs `ocr-client FILE --quiet` (a subprocess, as a user would) on a
   3-page scanned PDF OCR'd at 600 dpi, waits until the task's tesseract runs, lets it run a
   random 200-1000 ms into the page and sends SIGINT at t0. A thread polls the tesseract PIDs
   every 1 ms. Figures (ms, same wall clock): `sigint_to_cancelled_at` (t0 -> the task's
   `cancelled_at` in the database), `sigint_to_tesseract_dead`, `sigint_to_exit` (exit status
   130). `accepted_ms`: process start -> the `task: <id>` line on stderr (interpreter start,
   imports and the upload). Each round checks status `cancelled`, reason `Client interrupted`.
2. Event replay: a `--replay-pages` page PDF with a text layer (no OCR) is run to completion,
   then `Client.events(id)` reads its stored events over WebSocket and over SSE; figures are
   events per second and the time to the terminal event.

Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness
from harness import log

sys.path.insert(0, str(harness.ROOT / "client"))

from ocrsite_client import Client  # noqa: E402

from tests import factories  # noqa: E402


def ctrl_c_round(service: harness.Service, document: Path, request: dict) -> dict:
    from ocr.models import OCRTask

    prefix = str(service.tesseract_tmp)
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocrsite_client", str(document), "--url", service.base_url, "--quiet", "-v"]
        + ["--request", json.dumps(request)],
        cwd=harness.ROOT,
        env={**service.env, "PYTHONPATH": str(harness.ROOT / "client")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stderr.readline().strip()
        accepted = time.time()
        assert first.startswith("task: "), first
        task_id = first.removeprefix("task: ")
        deadline = time.monotonic() + 120
        while not (pids := harness.tesseract_pids(prefix)):
            assert time.monotonic() < deadline, "no tesseract started"
            time.sleep(0.01)
        time.sleep(random.uniform(0.2, 1.0))
        dead_at: list[float] = []

        def watch() -> None:
            while any(harness.proc_cmdline(str(pid)) for pid in pids):
                time.sleep(0.001)
            dead_at.append(time.time())

        watcher = threading.Thread(target=watch)
        watcher.start()
        sigint_at = time.time()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        exited_at = time.time()
        watcher.join(10)
        tail = proc.stderr.read()
        log(
            "SIGINT at %s; client log after it:\n%s",
            time.strftime("%H:%M:%S", time.localtime(sigint_at)) + f".{int(sigint_at % 1 * 1000):03d}",
            tail[-1500:],
        )
    finally:
        if proc.poll() is None:
            proc.kill()
    task = OCRTask.objects.get(pk=task_id)
    assert code == 130, code
    assert task.status == "cancelled" and task.cancellation_reason == "Client interrupted", task.status
    return {
        "accepted_ms": (accepted - started) * 1000,
        "sigint_to_cancelled_at": (task.cancelled_at.timestamp() - sigint_at) * 1000,
        "sigint_to_tesseract_dead": (dead_at[0] - sigint_at) * 1000,
        "sigint_to_exit": (exited_at - sigint_at) * 1000,
    }


def replay(service: harness.Service, pages: int) -> dict:
    figures: dict = {}
    with Client(service.base_url) as client:
        task = client.submit(factories.text_pdf(pages))
        client.wait(task["task_id"], timeout=300)
        for transport in ("websocket", "sse"):
            started = time.perf_counter()
            events = list(client.events(task["task_id"], transport=transport))
            elapsed = time.perf_counter() - started
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            figures[transport] = {
                "events": len(events),
                "seconds": round(elapsed, 3),
                "events_per_second": round(len(events) / elapsed),
            }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replay-pages", type=int, default=200)
    args = parser.parse_args()
    request = {"dpi": 600, "text_layer": "ocr"}
    rounds: list[dict] = []
    with harness.Service(http=True) as service, tempfile.TemporaryDirectory() as folder:
        document = Path(folder) / "slow.pdf"
        document.write_bytes(factories.slow_pdf(3))
        for number in range(args.rounds):
            rounds.append(ctrl_c_round(service, document, request))
            log("round %d: %s", number + 1, {k: round(v, 1) for k, v in rounds[-1].items()})
        replayed = replay(service, args.replay_pages)
    print(
        json.dumps(
            {
                "benchmark": "client_cli",
                "code_version": harness.code_version(),
                "rounds": args.rounds,
                "ctrl_c": {name: harness.summary_ms([r[name] for r in rounds]) for name in rounds[0]},
                "replay": replayed,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
