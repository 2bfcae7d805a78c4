"""Pure OCR: sniff the input kind, render PDF pages (pymupdf), preprocess, run tesseract.

No Django here: bytes or images in, text out. Each page is read by a process of our own (the
`tesseract` command, or libtesseract through `ocr/libtesseract.py`: see run_tesseract) in its
own process group with OMP_THREAD_LIMIT=1, registered with a `CancelScope` so that a cancel
kills it mid-page (pytesseract hides its Popen, so it is only used for version and languages).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import pymupdf
import pytesseract
from PIL import Image

from . import imaging, tesseract_text
from .imaging import page_text_layer, preprocess  # noqa: F401  (the engine's page steps)
from .page_readers import PageReader, PageReaders
from .processes import (  # noqa: F401  (re-exported: the engine's public names)
    HUGE_PAGES,
    PAGE_FILE_PREFIX,
    PAGE_PROGRAM,
    TESSERACT_ENV,
    TESSERACT_NICE,
    Cancelled,
    CancelScope,
    kill_orphans,
    limit_memory,
    lower_priority,
    page_folder_prefix,
    remove_orphan_pages,
    start_ocr_process,
)
from .slots import TesseractSlots

logger = logging.getLogger(__name__)

IMAGE_FORMATS = {"JPEG": "jpeg", "PNG": "png", "BMP": "bmp", "TIFF": "tiff", "WEBP": "webp"}


class EngineError(Exception):
    """An input the engine cannot read; the message says why, for the API client."""


class OCRFailed(Exception):
    """Tesseract exited with an error."""


# --- Input sniffing ------------------------------------------------------------------------


def sniff_kind(head: bytes) -> str | None:
    """Return 'pdf', an image format name from IMAGE_FORMATS, or None, judged by content."""
    if head.startswith(b"%PDF-") or b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def load_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode an image fully (Pillow's decompression-bomb guard stays on) and return it."""
    try:
        image = Image.open(io.BytesIO(data))
        if max_pixels and image.width * image.height > max_pixels:
            raise EngineError(
                f"Image is {image.width} x {image.height} pixels, more than the limit of {max_pixels} pixels"
            )
        if getattr(image, "n_frames", 1) > 1:
            raise EngineError(
                f"Image has {image.n_frames} frames (pages); only its first would be read: send one image per "
                "page, or a PDF"
            )
        image.load()
    except Image.DecompressionBombError as exc:
        raise EngineError(f"Image is too large to process safely: {exc}") from exc
    except EngineError:
        raise
    except Exception as exc:  # Pillow raises many types for broken files
        raise EngineError(f"File could not be decoded as an image: {exc}") from exc
    if image.format not in IMAGE_FORMATS:
        raise EngineError(f"Unsupported image format: {image.format}")
    return image


def open_pdf(data: bytes, max_pages: int | None = None) -> pymupdf.Document:
    """Open a PDF from bytes, refusing damaged, encrypted or too long documents."""
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:
        raise EngineError(f"PDF could not be opened: {exc}") from exc
    if doc.needs_pass or doc.is_encrypted:
        doc.close()
        raise EngineError("PDF is encrypted (password protected); send an unencrypted PDF")
    if doc.page_count < 1:
        doc.close()
        raise EngineError("PDF has no pages")
    if max_pages is not None and doc.page_count > max_pages:
        count = doc.page_count
        doc.close()
        raise EngineError(f"PDF has {count} pages, more than the limit of {max_pages}")
    return doc


def page_pixels(page: pymupdf.Page, dpi: int) -> tuple[int, int]:
    """Width and height in pixels of a page rendered at `dpi`."""
    return round(page.rect.width * dpi / 72), round(page.rect.height * dpi / 72)


