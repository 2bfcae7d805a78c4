"""Live progress latency: page finished in the worker -> event received by WebSocket and SSE clients.

Each measured task is a PDF of `--text-pages` pages that carry a text layer (read in about a
millisecond each with text_layer "auto", so events come in bursts) with an image-only page
(OCR'd by tesseract) every `--ocr-every` pages. To measure live events only, the workers are
first kept busy by one blocker task each (slow pages at 600 dpi); the measured task is then
submitted (streaming, /v1/ocr/process-pdf-stream), a WebSocket client (ws://.../ws/ocr/tasks/
{id}/) and an SSE client (GET /v1/ocr/stream/{id}) connect, and only then are the blockers
cancelled so that a worker takes the measured task.

Latency = receive time (time.time() when the frame is complete) - the event's `timestamp`
(set in the worker when the event is built, just before it is stored and published); same
machine, same clock. Events stamped before the client connected (replayed from the database)
are left out. Both clients must see seq 1..N exactly once, ending with the terminal event.

`layer_ms` is a diagnostic third listener: this process joins the task's group on the channel
layer itself, so it shows the worker's share (build, store, commit, publish through Redis);
the difference to `websocket_ms` / `sse_ms` is daphne's share.

`--uploads N` adds N other clients (separate processes) that each POST a 20-page scanned PDF
(9.5 MB) every `--upload-interval` s during the measurement, as users submitting documents
while others watch progress; the uploads are refused (400, out-of-range dpi) after daphne has
read and parsed them, so that no OCR work competes for the CPU.

The clients are the standard library (socket, http.client): no package to install or pin.
Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import threading
import time
from pathlib import Path

import harness
import results
from harness import log
from results import Row, verdict


def mixed_pdf(text_pages: int, ocr_every: int) -> tuple[bytes, int]:
    """Text-layer pages with an image-only page every `ocr_every` pages; returns (pdf, OCR pages)."""
    import pymupdf

    from tests import factories

    text = pymupdf.open(stream=factories.text_pdf(text_pages), filetype="pdf")
    image = pymupdf.open(stream=factories.image_pdf(1, dpi=150), filetype="pdf")
    out = pymupdf.open()
    ocr_pages = 0
    for index in range(text_pages):
        out.insert_pdf(text, from_page=index, to_page=index)
        if ocr_every and (index + 1) % ocr_every == 0:
            out.insert_pdf(image)
            ocr_pages += 1
    data = out.tobytes(deflate=True)
    for doc in (text, image, out):
        doc.close()
    return data, ocr_pages


class LayerClient:
    """Diagnostic third listener: this process joins the task's group on the channel layer
    directly, which isolates the worker's share (build, store, commit, publish) from daphne's."""

    def __init__(self, task_id: str) -> None:
        from channels.layers import get_channel_layer

        from ocr.progress import group_name

        self.loop = asyncio.new_event_loop()
        self.layer = get_channel_layer()
        self.group = group_name(task_id)
        self.channel = self.loop.run_until_complete(self.layer.new_channel())
        self.loop.run_until_complete(self.layer.group_add(self.group, self.channel))
        self.connected_at = time.time()

    def events(self):
        while True:
            message = self.loop.run_until_complete(asyncio.wait_for(self.layer.receive(self.channel), 120))
            event = message.get("event") or {}
            yield time.time(), event
            if event.get("type") in ("completed", "failed", "cancelled"):
                return

    def close(self) -> None:
        self.loop.run_until_complete(self.layer.group_discard(self.group, self.channel))
        # The pub/sub layer's flush only closes this process's connections; the core layer's
        # would empty the service's keys: that one is closed with close_pools.
        close = self.layer.close_pools if hasattr(type(self.layer), "close_pools") else self.layer.flush
        self.loop.run_until_complete(close())
        self.loop.close()


class Listener(threading.Thread):
    """Reads one client's events until the stream ends; keeps (seq, type, source, latency_ms, live)."""

    def __init__(self, name: str, client) -> None:
        super().__init__(name=name, daemon=True)
        self.client = client
        self.records: list[dict] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            stream = (
                self.client.messages() if isinstance(self.client, harness.WebSocketClient) else self.client.events()
            )
            for received, event in stream:
                if "seq" not in event:
                    continue
                stamped = harness.parse_timestamp(event["timestamp"])
                page = event.get("latest_page_result") or {}
                self.records.append(
                    {
                        "seq": event["seq"],
                        "type": event["type"],
                        "source": page.get("source"),
                        "latency_ms": (received - stamped) * 1000,
                        "live": self.client.connected_at is not None and stamped >= self.client.connected_at,
                    }
                )
        except BaseException as exc:
            self.error = exc
        finally:
            self.client.close()


