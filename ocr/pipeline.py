"""The worker's side of one task: the cancel watcher and the page pipeline.

`CancelWatcher` polls the task's row (the database is the truth) every OCR_CANCEL_POLL_SECONDS,
woken at once by the task's Redis wake-up channel, and once the task is no longer `processing`
in its attempt (cancelled by anyone, failed, or taken over by another worker) kills the task's
tesseract processes through the CancelScope. It also enforces the deadline and heartbeats.

`PagePipeline` renders pages one by one in the job's thread and OCRs up to OCR_WORKERS of them
at once (one more rendered and waiting, so a freed tesseract slot never waits for a render);
LLM kinds then send each page's text to the model in the same pool thread, its HTTP stream
registered with the same CancelScope. Every page ends in one `record()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from . import engine, imaging, llm, queue, reader, services, upkeep
from .models import CancelledBy, OCRTask, PageSource, TaskStatus
from .refine import PageText, refine_page
from .services import PageOutcome

logger = logging.getLogger(__name__)


LOCK_WAIT_MS = 2000  # a cancel transaction holds the task's row for milliseconds


class CancelWatcher(threading.Thread):
    """Watches one attempt of a task; on cancel (or deadline) kills its tesseract processes.

    Between polls it listens on the task's Redis wake-up channel, so that a cancel is seen at
    once; the row stays the truth, and polling alone still works when Redis does not answer."""

    def __init__(self, task: OCRTask, scope: engine.CancelScope) -> None:
        super().__init__(name=f"cancel-watcher-{task.pk}", daemon=True)
        self.task = task
        self.scope = scope
        self.stopped = threading.Event()
        self.detected_at: float | None = None
        self._poll_sql: str | None = None
        self.limits = task.parameters.limits or {}
        self._poll_pk = None
        self.next_beat = 0.0

    def run(self) -> None:
        poll = settings.OCR_CANCEL_POLL_SECONDS
        self.next_beat = time.monotonic() + settings.OCR_HEARTBEAT_SECONDS
        wakeups = queue.subscribe_task_wakeups(self.task.pk)
        database_lost = False
        try:
            while not self.stopped.is_set():
                woke = None
                if wakeups is not None:
                    woke = queue.wait_for_wakeup(wakeups, timeout=poll)
                else:
                    self.stopped.wait(poll)
                if self.stopped.is_set():
                    return
                if woke == queue.WAKE_IN_FLIGHT and connection.vendor == "postgresql":
                    self.stop_in_flight()
                    return
                try:
                    if self.check():
                        return
                except (OperationalError, InterfaceError) as exc:  # a database restart: keep watching
                    if not database_lost:
                        logger.warning("task %s: cancel watcher lost the database (%s)", self.task.pk, exc)
                    database_lost = True
                    connection.close()  # the next poll opens a new connection
                    continue
                if database_lost:
                    logger.info("task %s: cancel watcher reached the database again", self.task.pk)
                    database_lost = False
        except Exception:
            logger.exception("task %s: cancel watcher failed", self.task.pk)
        finally:
            if wakeups is not None:
                wakeups.close()
            connection.close()

    def stop_in_flight(self) -> None:
        """A cancel has changed the task's row and woken us before its commit (PostgreSQL, see
        queue.wake_task_worker): kill now, then confirm on the commit (poll_row waits for it).

        Only a cancel that changed the row sends this wake-up, so the kill does not wait for the
        rest of its transaction (the event, result, audit and feed rows, the durable commit).
        Should that transaction roll back after all, the attempt is re-queued at once (pages
        done are kept) instead of stopped; re-queuing is conditional on the committed row, so a
        cancel that commits late still wins. A database lost meanwhile leaves the attempt to
        the sweeper's lost-work path, as for any dead worker."""
        self.detected_at = time.monotonic()
        killed = self.scope.cancel()
        try:
            row = self.poll_row(wait_for_commit=True)
            if row is not None and row[1] == self.task.attempt and row[0] == TaskStatus.PROCESSING:
                logger.warning(
                    "task %s: the cancel that stopped attempt %d rolled back", self.task.pk, self.task.attempt
                )
                self.requeue()
                return
        except DatabaseError as exc:
            logger.warning("task %s: stop not confirmed, database lost (%s)", self.task.pk, exc)
            return
        why = row[0] if row is not None and row[1] == self.task.attempt else "attempt taken over by another worker"
        logger.info("task %s: stop detected in flight (%s), killed %d tesseract", self.task.pk, why, killed)

    def requeue(self) -> None:
        """Hand the stopped attempt back to the queue (pages done are kept)."""
        services.task_requeue(task_id=self.task.pk, attempt=self.task.attempt)

    def check(self) -> bool:
        """One look at the task's row: deadline, limits, heartbeat; True once the task is no
        longer running in this attempt and its tesseracts were killed (the watcher is done)."""
        row = self.poll_row()
        ours = row is not None and row[1] == self.task.attempt  # re-queued as lost: another worker's now
        running = ours and row[0] == TaskStatus.PROCESSING
        deadline = self.task.deadline_at
        if running and deadline and timezone.now() >= deadline:
            upkeep.task_cancel_if_expired(task=self.task)
            return False  # the next poll sees the cancel
        breach = self.limit_exceeded() if running else None
        if breach:
            logger.info("task %s: %s", self.task.pk, breach)
            services.task_cancel_if_active(task_id=self.task.pk, reason=breach, cancelled_by=CancelledBy.SYSTEM)
            return False
        if running:
            if time.monotonic() >= self.next_beat:
                self.heartbeat()
                self.next_beat = time.monotonic() + settings.OCR_HEARTBEAT_SECONDS
            return False
        if self.stopped.is_set():
            return True
        self.detected_at = time.monotonic()
        killed = self.scope.cancel()
        why = row[0] if ours else "attempt taken over by another worker"
        logger.info("task %s: stop detected (%s), killed %d tesseract", self.task.pk, why, killed)
        return True

    def heartbeat(self) -> None:
        services.task_heartbeat(task_id=self.task.pk, attempt=self.task.attempt)

    def cpu_seconds(self) -> float:
        """CPU seconds of the task's OCR processes so far (those of this job)."""
        return self.scope.cpu_seconds()

    def limit_exceeded(self) -> str | None:
        """The cancel reason when the task went past one of its `request.limits`, else None."""
        limits = self.limits
        max_seconds = limits.get("max_processing_seconds")
        if max_seconds and self.task.started_at:
            if (timezone.now() - self.task.started_at).total_seconds() > max_seconds:
                return f"Limit exceeded: max_processing_seconds={max_seconds}"
        max_cpu = limits.get("max_cpu_seconds")
        if max_cpu and self.cpu_seconds() > max_cpu:
            return f"Limit exceeded: max_cpu_seconds={max_cpu}"
        return None

    def poll_query(self) -> tuple[str, list, str]:
        """The row poll: SQL, its parameters, and the clause that makes it wait for a lock on
        the task's row. Plain SQL: this runs 20 times a second per task, and the ORM's query
        building cost about 3x the CPU of the query itself."""
        if self._poll_sql is None:
            table = connection.ops.quote_name(OCRTask._meta.db_table)
            self._poll_sql = f"SELECT status, attempt FROM {table} WHERE id = %s"  # noqa: S608
            self._poll_pk = OCRTask._meta.pk.get_db_prep_value(self.task.pk, connection)
        return self._poll_sql, [self._poll_pk], "FOR SHARE"

    def poll_row(self, *, wait_for_commit: bool = False) -> tuple[str, int] | None:
        """(status, attempt) of the task.

        `wait_for_commit` (PostgreSQL): a transaction that changed the row has woken us before
        its commit; FOR SHARE waits for its lock on the row and then reads the committed row
        (see stop_in_flight). Bounded by LOCK_WAIT_MS; after it (or on any error) the plain read."""
        sql, params, lock = self.poll_query()
        if wait_for_commit and connection.vendor == "postgresql":
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT_MS}ms'")
                    cursor.execute(f"{sql} {lock}", params)
                    return cursor.fetchone()
            except DatabaseError as exc:
                logger.info("task %s: lock-waiting read failed (%s), plain read", self.task.pk, exc)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    def stop(self) -> None:
        self.stopped.set()


def run_watched(task: OCRTask, watcher: CancelWatcher, work, finish) -> None:
    """Run `work()` under `watcher`, then `finish()` unless a cancel stopped the work first;
    no tesseract outlives this call, whatever ended it."""
    watcher.start()
    try:
        work()
        watcher.stop()
        finish()  # guarded: a no-op when a cancel won
    except engine.Cancelled:
        pass
    finally:
        watcher.stop()
        watcher.scope.cancel()
    if watcher.detected_at is not None:
        stopped_ms = (time.monotonic() - watcher.detected_at) * 1000
        # A stop seen in flight is confirmed by the watcher once the cancel commits; before
        # that, the conditional UPDATE below would see the row still `processing`.
        watcher.join(LOCK_WAIT_MS / 1000 + 5)
        services.task_work_stopped(task_id=task.pk)
        logger.info("task %s: work stopped %.0f ms after the cancel was detected", task.pk, stopped_ms)


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