def check_page_size(page: pymupdf.Page, dpi: int, max_pixels: int | None) -> None:
    """EngineError when the page rendered at `dpi` would be larger than `max_pixels`."""
    width, height = page_pixels(page, dpi)
    if max_pixels and width * height > max_pixels:
        raise EngineError(
            f"page {page.number + 1} is {width} x {height} pixels at {dpi} dpi, more than the limit of "
            f"{max_pixels} pixels (OCR_MAX_PAGE_PIXELS); use a lower dpi"
        )


def render_page(doc: pymupdf.Document, index: int, dpi: int, max_pixels: int | None = None) -> Image.Image:
    """Render one page (0-based) to a greyscale image at `dpi`; EngineError when the page is
    larger than `max_pixels`, or when MuPDF complained while rendering a page of a repaired
    (damaged) document, or it came out blank: its content was lost."""
    check_page_size(doc.load_page(index), dpi, max_pixels)
    pymupdf.TOOLS.mupdf_warnings()  # drop older complaints: those from here on are this page's
    image = imaging.render_page(doc, index, dpi)
    if doc.is_repaired:
        complaints = pymupdf.TOOLS.mupdf_warnings().strip()
        if complaints:
            raise EngineError(
                f"page {index + 1} of a damaged PDF could not be rendered: {complaints.splitlines()[-1][:300]}"
            )
        low, high = image.getextrema()
        if low == high:
            raise EngineError(f"page {index + 1} of a damaged PDF rendered blank: its content was lost")
    return image


# --- Tesseract -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def tesseract_version() -> str:
    return str(pytesseract.get_tesseract_version())


@functools.lru_cache(maxsize=1)
def tesseract_languages() -> tuple[str, ...]:
    return tuple(sorted(lang for lang in pytesseract.get_languages(config="") if lang != "osd"))


TESSERACT_FORMATS = {
    "text": ("txt", "txt"),
    "tsv": ("tsv", "tsv"),
    "hocr": ("hocr", "hocr"),
    "alto": ("alto", "xml"),
    "pdf": ("pdf", "pdf"),
}
SAUVOLA = "thresholding_method=2"  # tesseract 5's adaptive binarisation (threshold "auto")


@dataclass
class OCRText:
    text: str
    seconds: float
    files: dict[str, bytes] = field(default_factory=dict)  # format -> what tesseract wrote
    words: list[dict] = field(default_factory=list)  # text, confidence, bbox (tesseract_text.word)


def _run(
    argv: list[str],
    *,
    scope: CancelScope,
    slots: TesseractSlots | None,
    memory_limit_mb: int = 0,
    reader: PageReader | None = None,
) -> tuple[int, bytes, bytes]:
    """Run one OCR process in its own process group, tracked by `scope` (killed on cancel); with
    `memory_limit_mb`, its address space is capped (it fails instead of taking the host down).
    With `reader`, the page goes to that page reader's process instead (`argv` unused).

    A process killed from outside (a SIGKILL the scope did not send: this node's killer on a
    cancel, ocr/killer.py, or the kernel) waits for the watcher's word (await_verdict): a cancel
    stops the page. Without one (a cancel rolled back after its in-flight wake-up, whose attempt
    is re-queued), the page is read once more; killed again, it fails."""
    for again in (True, False):
        with slots.acquire(scope) if slots is not None else nullcontext():
            if reader is not None:
                proc = reader.start()
                with scope.track(proc):
                    returncode, stderr = reader.read()
                stdout = b""
            else:
                proc = start_ocr_process(argv, memory_limit_mb=memory_limit_mb)
                with scope.track(proc):
                    stdout, stderr = proc.communicate()
                returncode = proc.returncode
        if returncode != -signal.SIGKILL:
            break
        scope.await_verdict()
        if again:
            logger.warning("OCR process %d killed from outside, no cancel: page read again", proc.pid)
    scope.check()
    return returncode, stdout, stderr


def _failure(returncode: int, stderr: bytes) -> OCRFailed:
    message = stderr.decode(errors="replace").strip().splitlines()
    return OCRFailed(f"tesseract exited with {returncode}: {message[-1] if message else ''}")