def upload_loop(base_url: str, path: str, interval: float, uploads) -> None:
    """Another client: POSTs the PDF at `path` every `interval` s (in its own process)."""
    data = Path(path).read_bytes()
    next_upload = time.monotonic()
    while True:
        # An out-of-range dpi: the view answers 400 without creating a task, but daphne (Twisted)
        # has received and parsed the whole multipart body by then, as for any upload.
        harness.http_multipart(base_url, "/v1/ocr/process-pdf", {"request": '{"dpi": 1}'}, {"file": ("u.pdf", data)})
        with uploads.get_lock():
            uploads.value += 1
        next_upload += interval
        time.sleep(max(0.0, next_upload - time.monotonic()))


class Uploader:
    """Another client uploading a large PDF in a loop, in its own process (so that it never
    competes with the listeners for this process's GIL): what uploads do to event delivery."""

    def __init__(self, service: harness.Service, path: str, interval: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.uploads = context.Value("i", 0)
        self.proc = context.Process(
            target=upload_loop, args=(service.base_url, path, interval, self.uploads), daemon=True
        )
        self.proc.start()

    def stop(self) -> int:
        """Stop it; returns how many uploads it completed."""
        self.proc.terminate()
        self.proc.join(30)
        return self.uploads.value


def check_sequence(records: list[dict], *, replayed: bool = True) -> str | None:
    """Seq 1..N exactly once (from the first live one on the bare layer), ending with the terminal event."""
    seqs = [record["seq"] for record in records]
    first = 1 if replayed or not seqs else seqs[0]
    if seqs != list(range(first, first + len(seqs))):
        return f"seq not 1..N exactly once: {seqs[:5]}...{seqs[-5:]}"
    if not records or records[-1]["type"] not in ("completed", "failed", "cancelled"):
        return "stream did not end with a terminal event"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3, help="measured tasks, one after the other")
    parser.add_argument("--text-pages", type=int, default=100)
    parser.add_argument("--ocr-every", type=int, default=10, help="an image-only page after every N text pages")
    parser.add_argument("--dpi", type=int, default=200, help="dpi of the OCR pages")
    parser.add_argument(
        "--uploads", type=int, default=2, help="clients uploading a 20-page scanned PDF (9.5 MB) meanwhile"
    )
    parser.add_argument("--upload-interval", type=float, default=0.5, help="seconds between one client's uploads")
    args = parser.parse_args()

    from tests import factories

    pdf, ocr_pages = mixed_pdf(args.text_pages, args.ocr_every)
    blocker_pdf = factories.slow_pdf(4)
    upload_pdf = harness.document_pdf(20) if args.uploads else b""
    uploads = 0
    records: dict[str, list[dict]] = {"websocket": [], "sse": [], "layer": []}
    problems: list[str] = []

    with harness.Service(http=True) as service:
        from ocr.models import OCRTask

        upload_path = str(service.tmp / "upload.pdf")
        Path(upload_path).write_bytes(upload_pdf)
        meter = service.cpu_meter()

        def wait_status(task_ids: list[str], statuses: tuple[str, ...], timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while OCRTask.objects.filter(pk__in=task_ids).exclude(status__in=statuses).exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tasks {task_ids} not {statuses} within {timeout} s")
                time.sleep(0.02)

        for round_index in range(args.tasks):
            blockers = [
                service.submit_pdf(blocker_pdf, {"text_layer": "ocr", "dpi": 600})[1]["task_id"]
                for _ in range(service.workers)
            ]
            wait_status(blockers, ("processing",))
            _, body = service.submit_pdf(
                pdf, {"text_layer": "auto", "dpi": args.dpi}, path="/v1/ocr/process-pdf-stream", name="mixed.pdf"
            )
            task_id = body["task_id"]
            listeners = [
                Listener("websocket", harness.WebSocketClient(service.base_url, f"/ws/ocr/tasks/{task_id}/")),
                Listener("sse", harness.SSEClient(service.base_url, f"/v1/ocr/stream/{task_id}")),
                Listener("layer", LayerClient(task_id)),
            ]
            for listener in listeners:
                listener.start()
            deadline = time.monotonic() + 10
            while any(listener.client.connected_at is None for listener in listeners):
                if time.monotonic() > deadline:
                    raise RuntimeError("clients did not connect")
                time.sleep(0.005)
            uploaders = [Uploader(service, upload_path, args.upload_interval) for _ in range(args.uploads)]
            for blocker in blockers:
                harness.http_request(service.base_url, "POST", f"/v1/ocr/tasks/{blocker}/cancel", b"{}")
            for listener in listeners:
                listener.join(300)
            for uploader in uploaders:
                uploads += uploader.stop()
            for listener in listeners:
                if listener.is_alive() or listener.error:
                    raise RuntimeError(f"{listener.name} client failed: {listener.error!r}")
                problem = check_sequence(listener.records, replayed=listener.name != "layer")
                if problem:
                    problems.append(f"task {round_index + 1} {listener.name}: {problem}")
                live = [record for record in listener.records if record["live"]]
                records[listener.name] += live
                log(
                    "task %d %s: %d events (%d live), p50 %.1f ms, max %.1f ms",
                    round_index + 1,
                    listener.name,
                    len(listener.records),
                    len(live),
                    harness.percentile([r["latency_ms"] for r in live], 50) or 0,
                    max((r["latency_ms"] for r in live), default=0),
                )
            status = OCRTask.objects.filter(pk=task_id).values_list("status", flat=True).first()
            if status != "completed":
                problems.append(f"task {round_index + 1} ended {status}")
        database = "postgresql" if service.pg_name else "sqlite"
        foreign_cpu_cores = round(meter.foreign_cores(), 2)

    def figures(client: str) -> dict:
        latencies = [record["latency_ms"] for record in records[client]]
        by_source = {
            source: harness.summary_ms([r["latency_ms"] for r in records[client] if r["source"] == source])
            for source in ("text_layer", "ocr")
        }
        return {**harness.summary_ms(latencies), "page_events_by_source": by_source}

    websocket, sse, layer = figures("websocket"), figures("sse"), figures("layer")
    result = {
        "tasks": args.tasks,
        "pages_per_task": args.text_pages + ocr_pages,
        "ocr_pages_per_task": ocr_pages,
        "concurrent_uploaders": args.uploads,
        "upload_interval_s": args.upload_interval,
        "uploads_during_measurement": uploads,
        "code": harness.code_version(),
        "database": database,
        "foreign_cpu_cores": foreign_cpu_cores,
        "websocket_ms": websocket,
        "sse_ms": sse,
        "layer_ms": layer,
        "problems": problems,
        "targets": {
            "websocket_p95_lt_25ms": websocket["p95"] is not None and websocket["p95"] < 25,
            "sse_p95_lt_25ms": sse["p95"] is not None and sse["p95"] < 25,
        },
    }
    print(json.dumps(result))

    # the diagnostic layer listener joins the group late: its problems do not concern the clients
    client_problems = [problem for problem in problems if " layer: " not in problem]

    def row(name: str, figures: dict, target: str, bound: float | None) -> Row:
        ok = None if bound is None else (figures["p95"] is not None and figures["p95"] < bound and not client_problems)
        return Row(
            f"page event -> {name} client, p50 / p95 / max ({figures['count']} live events)",
            f"{figures['p50']} / {figures['p95']} / {figures['max']} ms",
            target,
            verdict(ok),
        )

    results.write_section(
        f"Live events while large uploads arrive ({'PostgreSQL' if database == 'postgresql' else 'SQLite'})",
        [
            row("WebSocket", websocket, "p95 < 25 ms", 25),
            row("SSE", sse, "p95 < 25 ms", 25),
            row("channel layer (diagnostic: the worker's share)", layer, "", None),
            Row(
                "10 MB uploads completed meanwhile",
                str(uploads),
                f">= 1 ({args.uploads} uploading clients)",
                verdict(uploads > 0),
            ),
            Row(
                "WebSocket and SSE stream problems (gaps, duplicates, no terminal event)",
                str(len(client_problems)),
                "0",
                verdict(not client_problems),
            ),
        ],
        notes="Latency: the event's `timestamp` (set in the worker when the event is built, after the page's "
        "result is stored) -> the frame received by the client; same machine, same clock. "
        f"Other programs used {foreign_cpu_cores} cores meanwhile.",
    )


if __name__ == "__main__":
    sys.exit(main())
