"""django-q2 entry points: load the task, run its pages through the engine, record results.

A watcher thread polls the task's status (the database is the truth) every
OCR_CANCEL_POLL_SECONDS and, once the task is no longer `processing` (cancelled by anyone) or
its deadline passed, kills the task's tesseract processes through the CancelScope.
LLM kinds: each page's text then goes to the model (ocr/llm.py) in the same pool thread; its
HTTP stream is registered with the same CancelScope, so a cancel closes it at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from . import engine, llm, queue, services
from .models import OCRPage, OCRTask, PageSource, TaskStatus, TaskType

logger = logging.getLogger(__name__)


def _slots() -> engine.TesseractSlots:
    return engine.TesseractSlots(settings.OCR_SLOT_DIR, settings.OCR_WORKERS)


class CancelWatcher(threading.Thread):
    """Polls the task row; on cancel (or deadline) kills the task's tesseract processes.

    Between polls it listens on the task's Redis wake-up channel, so that a cancel is seen at
    once; the row stays the truth, and polling alone still works when Redis does not answer."""

    def __init__(self, task: OCRTask, scope: engine.CancelScope) -> None:
        super().__init__(name=f"cancel-watcher-{task.pk}", daemon=True)
        self.task = task
        self.scope = scope
        self.stopped = threading.Event()
        self.detected_at: float | None = None
        self._poll_sql: str | None = None
        self._poll_pk = None

    def run(self) -> None:
        poll = settings.OCR_CANCEL_POLL_SECONDS
        next_beat = time.monotonic() + settings.OCR_HEARTBEAT_SECONDS
        deadline = self.task.deadline_at
        wakeups = queue.subscribe_task_wakeups(self.task.pk)
        try:
            while not self.stopped.is_set():
                if wakeups is not None:
                    queue.wait_for_wakeup(wakeups, timeout=poll)
                else:
                    self.stopped.wait(poll)
                if self.stopped.is_set():
                    return
                row = self.poll_row()
                # a task re-queued as lost and taken by another worker is no longer ours either
                status = row[0] if row and row[1] == self.task.attempt else "taken over"
                if status == TaskStatus.PROCESSING and deadline and timezone.now() >= deadline:
                    services.task_cancel_if_expired(task=self.task)
                    continue  # the next poll sees the cancel
                if status == TaskStatus.PROCESSING and time.monotonic() >= next_beat:
                    services.task_heartbeat(task_id=self.task.pk, attempt=self.task.attempt)
                    next_beat = time.monotonic() + settings.OCR_HEARTBEAT_SECONDS
                if status != TaskStatus.PROCESSING and not self.stopped.is_set():
                    self.detected_at = time.monotonic()
                    killed = self.scope.cancel()
                    logger.info(
                        "task %s: cancellation detected (%s), killed %d tesseract", self.task.pk, status, killed
                    )
                    return
        except Exception:
            logger.exception("task %s: cancel watcher failed", self.task.pk)
        finally:
            if wakeups is not None:
                wakeups.close()
            connection.close()

    def poll_row(self) -> tuple[str, int] | None:
        """(status, attempt) of the task, by plain SQL: this runs 20 times a second per task,
        and the ORM's query building cost about 3x the CPU of the query itself."""
        if self._poll_sql is None:
            table = connection.ops.quote_name(OCRTask._meta.db_table)
            self._poll_sql = f"SELECT status, attempt FROM {table} WHERE id = %s"  # noqa: S608
            self._poll_pk = OCRTask._meta.pk.get_db_prep_value(self.task.pk, connection)
        with connection.cursor() as cursor:
            cursor.execute(self._poll_sql, [self._poll_pk])
            return cursor.fetchone()

    def stop(self) -> None:
        self.stopped.set()