# Formats written by tesseract's own document renderers: a page that asks for one is read by the
# `tesseract` command; any other by PAGE_PROGRAM (the same text and words for less CPU).
RENDERED_FORMATS = ("hocr", "alto", "pdf")


def run_tesseract(
    image: Image.Image,
    *,
    lang: str,
    dpi: int,
    scope: CancelScope | None = None,
    tmpdir: str | None = None,
    slots: TesseractSlots | None = None,
    formats: tuple[str, ...] = (),
    adaptive: bool = False,
    memory_limit_mb: int = 0,
    readers: PageReaders | None = None,
) -> OCRText:
    """OCR one preprocessed image in a process of its own that `scope.cancel()` can kill.

    The text and the words always, and each of `formats` (tsv, hocr, alto, pdf: a text-only PDF
    page) from the same run, read back from files in a temporary folder under `tmpdir` that is
    then deleted. Read by libtesseract (PAGE_PROGRAM) unless a format needs the `tesseract`
    command (RENDERED_FORMATS) or the language is written right to left (its words are only
    known as the TSV has them).
    `adaptive` lets tesseract binarise with Sauvola's local thresholds.
    With `slots`, a slot is held only while tesseract runs (not while its input is written).
    With `readers` (ocr/page_readers.py), a page read by libtesseract goes to a reader that
    stays (its folder, not a temporary one; the readers' own memory cap), the slot held from
    the page's writing on."""
    started = time.perf_counter()
    scope = scope or CancelScope()
    scope.check()
    by_command = any(name in formats for name in RENDERED_FORMATS) or not tesseract_text.left_to_right(lang)
    options = {"lang": lang, "dpi": dpi, "formats": formats, "adaptive": adaptive, "memory_mb": memory_limit_mb}
    if readers is not None and not by_command:
        # the slot first: a task never has more readers than slots (the page is written in it)
        with slots.acquire(scope) if slots is not None else nullcontext(), readers.borrow(lang) as reader:
            path = write_page(image, reader.folder)
            execute = functools.partial(_run, scope=scope, slots=None)  # the slot is held already
            text, words, files = _by_library(execute, path, reader.outbase, reader=reader, **options)
        return OCRText(text=text.strip(), seconds=time.perf_counter() - started, files=files, words=words)
    # named after this process and the task (page_folder_prefix)
    workdir = tempfile.mkdtemp(prefix=page_folder_prefix(scope.label), dir=tmpdir)
    try:
        path = write_page(image, workdir)
        read = _by_command if by_command else _by_library
        execute = functools.partial(_run, scope=scope, slots=slots)
        text, words, files = read(execute, path, os.path.join(workdir, "out"), **options)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return OCRText(text=text.strip(), seconds=time.perf_counter() - started, files=files, words=words)


def write_page(image: Image.Image, workdir: str) -> str:
    """The page as the file tesseract reads: a BMP, the format leptonica reads fastest. For a
    300 dpi page (8.4 Mpx, greyscale) here: BMP written in 4 ms and read in 10-13 ms, PGM in
    14 and 130 ms (leptonica reads PNM pixel by pixel), PNG in 52 and 25-31 ms; stdin is slower
    still. Same text, words and TSV from each."""
    path = os.path.join(workdir, "page.bmp")
    image.save(path, format="BMP")
    return path


def _read(outbase: str, suffix: str) -> bytes:
    with open(f"{outbase}.{suffix}", "rb") as handle:
        return handle.read()


