"""The worker's page pipeline: `PagePipeline` renders pages one by one in the job's thread and
OCRs up to OCR_WORKERS of them at once (one more rendered and waiting, so a freed tesseract slot
never waits for a render), by page readers that stay for the document's pages
(ocr/page_readers.py); LLM kinds then send each page's text to the model in the same pool
thread, its HTTP stream registered with the job's CancelScope (which ocr/watcher.py cancels).
Every page ends in one `record()`.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from django.conf import settings

from . import engine, imaging, llm, reader, services
from .models import OCRTask, PageSource
from .refine import PageText, refine_page
from .services import PageOutcome

logger = logging.getLogger(__name__)


def pages_dir() -> str:
    """Where page images for tesseract go: under the slot folder, so orphans can be told apart."""
    path = os.path.join(settings.OCR_SLOT_DIR, "pages")
    os.makedirs(path, exist_ok=True)
    return path


def image_dpi(image) -> int:
    """The resolution an image says it has, when plausible; else 300."""
    dpi = image.info.get("dpi")
    try:
        value = int(round(float(dpi[0]))) if dpi else 0
    except (TypeError, ValueError):
        value = 0
    return value if 70 <= value <= 1200 else 300


class PagePipeline:
    """Reads the pages of one attempt of one task; `record()` is where each page ends."""

    def __init__(self, task: OCRTask, scope: engine.CancelScope) -> None:
        self.task = task
        self.kind = task.kind
        self.params = task.parameters
        self.scope = scope
        self.slots = engine.TesseractSlots(settings.OCR_SLOT_DIR, settings.OCR_WORKERS)
        self.readers: engine.PageReaders | None = None  # while run_pdf runs

    # --- one page's steps (pool threads) ---

    def ocr(self, image, dpi: int) -> reader.PageRead:
        return reader.read_page(
            image,
            params=self.params,
            dpi=dpi,
            scope=self.scope,
            tmpdir=pages_dir(),
            slots=self.slots,
            memory_limit_mb=settings.OCR_TESSERACT_MAX_MEMORY_MB,
            readers=self.readers,
        )

    def refine_text(self, text: str, source: str, image) -> PageText:
        """LLM kinds: the model corrects the page's text (cancellable, falls back to `text`)."""
        if not self.kind.uses_llm:
            return PageText(text=text, source=source)
        return refine_page(
            text,
            source=source,
            image=image,
            prompt=self.params.prompt,
            model=self.params.model,
            config=llm.config_from_settings(),
            scope=self.scope,
        )

    def read(self, image, dpi: int) -> PageText:
        found = self.ocr(image, dpi)
        page = self.refine_text(found.text, PageSource.OCR, image)
        page.extra = {**found.details(), **page.extra}
        page.outputs = self.stored_outputs(found.words, found.size, dpi, files=found.files)
        page.text_pdf = found.files.get("pdf")
        return page

    def stored_outputs(self, words: list[dict], size, dpi: int, *, files: dict | None = None) -> dict:
        """What OCRPage.outputs keeps of a page: the requested formats (words also when a
        document is assembled from them, as for text-layer pages), and the page's pixel size."""
        params = self.params
        stored: dict = {"size": list(size), "dpi": dpi}
        from_words = files is None and any(params.wants(name) for name in ("hocr", "alto", "tsv"))
        if params.wants("words") or from_words:
            stored["words"] = words
        for name in ("hocr", "alto", "tsv"):
            if files and name in files:
                stored[name] = files[name].decode(errors="replace")
        return stored

    # --- recording ---

    def record(self, page_number: int, page: PageText, started: float) -> bool:
        """The one write of a page's result (refused once the task is no longer this attempt's)."""
        extra = page.extra
        if not self.kind.is_pdf and self.kind.uses_llm:
            # a one-page result has no page list: it says itself where its text came from, and why
            extra = {**extra, "source": page.source, "error_message": page.error}
        outcome = PageOutcome(
            text=page.text,
            source=page.source,
            processing_time=time.perf_counter() - started,
            error=page.error,
            extra=extra,
            outputs=page.outputs,
            text_pdf=page.text_pdf,
        )
        return self.write(page_number, outcome)

    def record_failure(self, page_number: int, exc: Exception, started: float) -> bool:
        logger.warning("task %s: page %d failed: %s", self.task.pk, page_number, exc)
        outcome = PageOutcome(
            text="",
            source=PageSource.OCR,
            processing_time=time.perf_counter() - started,
            success=False,
            error=str(exc),
        )
        return self.write(page_number, outcome)

    def write(self, page_number: int, outcome: PageOutcome) -> bool:
        return services.page_record(
            task_id=self.task.pk, page_number=page_number, outcome=outcome, attempt=self.task.attempt
        )

    # --- documents ---

    def run_image(self, data: bytes) -> None:
        started = time.perf_counter()
        try:
            image = engine.load_image(data, settings.OCR_MAX_PAGE_PIXELS)
            page = self.read(image, image_dpi(image))
        except (engine.EngineError, engine.OCRFailed) as exc:
            self.record_failure(1, exc, started)
            return
        self.record(1, page, started)

    def run_pdf(self, doc, page_numbers: list[int]) -> None:
        self.readers = engine.PageReaders(
            self.scope, tmpdir=pages_dir(), memory_mb=settings.OCR_TESSERACT_MAX_MEMORY_MB
        )
        try:
            self._run_pages(doc, page_numbers)
        finally:
            self.readers.close()  # the pool's threads are done: no reader is busy
            self.readers = None

    def _run_pages(self, doc, page_numbers: list[int]) -> None:
        workers = settings.OCR_WORKERS
        in_flight: dict[Future, tuple[int, float]] = {}

        def collect(block: bool) -> None:
            done, _ = wait(list(in_flight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for future in done:
                page_number, started = in_flight.pop(future)
                try:
                    page = future.result()
                except engine.Cancelled:
                    raise
                except Exception as exc:
                    self.record_failure(page_number, exc, started)
                    continue
                self.record(page_number, page, started)

        with ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix=f"ocr-{self.task.pk}") as pool:
            try:
                for page_number in page_numbers:
                    while len(in_flight) > workers:
                        collect(block=True)
                    if in_flight:
                        collect(block=False)
                    self.scope.check()
                    started = time.perf_counter()
                    try:
                        work = self._prepare(pool, doc, page_number, started)
                    except Exception as exc:  # a damaged page fails alone
                        self.record_failure(page_number, exc, started)
                        continue
                    if work is not None:
                        in_flight[work] = (page_number, started)
                while in_flight:
                    collect(block=True)
            except engine.Cancelled:
                self.scope.cancel()
                raise
            finally:
                if self.scope.cancelled.is_set():
                    for future in in_flight:
                        future.cancel()

    def _prepare(self, pool: ThreadPoolExecutor, doc, page_number: int, started: float) -> Future | None:
        """Read the page's text layer (recorded at once), or render it and hand it to the pool."""
        if self.params.text_layer == "auto":
            text = engine.page_text_layer(doc, page_number - 1)
            if text and self.kind.uses_llm:  # the model refines text layers too
                return pool.submit(self.refine_text, text, PageSource.TEXT_LAYER, None)
            if text:
                self.record(page_number, self.text_layer_page(doc, page_number, text), started)
                return None
        image = engine.render_page(doc, page_number - 1, self.params.dpi, settings.OCR_MAX_PAGE_PIXELS)
        return pool.submit(self.read, image, self.params.dpi)

    def text_layer_page(self, doc, page_number: int, text: str) -> PageText:
        """A page read from its text layer: its words in render pixels, its size at the task's dpi."""
        dpi = self.params.dpi
        rect = doc.load_page(page_number - 1).rect
        size = (round(rect.width * dpi / 72), round(rect.height * dpi / 72))
        words = imaging.text_layer_words(doc, page_number - 1, dpi) if self.wants_words() else []
        page = PageText(text=text, source=PageSource.TEXT_LAYER)
        page.outputs = self.stored_outputs(words, size, dpi)
        return page

    def wants_words(self) -> bool:
        return any(self.params.wants(name) for name in ("words", "hocr", "alto", "tsv"))
