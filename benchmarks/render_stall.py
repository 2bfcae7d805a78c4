"""Render stall: how fast a cancel kills a page's tesseract while its worker renders.

pymupdf holds the GIL for a whole page render (about 200 ms for a 600 dpi scan), and the task's
cancel watcher is a thread of the worker that renders. Each worker node's killer (ocr/killer.py,
a thread of its sweeper) kills from another process. This measures the worst case for the
watcher: a stand-in worker OCRs a slow page through `engine.run_tesseract` while its main
thread renders a 600 dpi scanned page in a loop; its watcher thread cancels the scope on the
task's wake-up (as CancelWatcher.stop_in_flight does). Per round, the in-flight wake-up is
published and a pidfd says when the tesseract is dead. Rounds alternate between the watcher
alone (`watcher`) and the watcher with a NodeKiller running in this process (`killer`).

In a real task a render takes a few percent of a page's time: only the cancels that land on one
meet this case (benchmarks/cancel_latency.py measures cancels wherever they land).
Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import harness
import results
from harness import ROOT, log, tesseract_pids
from results import Row

from tests.support import wait_for

WORKER = """
import sys, threading
import django
django.setup()
from PIL import Image
from ocr import engine, queue
pages_dir, label, image_path, pdf_path = sys.argv[1:5]
scope = engine.CancelScope(label=label)
wakeups = queue.subscribe_task_wakeups(label)
def watch():
    while not queue.wait_for_wakeup(wakeups, 1.0):
        pass
    scope.cancel()
def render():
    doc = engine.open_pdf(open(pdf_path, "rb").read())
    while not scope.cancelled.is_set():
        engine.render_page(doc, 0, 600)
threading.Thread(target=watch, daemon=True).start()
threading.Thread(target=render, daemon=True).start()
try:
    engine.run_tesseract(Image.open(image_path), lang="eng", dpi=600, scope=scope, tmpdir=pages_dir)
except engine.Cancelled:
    pass
"""


def one_round(tmp: str, image: str, pdf: str, delay: float) -> float:
    """Milliseconds from the wake-up to the stand-in's tesseract dead."""
    from django.conf import settings

    from ocr import queue

    label = str(uuid.uuid4())
    worker = subprocess.Popen([sys.executable, "-c", WORKER, f"{tmp}/pages", label, image, pdf], cwd=ROOT)
    try:
        pid = wait_for(lambda: tesseract_pids(f"{tmp}/pages/page-{worker.pid}-{label}-"), timeout=60)[0]
        time.sleep(delay)  # renders running
        pidfd = os.pidfd_open(pid)
        started = time.perf_counter()
        queue.redis_client(settings.REDIS_URL).publish(queue._wakeup_channel(label), queue.WAKE_IN_FLIGHT)
        select.select([pidfd], [], [], 10)
        took = (time.perf_counter() - started) * 1000
        os.close(pidfd)
        worker.wait(timeout=30)
        return took
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="cancels per case")
    args = parser.parse_args()
    os.environ["DJANGO_SETTINGS_MODULE"] = "ocrsite.settings"
    os.environ["OCR_QUEUE_NAME"] = f"bench{os.getpid()}"
    os.environ["LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from ocr import engine, killer
    from tests import factories

    with tempfile.TemporaryDirectory(prefix="render-stall-") as tmp:
        os.makedirs(f"{tmp}/pages")
        pdf, image = f"{tmp}/scan.pdf", f"{tmp}/slow.png"
        with open(pdf, "wb") as handle:  # a scanned page whose 600 dpi render holds the GIL long
            handle.write(factories.image_pdf(1, dpi=600, lines=factories.dense_lines, fontsize=7))
        engine.render_page(engine.open_pdf(factories.slow_pdf(1)), 0, 600).save(image)
        times: dict[str, list[float]] = {"watcher": [], "killer": []}
        for index in range(args.rounds):
            for case in ("watcher", "killer"):
                node_killer = killer.NodeKiller(f"{tmp}/pages") if case == "killer" else None
                if node_killer is not None:
                    node_killer.start()
                    time.sleep(0.3)  # subscribed
                try:
                    times[case].append(one_round(tmp, image, pdf, delay=0.5 + (index % 6) * 0.137))
                finally:
                    if node_killer is not None:
                        node_killer.stop()
                        node_killer.join(5)
                log("round %d, %s: %.1f ms", index + 1, case, times[case][-1])
    figures = {
        case: {"p50": round(statistics.median(values), 1), "max": round(max(values), 1), "count": len(values)}
        for case, values in times.items()
    }
    print(json.dumps({"code": harness.code_version(), "wake_up_to_dead_ms": figures}))
    results.write_section(
        "Cancel during a page render (the node's killer)",
        [
            Row(
                f"wake-up -> tesseract dead, {case}, p50 / max",
                f"{figures[case]['p50']} / {figures[case]['max']} ms",
                "",
                results.verdict(None),
            )
            for case in ("watcher", "killer")
        ],
        notes="A stand-in worker renders a 600 dpi scanned page in a loop while its page's tesseract runs; "
        "`watcher`: its watcher thread alone kills; `killer`: a NodeKiller (ocr/killer.py) runs too. "
        f"{args.rounds} cancels per case, alternating.",
    )


if __name__ == "__main__":
    main()
