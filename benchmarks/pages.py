"""Long documents: worker memory on 50 vs 500 pages, and a text layer against forced OCR.

Phase `memory`: a PDF of `--small` and one of `--large` pages (dense text, read by tesseract:
`text_layer: "ocr"` at `--memory-dpi`; `--memory-lines` lines a page, so that 500 pages take
about a minute) are run one
after the other; a thread samples the resident memory (VmRSS) of every qcluster process every
50 ms. Figure: the highest RSS of the worker process that ran the task (`worker_pid`; its pages
run in threads of that process, tesseract in child processes not counted) during each run; target: the large run's
peak exceeds the small run's by less than 150 MB (memory flat in pages: nothing per page is kept).

Phase `text_layer`: one PDF of `--text-pages` dense pages with a real text layer, processed with
`text_layer: "auto"` (read from the layer) and with `"ocr"` (rendered at 300 dpi and OCR'd);
figure: processing time (`completed_at - started_at`) of forced OCR / text layer; target >= 100x.

Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import harness
import results
from harness import log
from results import Row, verdict

TERMINAL = ("completed", "failed", "cancelled")


def text_document_pdf(pages: int, lines: int | None = None) -> bytes:
    """US letter pages of dense 10.5 pt text with a real text layer (as a word processor writes);
    with `lines`, only the first lines of each page (a short letter: fast to OCR)."""
    import pymupdf

    rect = pymupdf.paper_rect("letter")
    margin, fontsize = 72, 10.5
    out = pymupdf.open()
    for number in range(1, pages + 1):
        page = out.new_page(width=rect.width, height=rect.height)
        # only as many lines as are kept: composing a full page costs ~0.2 s (500 pages: 2 minutes)
        height = rect.height - 2 * margin if lines is None else lines * fontsize * 1.25
        text_lines = harness.document_text_lines(
            number, fontsize=fontsize, width=rect.width - 2 * margin, height=height
        )[:lines]
        for i, text in enumerate(text_lines):
            if text:
                page.insert_text((margin, margin + fontsize + i * fontsize * 1.25), text, fontsize=fontsize)
    data = out.tobytes(deflate=True)
    out.close()
    return data


class RssSampler(threading.Thread):
    """Highest VmRSS (bytes) of each of `pids()` since the last reset, sampled every 50 ms."""

    def __init__(self, pids) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pids = pids
        self.peaks: dict[int, int] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            for pid in self.pids():
                try:
                    with open(f"/proc/{pid}/status") as status:
                        for line in status:
                            if line.startswith("VmRSS:"):
                                self.peaks[pid] = max(self.peaks.get(pid, 0), int(line.split()[1]) * 1024)
                                break
                except OSError:
                    continue

    def stop(self) -> None:
        self._stop_event.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--large", type=int, default=500)
    parser.add_argument("--memory-dpi", type=int, default=150)
    parser.add_argument("--memory-lines", type=int, default=6, help="lines of text per page in the memory phase")
    parser.add_argument("--text-pages", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    log("generating documents")
    short = {n: text_document_pdf(n, args.memory_lines) for n in (args.small, args.large)}
    dense = text_document_pdf(args.text_pages)
    with harness.Service(http=True) as service:
        from ocr.models import OCRTask

        def run(data: bytes, request: dict) -> OCRTask:
            _, body = service.submit_pdf(data, request)
            deadline = time.monotonic() + args.timeout
            while True:
                task = OCRTask.objects.get(pk=body["task_id"])
                if task.status in TERMINAL:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"task {task.pk} not finished within {args.timeout} s")
                time.sleep(0.1)
            if task.status != "completed":
                raise RuntimeError(f"task {task.pk} ended {task.status}: {task.error_message}")
            return task

        qcluster = service.procs[service.names.index("qcluster")].pid

        def workers() -> list[int]:
            """The qcluster's processes (its process group: workers, pusher, monitor, guard)."""
            out = subprocess.run(["pgrep", "-g", str(qcluster)], capture_output=True, text=True).stdout
            return [int(pid) for pid in out.split()]

        sampler = RssSampler(workers)
        sampler.start()
        time.sleep(0.5)
        idle = dict(sampler.peaks)
        memory = {}
        for pages in (args.small, args.large):
            sampler.peaks = {}
            started = time.monotonic()
            task = run(short[pages], {"text_layer": "ocr", "dpi": args.memory_dpi})
            # the worker process that ran the task (its pages run in threads of that process)
            memory[pages] = {
                "peak_rss_mb": round(sampler.peaks.get(task.worker_pid, 0) / 2**20, 1),
                "idle_rss_mb": round(idle.get(task.worker_pid, 0) / 2**20, 1),
                "seconds": round(time.monotonic() - started, 1),
            }
            log("memory: %d pages, worker peak RSS %.1f MB", pages, memory[pages]["peak_rss_mb"])
        sampler.stop()

        seconds = {}
        for mode in ("auto", "ocr"):
            task = run(dense, {"text_layer": mode, "dpi": 300})
            seconds[mode] = (task.completed_at - task.started_at).total_seconds()
            log("text layer: %s, %d pages in %.3f s", mode, args.text_pages, seconds[mode])
        database = "postgresql" if service.pg_name else "sqlite"

    growth = memory[args.large]["peak_rss_mb"] - memory[args.small]["peak_rss_mb"]
    speedup = seconds["ocr"] / max(seconds["auto"], 1e-6)
    result = {
        "database": database,
        "code": harness.code_version(),
        "memory": {str(pages): figures for pages, figures in memory.items()},
        "rss_growth_mb": round(growth, 1),
        "text_layer_seconds": round(seconds["auto"], 4),
        "forced_ocr_seconds": round(seconds["ocr"], 3),
        "text_layer_speedup": round(speedup, 1),
    }
    print(json.dumps(result))
    results.write_section(
        "Long documents",
        [
            Row(
                f"worker peak RSS, {args.small} vs {args.large} pages (OCR at {args.memory_dpi} dpi)",
                f"{memory[args.small]['peak_rss_mb']} MB vs {memory[args.large]['peak_rss_mb']} MB "
                f"(+{growth:.1f} MB; idle {memory[args.small]['idle_rss_mb']} MB)",
                "growth < 150 MB",
                verdict(growth < 150),
            ),
            Row(
                f"{args.text_pages} dense pages: forced OCR (300 dpi) / text layer, processing time",
                f"{seconds['ocr']:.2f} s / {seconds['auto']:.4f} s = {speedup:.0f}x",
                ">= 100x",
                verdict(speedup >= 100),
            ),
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
