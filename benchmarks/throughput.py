"""Throughput: the service's pages per second against plain tesseract on the same pages.

Raw side: what a user would script instead, timed whole: the pages of a generated image-only
PDF (US letter, dense 10.5 pt text, scanned at 300 dpi) are each rendered with pymupdf
(greyscale, 300 dpi, saved as PGM) and fed to `tesseract FILE stdout -l eng --dpi 300` with
OMP_THREAD_LIMIT=1, `os.cpu_count()` pages at a time: the physical limit of the machine, render
included.

Service side: the same PDF is POSTed to /v1/ocr/process-pdf through daphne with
{"text_layer": "ocr", "dpi": 300}; the time runs from just before the POST to the task's
`completed_at` (the worker's own clock, same machine); this process polls the task rows every
50 ms through the ORM rather than over HTTP, so that polling does not steal CPU from the
workers. The queue case submits `--tasks` PDFs of `--task-pages` pages at once (concurrent
POSTs) and runs until the last `completed_at`; its raw side is the same pages.

The raw side writes PGM (as `pdftoppm -gray` does), the format a user would script. Tesseract
(leptonica) reads a BMP faster (10 against 130 ms for a 300 dpi page), which the service writes;
so the single case also runs a `raw_bmp` side, the same script writing BMP through Pillow, as
an informative figure: the ratio against the fastest input known here.

The raw side asks tesseract for its text alone, the cheapest thing a user can script; the
service also gets every word's box and confidence (`mean_confidence`, API.md section 9), read
through libtesseract (ocr/libtesseract.py) rather than as the `tesseract` command's TSV, which
would cost it about 5% more CPU than its text alone.

Fairness on a noisy 2-core machine: the raw and service runs alternate (raw, service for the
single task, then raw, service for the queue); with `--rounds N` the order flips every round
(raw first, service first, ...) so that a drift hits both sides alike, and the figures are the
medians over rounds (ratios are medians of the per-round ratios). Each run also records:
- the tesseract processes running at once (sampled every 20 ms from /proc, like
  `pgrep -f '^tesseract '` but without its ~8 ms of CPU per call): the service's maximum must
  not exceed OCR_WORKERS; `slots_busy` is the mean share of the slots in use, which other
  programs' load hardly moves, unlike the ratios;
- `foreign_cpu_cores`: CPU used meanwhile by programs other than this benchmark and its
  services (e.g. a test run), in cores; above ~0.2 the ratios are disturbed: re-run;
- `cpu_ms_per_page`: CPU per page of tesseract and of each service process (qcluster,
  daphne, sweeper): the service's own overhead competes with tesseract for the cores.

Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness
import results
from harness import CORES, log
from results import Row, verdict

TERMINAL = ("completed", "failed", "cancelled")


def raw_pages(pdfs: list[bytes], directory: Path) -> list[tuple[Path, int]]:
    """The PDFs as files, with their page indexes: what a user's script starts from."""
    directory.mkdir(parents=True, exist_ok=True)
    pages = []
    for doc_index, data in enumerate(pdfs):
        path = directory / f"doc{doc_index}.pdf"
        path.write_bytes(data)
        pages += [(path, index) for index in range(count_pages(data))]
    return pages


def count_pages(data: bytes) -> int:
    import pymupdf

    with pymupdf.open(stream=data, filetype="pdf") as doc:
        return doc.page_count