def process_task(task_id: str) -> None:
    """The job: OCR every page of one task unless it is cancelled first."""
    close_old_connections()
    task = OCRTask.objects.filter(pk=task_id).first()
    if task is None:
        logger.warning("task %s: not found, job dropped", task_id)
        return
    if task.status != TaskStatus.PENDING:
        logger.info("task %s: %s before start, skipped without work", task_id, task.status)
        return
    if services.task_cancel_if_expired(task=task):
        logger.info("task %s: deadline passed before start", task_id)
        return
    try:
        _run(task)
    except Exception as exc:  # never leave a task processing behind
        logger.exception("task %s: unexpected error", task_id)
        services.task_fail(task_id=task_id, error=f"Internal error: {exc}")
    except BaseException:  # django-q2's timeout (SIGALRM -> SystemExit), a worker shutdown
        message = f"Job interrupted (timeout of {settings.OCR_JOB_TIMEOUT} s, or worker shutdown)"
        logger.error("task %s: %s", task_id, message)
        services.task_fail(task_id=task_id, error=message)
        raise


def _run(task: OCRTask) -> None:
    params = task.params
    with task.input_file.open("rb") as handle:
        data = handle.read()
    if task.is_pdf:
        try:
            doc = engine.open_pdf(data)
        except engine.EngineError as exc:
            services.task_fail(task_id=task.pk, error=str(exc))
            return
        page_numbers = params.get("page_select") or list(range(1, doc.page_count + 1))
    else:
        doc, page_numbers = None, [1]

    started = services.task_start(task_id=task.pk, total_pages=len(page_numbers))
    if started is None:
        logger.info("task %s: cancelled before start, skipped without work", task.pk)
        return
    done = set(OCRPage.objects.filter(task_id=task.pk).values_list("page_number", flat=True))
    page_numbers = [number for number in page_numbers if number not in done]  # kept from a lost attempt
    logger.info("task %s: started (attempt %d), %d pages to do", task.pk, started.attempt, len(page_numbers))
    scope = engine.CancelScope()
    watcher = CancelWatcher(started, scope)
    watcher.start()
    try:
        if doc is None:
            if page_numbers:
                _run_image(started, data, scope)
        else:
            _run_pdf(started, doc, page_numbers, scope)
        watcher.stop()
        services.task_finish(task_id=task.pk, attempt=started.attempt)  # guarded: a no-op when a cancel won
    except engine.Cancelled:
        pass
    finally:
        watcher.stop()
        scope.cancel()  # no tesseract outlives its job, whatever ended it
        if doc is not None:
            doc.close()
    if watcher.detected_at is not None:
        stopped_ms = (time.monotonic() - watcher.detected_at) * 1000
        services.task_work_stopped(task_id=task.pk)
        logger.info("task %s: work stopped %.0f ms after the cancel was detected", task.pk, stopped_ms)


def pages_dir() -> str:
    """Where page images for tesseract go: under the slot folder, so orphans can be told apart."""
    path = os.path.join(settings.OCR_SLOT_DIR, "pages")
    os.makedirs(path, exist_ok=True)
    return path


def _ocr(image, params: dict, dpi: int, scope: engine.CancelScope) -> engine.OCRText:
    return engine.run_tesseract(image, lang=params["lang"], dpi=dpi, scope=scope, tmpdir=pages_dir(), slots=_slots())


LLM_KINDS = (TaskType.LLM, TaskType.PDF_LLM)


def _refine(task: OCRTask, text: str, source: str, image, scope: engine.CancelScope) -> llm.PageText:
    """LLM kinds: the model corrects the page's text (cancellable, falls back to `text`); others: as is."""
    if task.task_type not in LLM_KINDS:
        return llm.PageText(text=text, source=source)
    params = task.params
    return llm.refine_page(
        text,
        source=source,
        image=image,
        prompt=params.get("prompt"),
        model=params.get("model"),
        config=llm.config_from_settings(),
        scope=scope,
    )


def _ocr_page(task: OCRTask, prepared, image, params: dict, dpi: int, scope: engine.CancelScope) -> llm.PageText:
    """One page in a pool thread: tesseract, then (LLM kinds) the model's refinement of its text."""
    return _refine(task, _ocr(prepared, params, dpi, scope).text, PageSource.OCR, image, scope)


