"""Outputs: what asking for every format costs, and how big the searchable PDF is.

Pages: a generated US-letter document (dense 10.5 pt text) rendered at 300 dpi (untimed). Each
page is read by `ocr.reader.read_page` (the worker's own code: preprocess, one tesseract run,
TSV parsed into words) once with the default outputs (["text"]) and once with all six
(text, words, hocr, alto, tsv, pdf), alternating page by page so that a drift in the machine's
load hits both alike; one page at a time, OMP_THREAD_LIMIT=1. Reported: pages per second (wall)
and tesseract CPU seconds per page (from RUSAGE_CHILDREN, hardly moved by other programs).
Optional steps (rotate/lang "auto", deskew, the old default threshold) are timed the same way
on the same pages, each alternated with default runs of its own, its ratios taken against them.

The searchable PDF: the pages as an image-only PDF (the "scan", 300 dpi greyscale, deflated)
against `ocr.outputs.write_pdf` of that scan with the text layers; and for a JPEG page.

Also: preprocessing (one lookup table) of a 300 dpi page, and the identity case.

Prints one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ocrsite.settings")

import django  # noqa: E402

django.setup()

import pymupdf  # noqa: E402
import results  # noqa: E402  (benchmarks/, on the path as the script's folder)
from PIL import Image  # noqa: E402
from results import Row, verdict  # noqa: E402

from ocr import imaging, outputs, reader  # noqa: E402
from ocr.models import OCRPage  # noqa: E402
from ocr.params import OUTPUT_FORMATS, TaskParams  # noqa: E402

DPI = 300


def log(message: str, *args) -> None:
    print(message % args, file=sys.stderr, flush=True)


def dense_document(pages: int) -> pymupdf.Document:
    doc = pymupdf.open()
    for number in range(1, pages + 1):
        page = doc.new_page()
        for i in range(52):
            line = f"Line {i} of page {number}: the quick brown fox jumps over the lazy dog, twice."
            page.insert_text((54, 60 + i * 13.5), line, fontsize=10.5)
    return doc


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_read(image: Image.Image, params: TaskParams) -> tuple[float, float, reader.PageRead]:
    cpu, started = children_cpu(), time.perf_counter()
    found = reader.read_page(image, params=params, dpi=DPI)
    return time.perf_counter() - started, children_cpu() - cpu, found


def as_page(found: reader.PageRead, number: int) -> OCRPage:
    stored = {"size": list(found.size), "dpi": DPI, "words": found.words}
    stored.update({name: found.files[name].decode() for name in ("hocr", "alto", "tsv") if name in found.files})
    return OCRPage(page_number=number, text=found.text, source="ocr", outputs=stored, text_pdf=found.files.get("pdf"))


def scan_pdf(images: list[Image.Image]) -> bytes:
    doc = pymupdf.open()
    for image in images:
        page = doc.new_page(width=image.width * 72 / DPI, height=image.height * 72 / DPI)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        page.insert_image(page.rect, stream=buffer.getvalue())
    return doc.tobytes(garbage=3, deflate=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--skip-optional", action="store_true", help="do not time rotate/lang auto and deskew")
    args = parser.parse_args()

    doc = dense_document(args.pages)
    images = [imaging.render_page(doc, index, DPI) for index in range(args.pages)]
    default, everything = TaskParams(), TaskParams(outputs=OUTPUT_FORMATS)
    runs: dict[str, list[tuple[float, float]]] = {"default_outputs": [], "all_outputs": []}
    pages_all = []
    for number, image in enumerate(images, start=1):
        order = [("default_outputs", default), ("all_outputs", everything)]
        for name, params in order if number % 2 else reversed(order):
            wall, cpu, found = timed_read(image, params)
            runs[name].append((wall, cpu))
            if name == "all_outputs":
                pages_all.append(as_page(found, number))
        log("page %d: default %.2f s, all %.2f s", number, runs["default_outputs"][-1][0], runs["all_outputs"][-1][0])

    # Each optional step against default runs of its own, alternated with it page by page: the
    # machine's speed drifts over a run, and steps timed after the default ones read 10-20% fast.
    paired_default: dict[str, list[tuple[float, float]]] = {"all_outputs": runs["default_outputs"]}
    if not args.skip_optional:
        for name, params in (
            ("rotate_auto", TaskParams(rotate="auto")),
            ("lang_auto", TaskParams(lang="auto")),
            ("deskew", TaskParams(deskew=True)),
            ("old_default_threshold_500", TaskParams(threshold=500)),
        ):
            runs[name], paired_default[name] = [], []
            for number, image in enumerate(images, start=1):
                order = [(paired_default[name], default), (runs[name], params)]
                for into, params_now in order if number % 2 else reversed(order):
                    into.append(timed_read(image, params_now)[:2])
            log("%s: %.2f s per page", name, statistics.mean(w for w, _ in runs[name]))

    def summary(timed: list[tuple[float, float]]) -> dict:
        walls = [wall for wall, _ in timed]
        cpus = [cpu for _, cpu in timed]
        return {
            "pages_per_s": round(len(walls) / sum(walls), 3),
            "median_s_per_page": round(statistics.median(walls), 3),
            "tesseract_cpu_s_per_page": round(statistics.mean(cpus), 3),
        }

    figures = {name: summary(timed) for name, timed in runs.items()}
    base = figures["default_outputs"]
    for name, values in figures.items():
        if name != "default_outputs":
            paired = summary(paired_default[name])
            values["time_vs_default"] = round(values["median_s_per_page"] / paired["median_s_per_page"], 3)
            values["cpu_vs_default"] = round(values["tesseract_cpu_s_per_page"] / paired["tesseract_cpu_s_per_page"], 3)

    scan = scan_pdf(images)
    searchable = io.BytesIO()
    outputs.write_pdf(pages_all, source=scan, is_pdf=True, out_file=searchable)
    jpeg = io.BytesIO()
    images[0].save(jpeg, format="JPEG", quality=85)
    jpeg_page = io.BytesIO()
    outputs.write_pdf(pages_all[:1], source=jpeg.getvalue(), is_pdf=False, out_file=jpeg_page)

    preprocess_ms = {}
    for name, contrast, threshold in (("lut", 1.3, "auto"), ("global_cut", 1.3, 500), ("identity", 1.0, "auto")):
        started = time.perf_counter()
        for _ in range(10):
            imaging.preprocess(images[0], contrast_level=contrast, threshold=threshold)
        preprocess_ms[name] = round((time.perf_counter() - started) * 100, 2)

    result = {
        "pages": args.pages,
        "dpi": DPI,
        "page_size_px": list(images[0].size),
        "reading": figures,
        "text_layer_bytes_per_page": round(statistics.mean(len(page.text_pdf) for page in pages_all)),
        "searchable_pdf": {
            "scan_pdf_bytes": len(scan),
            "searchable_pdf_bytes": len(searchable.getvalue()),
            "size_ratio": round(len(searchable.getvalue()) / len(scan), 4),
            "jpeg_page_bytes": len(jpeg.getvalue()),
            "jpeg_searchable_pdf_bytes": len(jpeg_page.getvalue()),
        },
        "preprocess_ms_per_page": preprocess_ms,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result))
    rows = [
        Row(
            "default outputs (text, threshold auto): s per page, tesseract CPU s per page",
            f"{base['median_s_per_page']} s, {base['tesseract_cpu_s_per_page']} s",
            "",
            verdict(None),
        )
    ]
    for name, values in figures.items():
        if name == "default_outputs":
            continue
        target, ok = "", None
        if name == "old_default_threshold_500":
            # #13: the new default (adaptive threshold) must not make reading slower than the old one
            target, ok = "default <= 1.05x this", values["time_vs_default"] >= 1 / 1.05
        rows.append(
            Row(
                f"{name}: time / tesseract CPU vs default outputs",
                f"{values['time_vs_default']}x / {values['cpu_vs_default']}x",
                target,
                verdict(ok),
            )
        )
    rows.append(
        Row(
            "searchable PDF / scan PDF bytes",
            f"{len(searchable.getvalue())} / {len(scan)} = {result['searchable_pdf']['size_ratio']}x",
            "",
            verdict(None),
        )
    )
    results.write_section(
        "Outputs and preprocessing",
        rows,
        notes=f"{args.pages} dense pages at {DPI} dpi read one at a time by the worker's own code; "
        f"load average {os.getloadavg()[0]:.1f}.",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