def run_raw(pages: list[tuple[Path, int]], *, dpi: int, lang: str, image_format: str = "pgm") -> float:
    """Seconds for what a user would script instead: each page rendered with pymupdf (greyscale
    at `dpi`, written as PGM, or with `image_format="bmp"` as BMP through Pillow) and fed to
    plain tesseract, CORES pages at a time (render and OCR of different pages overlap), the text
    on stdout."""
    import pymupdf
    from PIL import Image

    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}

    def one(page: tuple[Path, int]) -> None:
        path, index = page
        image = path.with_name(f"{path.stem}-page{index + 1}.{image_format}")
        with pymupdf.open(path) as doc:
            pixmap = doc[index].get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
        if image_format == "bmp":
            Image.frombytes("L", (pixmap.width, pixmap.height), pixmap.samples).save(image, format="BMP")
        else:
            pixmap.save(image)
        subprocess.run(
            ["tesseract", str(image), "stdout", "-l", lang, "--dpi", str(dpi)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CORES) as pool:
        list(pool.map(one, pages))
    return time.perf_counter() - started


def run_service(service: harness.Service, pdfs: list[bytes], *, dpi: int, timeout: float) -> dict:
    """Submit every PDF at once; seconds from the first POST to the last `completed_at`."""
    from ocr.models import OCRTask

    request = {"text_layer": "ocr", "dpi": dpi}
    with ThreadPoolExecutor(max_workers=len(pdfs)) as pool:
        submitted = list(pool.map(lambda data: service.submit_pdf(data, request), pdfs))
    submit_started = min(started for started, _ in submitted)
    submit_done = time.time()
    ids = [body["task_id"] for _, body in submitted]
    deadline = time.monotonic() + timeout
    while True:
        rows = list(OCRTask.objects.filter(pk__in=ids).values("status", "started_at", "completed_at", "error_message"))
        if len(rows) == len(ids) and all(row["status"] in TERMINAL for row in rows):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"tasks not finished after {timeout} s: {[row['status'] for row in rows]}")
        time.sleep(0.05)
    bad = [row for row in rows if row["status"] != "completed"]
    if bad:
        raise RuntimeError(f"tasks did not complete: {bad}")
    finished = max(row["completed_at"].timestamp() for row in rows)
    first_start = min(row["started_at"].timestamp() for row in rows)
    return {
        "seconds": finished - submit_started,
        "submit_seconds": submit_done - submit_started,
        "first_start_after_submit_seconds": first_start - submit_started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=20, help="pages of the single-task PDF")
    parser.add_argument("--tasks", type=int, default=6, help="tasks submitted at once in the queue case")
    parser.add_argument("--task-pages", type=int, default=5, help="pages per task in the queue case")
    parser.add_argument("--dpi", type=int, default=300)
    parser.add_argument("--fontsize", type=float, default=10.5)
    parser.add_argument("--rounds", type=int, default=1, help="alternating raw/service rounds; medians reported")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for one service run")
    args = parser.parse_args()

    log("generating documents: %d pages + %d x %d pages", args.pages, args.tasks, args.task_pages)
    single_pdf = harness.document_pdf(args.pages, fontsize=args.fontsize)
    queue_pdfs = [
        harness.document_pdf(args.task_pages, first_page=1000 + i * args.task_pages, fontsize=args.fontsize)
        for i in range(args.tasks)
    ]
    queue_total = args.tasks * args.task_pages

    with harness.Service(http=True) as service:
        raw_dir = service.tmp / "raw"
        single_paths = raw_pages([single_pdf], raw_dir / "single")
        queue_paths = raw_pages(queue_pdfs, raw_dir / "queue")

        sampler = harness.TesseractSampler({"service": str(service.tesseract_tmp), "raw": str(raw_dir)})
        sampler.start()
        meter = service.cpu_meter()
        runs: list[dict] = []
        max_service_tesseract = 0
        foreign_max = 0
        try:
            for round_index in range(args.rounds):
                run: dict = {"order": "raw-first" if round_index % 2 == 0 else "service-first"}
                for case, paths, pdfs in (
                    ("single", single_paths, [single_pdf]),
                    ("queue", queue_paths, queue_pdfs),
                ):
                    sides = ("raw", "raw_bmp", "service") if case == "single" else ("raw", "service")
                    for side in sides if round_index % 2 == 0 else reversed(sides):
                        sampler.reset()
                        meter.mark()
                        if side != "service":
                            children_before = os.times()
                            image_format = "bmp" if side == "raw_bmp" else "pgm"
                            seconds = run_raw(paths, dpi=args.dpi, lang="eng", image_format=image_format)
                            children_after = os.times()
                            run[f"{case}_{side}_seconds"] = round(seconds, 3)
                            tesseract_cpu = (
                                children_after.children_user
                                + children_after.children_system
                                - children_before.children_user
                                - children_before.children_system
                            )
                            tesseract_ms = round(tesseract_cpu * 1000 / len(paths))
                            run[f"{case}_{side}_cpu_ms_per_page"] = {"tesseract": tesseract_ms}
                        else:
                            cpu_before = service.cpu_seconds()
                            result = run_service(service, pdfs, dpi=args.dpi, timeout=args.timeout)
                            cpu_after = service.cpu_seconds()
                            run[f"{case}_service_cpu_ms_per_page"] = {
                                name: round((cpu_after[name] - cpu_before[name]) * 1000 / len(paths))
                                for name in cpu_after
                            }
                            seconds = result["seconds"]
                            run[f"{case}_service_seconds"] = round(seconds, 3)
                            run[f"{case}_service_submit_seconds"] = round(result["submit_seconds"], 3)
                            run[f"{case}_service_first_start_seconds"] = round(
                                result["first_start_after_submit_seconds"], 3
                            )
                            max_service_tesseract = max(max_service_tesseract, sampler.maxima["service"])
                        foreign_max = max(foreign_max, sampler.maxima["foreign"])
                        run[f"{case}_{side}_foreign_cpu_cores"] = round(meter.foreign_cores(), 2)
                        # Share of the run during which all `cores` tesseract slots were busy, on average.
                        run[f"{case}_{side}_tesseract_busy"] = round(sampler.mean(side.split("_")[0]) / CORES, 3)
                        log(
                            "round %d %s %s: %d pages in %.2f s (%.3f pages/s), tesseract at once %s, "
                            "slots busy %.3f, foreign CPU %.2f cores",
                            round_index + 1,
                            case,
                            side,
                            len(paths),
                            seconds,
                            len(paths) / seconds,
                            sampler.maxima,
                            run[f"{case}_{side}_tesseract_busy"],
                            run[f"{case}_{side}_foreign_cpu_cores"],
                        )
                run["single_ratio"] = round(run["single_raw_seconds"] / run["single_service_seconds"], 3)
                run["single_bmp_ratio"] = round(run["single_raw_bmp_seconds"] / run["single_service_seconds"], 3)
                run["queue_ratio"] = round(run["queue_raw_seconds"] / run["queue_service_seconds"], 3)
                runs.append(run)
        finally:
            sampler.stop()

    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    raw_pps = args.pages / median("single_raw_seconds")
    service_pps = args.pages / median("single_service_seconds")
    queue_raw_pps = queue_total / median("queue_raw_seconds")
    queue_service_pps = queue_total / median("queue_service_seconds")
    single_ratio = median("single_ratio")
    bmp_ratio = median("single_bmp_ratio")
    queue_ratio = median("queue_ratio")
    tesseract_ms = {
        side: statistics.median(run[f"single_{side}_cpu_ms_per_page"]["tesseract"] for run in runs)
        for side in ("raw", "raw_bmp", "service")
    }
    workers = int(service.env["OCR_WORKERS"])
    result = {
        "pages": args.pages,
        "dpi": args.dpi,
        "cores": CORES,
        "raw_pages_per_s": round(raw_pps, 3),
        "service_pages_per_s": round(service_pps, 3),
        "ratio": single_ratio,
        "raw_bmp_pages_per_s": round(args.pages / median("single_raw_bmp_seconds"), 3),
        "ratio_to_raw_bmp": bmp_ratio,
        "queue": {
            "tasks": args.tasks,
            "pages": queue_total,
            "raw_pages_per_s": round(queue_raw_pps, 3),
            "service_pages_per_s": round(queue_service_pps, 3),
            "ratio": queue_ratio,
        },
        "tesseract_cpu_ms_per_page": tesseract_ms,
        "max_concurrent_tesseract": max_service_tesseract,
        # Mean share of the tesseract slots in use during each run (medians over rounds): unlike
        # the ratios, hardly moved by other programs' load; the gap is the service's own overhead.
        "slots_busy": {
            f"{case}_{side}": median(f"{case}_{side}_tesseract_busy")
            for case, sides in (("single", ("raw", "raw_bmp", "service")), ("queue", ("raw", "service")))
            for side in sides
        },
        "ocr_workers": workers,
        "rounds": args.rounds,
        "code": harness.code_version(),
        "database": "postgresql" if service.pg_name else "sqlite",
        "foreign_tesseract_max": foreign_max,
        "foreign_cpu_cores_max": max(value for run in runs for key, value in run.items() if "foreign_cpu" in key),
        "targets": {
            "single_ratio_ge_0.95": single_ratio >= 0.95,
            "queue_ratio_ge_0.95": queue_ratio >= 0.95,
            "tesseract_le_workers": max_service_tesseract <= workers,
        },
        "runs": runs,
    }
    if foreign_max or result["foreign_cpu_cores_max"] > 0.2:
        log(
            "WARNING: other programs ran meanwhile (%d foreign tesseract, up to %.2f cores): timings disturbed",
            foreign_max,
            result["foreign_cpu_cores_max"],
        )
    print(json.dumps(result))
    results.write_section(
        "Throughput against plain tesseract",
        [
            Row(
                f"one PDF of {args.pages} pages: service / raw pages per s",
                f"{service_pps:.3f} / {raw_pps:.3f} = {single_ratio:.3f}x",
                ">= 0.95x",
                verdict(single_ratio >= 0.95),
            ),
            Row(
                f"queue of {args.tasks} PDFs x {args.task_pages} pages: service / raw pages per s",
                f"{queue_service_pps:.3f} / {queue_raw_pps:.3f} = {queue_ratio:.3f}x",
                ">= 0.95x",
                verdict(queue_ratio >= 0.95),
            ),
            Row(
                "one PDF: service / raw fed BMP (the fastest input known here) pages per s",
                f"{service_pps:.3f} / {result['raw_bmp_pages_per_s']:.3f} = {bmp_ratio:.3f}x",
                "-",
                verdict(None),
            ),
            Row(
                "tesseract CPU per page (one PDF): raw PGM text / raw BMP text / service text, words and confidences",
                " / ".join(f"{tesseract_ms[side]:.0f} ms" for side in ("raw", "raw_bmp", "service")),
                "-",
                verdict(None),
            ),
            Row(
                "tesseract processes at once (service)",
                str(max_service_tesseract),
                f"<= {workers}",
                verdict(max_service_tesseract <= workers),
            ),
            Row(
                "CPU of other programs meanwhile (cores, max)",
                str(result["foreign_cpu_cores_max"]),
                "< 0.2 (else re-run)",
                verdict(None),
            ),
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