def _run_image(task: OCRTask, data: bytes, scope: engine.CancelScope) -> None:
    params = task.params
    started = time.perf_counter()
    try:
        image = engine.load_image(data)
        dpi = _image_dpi(image)
        prepared = engine.preprocess(image, contrast_level=params["contrast_level"], threshold=params["threshold"])
        page = _ocr_page(task, prepared, image, params, dpi, scope)
    except (engine.EngineError, engine.OCRFailed) as exc:
        _record_failure(task, 1, exc, started)
        return
    services.page_record(
        task_id=task.pk,
        page_number=1,
        text=page.text,
        source=page.source,
        processing_time=time.perf_counter() - started,
        error=page.error,
        # a one-page result has no page list: it says itself where its text came from, and why
        extra={**page.extra, "source": page.source, "error_message": page.error} if page.extra else {},
        attempt=task.attempt,
    )


def _image_dpi(image) -> int:
    dpi = image.info.get("dpi")
    try:
        value = int(round(float(dpi[0]))) if dpi else 0
    except (TypeError, ValueError):
        value = 0
    return value if 70 <= value <= 1200 else 300


def _record_failure(task: OCRTask, page_number: int, exc: Exception, started: float) -> None:
    logger.warning("task %s: page %d failed: %s", task.pk, page_number, exc)
    services.page_record(
        task_id=task.pk,
        page_number=page_number,
        text="",
        source=PageSource.OCR,
        processing_time=time.perf_counter() - started,
        success=False,
        error=str(exc),
        attempt=task.attempt,
    )


def _run_pdf(task: OCRTask, doc, page_numbers: list[int], scope: engine.CancelScope) -> None:
    """Render pages one by one in this thread; OCR up to OCR_WORKERS of them at once, with one
    more rendered and waiting so that a freed tesseract slot never waits for a render."""
    params = task.params
    dpi = params["dpi"]
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
                _record_failure(task, page_number, exc, started)
                continue
            services.page_record(
                task_id=task.pk,
                page_number=page_number,
                text=page.text,
                source=page.source,
                processing_time=time.perf_counter() - started,
                error=page.error,
                extra=page.extra,
                attempt=task.attempt,
            )

    with ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix=f"ocr-{task.pk}") as pool:
        try:
            for page_number in page_numbers:
                while len(in_flight) > workers:
                    collect(block=True)
                if in_flight:
                    collect(block=False)
                scope.check()
                started = time.perf_counter()
                try:
                    if params["text_layer"] == "auto":
                        text = engine.page_text_layer(doc, page_number - 1)
                        if text and task.task_type in LLM_KINDS:  # the model refines text layers too
                            in_flight[pool.submit(_refine, task, text, PageSource.TEXT_LAYER, None, scope)] = (
                                page_number,
                                started,
                            )
                            continue
                        if text:
                            services.page_record(
                                task_id=task.pk,
                                page_number=page_number,
                                text=text,
                                source=PageSource.TEXT_LAYER,
                                processing_time=time.perf_counter() - started,
                                attempt=task.attempt,
                            )
                            continue
                    image = engine.render_page(doc, page_number - 1, dpi)
                    prepared = engine.preprocess(
                        image, contrast_level=params["contrast_level"], threshold=params["threshold"]
                    )
                except Exception as exc:  # a damaged page fails alone
                    _record_failure(task, page_number, exc, started)
                    continue
                in_flight[pool.submit(_ocr_page, task, prepared, image, params, dpi, scope)] = (page_number, started)
            while in_flight:
                collect(block=True)
        except engine.Cancelled:
            scope.cancel()
            raise
        finally:
            if scope.cancelled.is_set():
                for future in in_flight:
                    future.cancel()


def reap() -> dict:
    """Scheduled (django-q2 schedule and `ocr_sweeper`): lost tasks, and orphan tesseracts here."""
    report = services.reap_lost_tasks(
        lost_after=settings.OCR_WORKER_LOST_SECONDS, requeue_pending_after=settings.OCR_PENDING_REQUEUE_SECONDS
    )
    report["orphans_killed"] = engine.kill_orphans(pages_dir())
    return report


def cleanup() -> dict:
    """Scheduled daily: retention of finished tasks and cancel audits."""
    return services.purge_expired(
        retention_days=settings.OCR_RETENTION_DAYS, audit_retention_days=settings.OCR_AUDIT_RETENTION_DAYS
    )
