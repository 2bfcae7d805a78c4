"""django-q2 entry points: load the task, run its pages through the engine, record results.

A watcher thread polls the task's status (the database is the truth) every
OCR_CANCEL_POLL_SECONDS and, once the task is no longer `processing` (cancelled by anyone) or
its deadline passed, kills the task's tesseract processes through the CancelScope.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from . import engine, services
from .models import OCRTask, PageSource, TaskStatus

logger = logging.getLogger(__name__)


def _slots() -> engine.TesseractSlots:
    return engine.TesseractSlots(settings.OCR_SLOT_DIR, settings.OCR_WORKERS)


class CancelWatcher(threading.Thread):
    """Polls the task row; on cancel (or deadline) kills the task's tesseract processes."""

    def __init__(self, task: OCRTask, scope: engine.CancelScope) -> None:
        super().__init__(name=f"cancel-watcher-{task.pk}", daemon=True)
        self.task = task
        self.scope = scope
        self.stopped = threading.Event()
        self.detected_at: float | None = None

    def run(self) -> None:
        poll = settings.OCR_CANCEL_POLL_SECONDS
        try:
            while not self.stopped.wait(poll):
                status = OCRTask.objects.filter(pk=self.task.pk).values_list("status", flat=True).first()
                if (
                    status == TaskStatus.PROCESSING
                    and self.task.deadline_at
                    and timezone.now() >= self.task.deadline_at
                ):
                    services.task_cancel_if_expired(task=self.task)
                    continue  # the next poll sees the cancel
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
            connection.close()

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
    logger.info("task %s: started, %d pages", task.pk, len(page_numbers))
    scope = engine.CancelScope()
    watcher = CancelWatcher(started, scope)
    watcher.start()
    try:
        if doc is None:
            _run_image(started, data, scope)
        else:
            _run_pdf(started, doc, page_numbers, scope)
        watcher.stop()
        services.task_finish(task_id=task.pk)  # guarded: a no-op when a cancel won
    except engine.Cancelled:
        pass
    finally:
        watcher.stop()
        scope.cancel()  # no tesseract outlives its job, whatever ended it
        if doc is not None:
            doc.close()
    if watcher.detected_at is not None:
        stopped_ms = (time.monotonic() - watcher.detected_at) * 1000
        logger.info("task %s: work stopped %.0f ms after the cancel was detected", task.pk, stopped_ms)


def _ocr(image, params: dict, dpi: int, scope: engine.CancelScope) -> engine.OCRText:
    with _slots().acquire(scope):
        return engine.run_tesseract(image, lang=params["lang"], dpi=dpi, scope=scope)


def _run_image(task: OCRTask, data: bytes, scope: engine.CancelScope) -> None:
    params = task.params
    started = time.perf_counter()
    try:
        image = engine.load_image(data)
        dpi = _image_dpi(image)
        prepared = engine.preprocess(image, contrast_level=params["contrast_level"], threshold=params["threshold"])
        text = _ocr(prepared, params, dpi, scope).text
    except (engine.EngineError, engine.OCRFailed) as exc:
        _record_failure(task, 1, exc, started)
        return
    services.page_record(
        task_id=task.pk, page_number=1, text=text, source=PageSource.OCR, processing_time=time.perf_counter() - started
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
    )


def _run_pdf(task: OCRTask, doc, page_numbers: list[int], scope: engine.CancelScope) -> None:
    """Render pages one by one in this thread; OCR up to OCR_WORKERS of them at once."""
    params = task.params
    dpi = params["dpi"]
    workers = settings.OCR_WORKERS
    in_flight: dict[Future, tuple[int, float]] = {}

    def collect(block: bool) -> None:
        done, _ = wait(list(in_flight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            page_number, started = in_flight.pop(future)
            try:
                text = future.result().text
            except engine.Cancelled:
                raise
            except Exception as exc:
                _record_failure(task, page_number, exc, started)
                continue
            services.page_record(
                task_id=task.pk,
                page_number=page_number,
                text=text,
                source=PageSource.OCR,
                processing_time=time.perf_counter() - started,
            )

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"ocr-{task.pk}") as pool:
        try:
            for page_number in page_numbers:
                while len(in_flight) >= workers:
                    collect(block=True)
                if in_flight:
                    collect(block=False)
                scope.check()
                started = time.perf_counter()
                try:
                    if params["text_layer"] == "auto":
                        text = engine.page_text_layer(doc, page_number - 1)
                        if text:
                            services.page_record(
                                task_id=task.pk,
                                page_number=page_number,
                                text=text,
                                source=PageSource.TEXT_LAYER,
                                processing_time=time.perf_counter() - started,
                            )
                            continue
                    image = engine.render_page(doc, page_number - 1, dpi)
                    prepared = engine.preprocess(
                        image, contrast_level=params["contrast_level"], threshold=params["threshold"]
                    )
                except Exception as exc:  # a damaged page fails alone
                    _record_failure(task, page_number, exc, started)
                    continue
                in_flight[pool.submit(_ocr, prepared, params, dpi, scope)] = (page_number, started)
            while in_flight:
                collect(block=True)
        except engine.Cancelled:
            scope.cancel()
            raise
        finally:
            if scope.cancelled.is_set():
                for future in in_flight:
                    future.cancel()
