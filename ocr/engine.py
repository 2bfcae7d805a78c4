"""Pure OCR: sniff the input kind, render PDF pages (pymupdf), preprocess, run tesseract.

No Django here: bytes or images in, text out. Tesseract runs as our own subprocess in its own
process group with OMP_THREAD_LIMIT=1, registered with a `CancelScope` so that a cancel kills
it mid-page (pytesseract hides its Popen, so it is only used for version and languages).
"""

from __future__ import annotations

import fcntl
import functools
import io
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import pymupdf
import pytesseract
from PIL import Image

from .imaging import page_text_layer, preprocess, render_page  # noqa: F401  (the engine's page steps)

logger = logging.getLogger(__name__)

IMAGE_FORMATS = {"JPEG": "jpeg", "PNG": "png", "BMP": "bmp", "TIFF": "tiff", "WEBP": "webp"}
TESSERACT_ENV = {**os.environ, "OMP_THREAD_LIMIT": "1"}


class EngineError(Exception):
    """An input the engine cannot read; the message says why, for the API client."""


class Cancelled(Exception):
    """The work was cancelled while it ran."""


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


def load_image(data: bytes) -> Image.Image:
    """Decode an image fully (Pillow's decompression-bomb guard stays on) and return it."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError as exc:
        raise EngineError(f"Image is too large to process safely: {exc}") from exc
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


# --- Tesseract -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def tesseract_version() -> str:
    return str(pytesseract.get_tesseract_version())


@functools.lru_cache(maxsize=1)
def tesseract_languages() -> tuple[str, ...]:
    return tuple(sorted(lang for lang in pytesseract.get_languages(config="") if lang != "osd"))


class CancelScope:
    """Tracks the tesseract processes (and other closable work, such as an LLM's HTTP stream)
    of one task so that a cancel can stop them at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._closers: set[Callable[[], None]] = set()
        self.cancelled = threading.Event()

    def cancel(self) -> int:
        """Mark cancelled, run the closers, kill every running process group; return how many were killed."""
        with self._lock:
            self.cancelled.set()
            procs = list(self._procs)
            closers = list(self._closers)
        for closer in closers:
            _run_closer(closer)
        for proc in procs:
            _kill_group(proc)
        return len(procs)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()

    def running(self) -> int:
        with self._lock:
            return len(self._procs)

    @contextmanager
    def track(self, proc: subprocess.Popen) -> Iterator[None]:
        with self._lock:
            self._procs.add(proc)
            cancelled = self.cancelled.is_set()
        if cancelled:  # cancelled between our check and the process start
            _kill_group(proc)
        try:
            yield
        finally:
            with self._lock:
                self._procs.discard(proc)

    @contextmanager
    def on_cancel(self, closer: Callable[[], None]) -> Iterator[None]:
        """Call `closer` (from the cancelling thread) if the scope is cancelled while the block runs."""
        with self._lock:
            self._closers.add(closer)
            cancelled = self.cancelled.is_set()
        if cancelled:
            _run_closer(closer)
        try:
            yield
        finally:
            with self._lock:
                self._closers.discard(closer)


def _run_closer(closer: Callable[[], None]) -> None:
    try:
        closer()
    except Exception:  # a closer must never stop the others or the process kills
        logger.warning("cancel closer %r failed", closer, exc_info=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class TesseractSlots:
    """A host-wide counting semaphore made of flock'ed files: at most `count` tesseracts run.

    flock is released by the kernel when a process dies, so a killed worker never leaks a slot.
    """

    def __init__(self, directory: str, count: int) -> None:
        self.directory = directory
        self.count = count
        os.makedirs(directory, exist_ok=True)

    @contextmanager
    def acquire(self, scope: CancelScope | None = None, poll: float = 0.005) -> Iterator[int]:
        """Hold one free slot; waits (polling every `poll` s, cancellable through `scope`)."""
        fds = [
            os.open(os.path.join(self.directory, f"slot-{slot}"), os.O_CREAT | os.O_RDWR, 0o666)
            for slot in range(self.count)
        ]
        held = None
        try:
            while held is None:
                if scope is not None:
                    scope.check()
                for fd in fds:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    held = fd
                    break
                else:
                    time.sleep(poll)
            yield held
        finally:
            for fd in fds:
                os.close(fd)  # closing the held descriptor releases its lock


# Formats tesseract writes in its one run, by our output name -> (config name, file suffix).
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


def _run(argv: list[str], *, scope: CancelScope, slots: TesseractSlots | None) -> tuple[int, bytes, bytes]:
    """Run one tesseract in its own process group, tracked by `scope` (killed on cancel)."""
    with slots.acquire(scope) if slots is not None else nullcontext():
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=TESSERACT_ENV,
            start_new_session=True,
        )
        with scope.track(proc):
            stdout, stderr = proc.communicate()
    scope.check()
    return proc.returncode, stdout, stderr


def _failure(returncode: int, stderr: bytes) -> OCRFailed:
    message = stderr.decode(errors="replace").strip().splitlines()
    return OCRFailed(f"tesseract exited with {returncode}: {message[-1] if message else ''}")


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
) -> OCRText:
    """OCR one preprocessed image with a tesseract subprocess that `scope.cancel()` can kill.

    The text always, and each of `formats` (tsv, hocr, alto, pdf: a text-only PDF page) from the
    same run, read back from files in a temporary folder under `tmpdir` that is then deleted.
    `adaptive` lets tesseract binarise with Sauvola's local thresholds.
    With `slots`, a slot is held only while tesseract runs (not while its input is written)."""
    started = time.perf_counter()
    scope = scope or CancelScope()
    scope.check()
    wanted = ["text", *(name for name in TESSERACT_FORMATS if name in formats and name != "text")]
    workdir = tempfile.mkdtemp(prefix="page-", dir=tmpdir)
    try:
        # A PGM file is read 15-40% faster by tesseract than the same image on stdin.
        path = os.path.join(workdir, "page.pgm")
        image.save(path, format="PPM")
        outbase = os.path.join(workdir, "out")
        argv = ["tesseract", path, outbase, "-l", lang, "--dpi", str(dpi)]
        if adaptive:
            argv += ["-c", SAUVOLA]
        if "pdf" in wanted:
            argv += ["-c", "textonly_pdf=1"]
        argv += [TESSERACT_FORMATS[name][0] for name in wanted]
        returncode, _, stderr = _run(argv, scope=scope, slots=slots)
        if returncode != 0:
            raise _failure(returncode, stderr)
        files = {}
        for name in wanted:
            with open(f"{outbase}.{TESSERACT_FORMATS[name][1]}", "rb") as handle:
                files[name] = handle.read()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = files.pop("text").decode(errors="replace").strip()
    return OCRText(text=text, seconds=time.perf_counter() - started, files=files)


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
    workdir = tempfile.mkdtemp(prefix="osd-", dir=tmpdir)
    try:
        path = os.path.join(workdir, "page.pgm")
        small.save(path, format="PPM")
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


def kill_orphans(pages_dir: str) -> int:
    """Kill tesseract processes reading a page from `pages_dir` whose worker is gone.

    A worker killed with SIGKILL leaves its tesseract running (it has its own session): its
    parent becomes init or a subreaper, no longer a Python process."""
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            if len(argv) < 2 or os.path.basename(argv[0]) != b"tesseract":
                continue
            if not argv[1].decode(errors="replace").startswith(pages_dir):
                continue
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{parent}/cmdline", "rb") as handle:
                parent_program = handle.read().split(b"\0")[0]
        except (OSError, ValueError, IndexError):
            continue
        if parent == 1 or b"python" not in os.path.basename(parent_program):
            try:
                os.killpg(int(entry), signal.SIGKILL)
                killed += 1
                logger.warning("killed orphan tesseract %s (%s)", entry, argv[1].decode(errors="replace"))
            except (ProcessLookupError, PermissionError):
                pass
            # its page folder (input and output files) had no one left to delete it
            folder = os.path.dirname(argv[1].decode(errors="replace"))
            if os.path.dirname(folder) == pages_dir.rstrip("/"):
                shutil.rmtree(folder, ignore_errors=True)
    return killed