def _by_library(execute, path: str, outbase: str, *, lang, dpi, formats, adaptive, memory_mb, reader=None):
    """PAGE_PROGRAM: the text and the words always, the TSV when asked for; it caps its own
    memory before libtesseract loads (so no cap from outside). With `reader`, its process."""
    if reader is not None:
        returncode, _, stderr = execute([], reader=reader.asking(dpi, adaptive, "tsv" in formats))
    else:
        flags = ["adaptive"] * adaptive + ["tsv"] * ("tsv" in formats)
        returncode, _, stderr = execute(
            [sys.executable, "-I", "-S", PAGE_PROGRAM, path, outbase, lang, str(dpi), str(memory_mb), *flags]
        )
    if returncode != 0:
        raise _failure(returncode, stderr)
    files = {"tsv": _read(outbase, "tsv")} if "tsv" in formats else {}
    words = tesseract_text.words_from_rows(_read(outbase, "words"))
    return _read(outbase, "txt").decode(errors="replace"), words, files


def _by_command(execute, path: str, outbase: str, *, lang, dpi, formats, adaptive, memory_mb):
    """tesseract's TSV always (the words), its text only where it cannot be rebuilt from the TSV;
    its memory is capped from outside as it starts."""
    wanted = ["tsv", *(name for name in RENDERED_FORMATS if name in formats)]
    text_from_words = tesseract_text.left_to_right(lang)
    if not text_from_words:
        wanted.insert(0, "text")
    argv = ["tesseract", path, outbase, "-l", lang, "--dpi", str(dpi)]
    if adaptive:
        argv += ["-c", SAUVOLA]
    if "pdf" in wanted:
        argv += ["-c", "textonly_pdf=1"]
    returncode, _, stderr = execute(argv + [TESSERACT_FORMATS[name][0] for name in wanted], memory_limit_mb=memory_mb)
    if returncode != 0:
        raise _failure(returncode, stderr)
    files = {name: _read(outbase, TESSERACT_FORMATS[name][1]) for name in wanted}
    if text_from_words:
        text = tesseract_text.text_from_tsv(files["tsv"])
    else:
        text = files.pop("text").decode(errors="replace")
    words = tesseract_text.words_from_tsv(files["tsv"] if "tsv" in formats else files.pop("tsv"))
    return text, words, files


@dataclass
class Orientation:
    rotation: int  # degrees clockwise that turn the page upright (0, 90, 180, 270)
    script: str | None
    confidence: float


OSD_MAX_SIDE = 1800  # OSD costs about as much as OCR at full size; half a 300 dpi page answers the same


def detect_orientation(
    image: Image.Image,
    *,
    dpi: int,
    scope: CancelScope | None = None,
    tmpdir: str | None = None,
    slots: TesseractSlots | None = None,
) -> Orientation:
    """Orientation and script of a page (tesseract --psm 0, the `osd` data), cancellable like OCR.
    A page with too little text answers rotation 0 and no script."""
    scope = scope or CancelScope()
    scope.check()
    factor = max(1.0, max(image.size) / OSD_MAX_SIDE)
    small = image.resize((round(image.width / factor), round(image.height / factor))) if factor > 1 else image
    workdir = tempfile.mkdtemp(prefix=page_folder_prefix(scope.label, "osd"), dir=tmpdir)
    try:
        path = write_page(small, workdir)
        argv = ["tesseract", path, "stdout", "--psm", "0", "--dpi", str(max(70, round(dpi / factor)))]
        returncode, stdout, stderr = _run(argv, scope=scope, slots=slots)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    found = dict(line.split(":", 1) for line in stdout.decode(errors="replace").splitlines() if ":" in line)
    if returncode != 0 or "Rotate" not in found:
        logger.info("orientation not detected: %s", stderr.decode(errors="replace").strip()[-200:])
        return Orientation(rotation=0, script=None, confidence=0.0)
    try:
        rotation = int(found["Rotate"].strip()) % 360
        confidence = float(found.get("Orientation confidence", "0").strip())
    except ValueError:
        return Orientation(rotation=0, script=None, confidence=0.0)
    return Orientation(rotation=rotation, script=(found.get("Script") or "").strip() or None, confidence=confidence)


@functools.lru_cache(maxsize=1)
def osd_available() -> bool:
    return "osd" in pytesseract.get_languages(config="")
