"""Webhook delivery: latency from event to receiver, order, and whether a slow receiver slows OCR.

Phase `latency`: `--tasks` PDFs of `--pages` text-layer pages (read in about a millisecond each,
so events come in bursts) with `callback_events: ["terminal", "page"]` to a receiver on
127.0.0.1 that answers 200 at once. Latency = receive time - the event's `timestamp` (set in the
worker when the event is built); same machine, same clock. Every task's deliveries must arrive
in seq order, each event exactly once.

Phase `slow_receiver`: one scanned PDF of `--ocr-pages` pages OCR'd by tesseract, once without a
callback and once with page + terminal callbacks to a receiver that takes `--receiver-delay` s
per request; the task's processing time (completed_at - started_at) shows whether OCR waited
for deliveries (it must not: deliveries are worker jobs of their own).

Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import harness

SECRET = "whsec_" + base64.b64encode(b"ocrsite webhook benchmark secret").decode()


class Receiver:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.received: list[tuple[float, dict, str]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.time()
                with receiver.lock:
                    receiver.received.append((now, json.loads(body), self.path))
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def of(self, path: str) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, body) for t, body, p in self.received if p == path]


def wait_terminal(task_ids: list[str], timeout: float) -> None:
    from ocr.models import TERMINAL_STATUSES, OCRTask

    deadline = time.monotonic() + timeout
    while OCRTask.objects.filter(pk__in=task_ids).exclude(status__in=TERMINAL_STATUSES).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("tasks did not finish")
        time.sleep(0.1)


def processing_seconds(task_id: str) -> float:
    from ocr.models import OCRTask

    task = OCRTask.objects.get(pk=task_id)
    return round((task.completed_at - task.started_at).total_seconds(), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--pages", type=int, default=5)
    parser.add_argument("--ocr-pages", type=int, default=3)
    parser.add_argument("--receiver-delay", type=float, default=3.0)
    args = parser.parse_args()
    from tests import factories

    fast, slow = Receiver(), Receiver(delay=args.receiver_delay)
    env = {
        "OCR_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{fast.port},127.0.0.1:{slow.port}",
        "OCR_WEBHOOK_SECRET": SECRET,
    }
    out: dict = {"version": harness.code_version(), "cores": harness.CORES}
    with harness.Service(extra_env=env, workers=2) as service:
        # latency
        paths, ids = [], []
        document = factories.text_pdf(args.pages)
        for n in range(args.tasks):
            path = f"/t{n}"
            request = {"callback_url": f"http://127.0.0.1:{fast.port}{path}", "callback_events": ["terminal", "page"]}
            _, body = service.submit_pdf(document, request)
            paths.append(path)
            ids.append(body["task_id"])
        wait_terminal(ids, timeout=120)
        expected = args.pages + 1
        deadline = time.monotonic() + 60
        while any(len(fast.of(p)) < expected for p in paths) and time.monotonic() < deadline:
            time.sleep(0.1)
        page_ms, terminal_ms, in_order = [], [], True
        for path in paths:
            got = fast.of(path)
            seqs = [body["seq"] for _, body in got]
            in_order &= seqs == sorted(set(seqs)) and len(got) == expected
            for received, body in got:
                latency = (received - harness.parse_timestamp(body["timestamp"])) * 1000
                (terminal_ms if "task" in body else page_ms).append(latency)
        out["latency"] = {
            "tasks": args.tasks,
            "events_per_task": expected,
            "all_delivered_once_in_seq_order": bool(in_order),
            "page_event_to_receiver_ms": harness.summary_ms(page_ms),
            "terminal_event_to_receiver_ms": harness.summary_ms(terminal_ms),
        }
        # slow receiver vs none
        scanned = harness.document_pdf(args.ocr_pages, scan_dpi=200)
        _, plain = service.submit_pdf(scanned, {"dpi": 200, "text_layer": "ocr"})
        wait_terminal([plain["task_id"]], timeout=300)
        request = {
            "dpi": 200,
            "text_layer": "ocr",
            "callback_url": f"http://127.0.0.1:{slow.port}/slow",
            "callback_events": ["terminal", "page"],
        }
        _, hooked = service.submit_pdf(scanned, request)
        wait_terminal([hooked["task_id"]], timeout=300)
        finished = time.time()
        deadline = time.monotonic() + 120
        while len(slow.of("/slow")) < args.ocr_pages + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        out["slow_receiver"] = {
            "pages": args.ocr_pages,
            "receiver_delay_s": args.receiver_delay,
            "processing_s_without_callback": processing_seconds(plain["task_id"]),
            "processing_s_with_callback": processing_seconds(hooked["task_id"]),
            "deliveries": len(slow.of("/slow")),
            "last_delivery_after_task_end_s": round(max(t for t, _ in slow.of("/slow")) - finished, 2),
        }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
