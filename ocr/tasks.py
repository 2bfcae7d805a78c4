"""django-q2 entry points: run one task (`process_task`, queued as queue.PROCESS_TASK_JOB),
reap lost work, apply retention. The work itself is in ocr/pipeline.py."""

from __future__ import annotations

import logging
import os
import time
import uuid

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from . import engine, scheduling, services, upkeep
from .models import OCRPage, OCRTask, TaskStatus
from .pipeline import CancelWatcher, PagePipeline, pages_dir

logger = logging.getLogger(__name__)

PICK_CANDIDATES = 20  # pending tasks a job tries, in start order, before it gives up


def process_task(task_id: str) -> None:
    """The job: start the first pending task of the start order (ocr/scheduling.py), which is
    this job's own task unless a higher-priority or fairer one waits, and OCR it to its end."""
    close_old_connections()
    task = OCRTask.objects.filter(pk=uuid.UUID(task_id)).first()
    if task is None:
        logger.warning("task %s: not found, its job starts the next pending task", task_id)
    elif task.status != TaskStatus.PENDING:
        logger.info("task %s: %s before start, skipped without work", task.pk, task.status)
    for candidate_id in scheduling.start_order(limit=PICK_CANDIDATES):
        candidate = OCRTask.objects.filter(pk=candidate_id, status=TaskStatus.PENDING).first()
        if candidate is None or upkeep.task_cancel_if_expired(task=candidate):
            continue
        if candidate.pk != uuid.UUID(task_id):
            logger.info("task %s: started by the job of task %s (start order)", candidate.pk, task_id)
        if _run_guarded(candidate):
            return


def _run_guarded(task: OCRTask) -> bool:
    """Run `task`; False when another job started it first (the caller tries the next one)."""
    try:
        return _run(task)
    except (OperationalError, InterfaceError) as exc:  # the database restarted or failed over mid-task
        _hand_back_after_database_loss(task.pk, exc)
    except Exception as exc:  # never leave a task processing behind
        logger.exception("task %s: unexpected error", task.pk)
        services.task_fail(task_id=task.pk, error=f"Internal error: {exc}")
    except BaseException:  # django-q2's timeout (SIGALRM -> SystemExit), a worker shutdown
        message = f"Job interrupted (timeout of {settings.OCR_JOB_TIMEOUT} s, or worker shutdown)"
        logger.error("task %s: %s", task.pk, message)
        services.task_fail(task_id=task.pk, error=message)
        raise
    return True


def _hand_back_after_database_loss(task_id: uuid.UUID, exc: Exception) -> None:
    """Re-queue our attempt of the task (its finished pages are kept) rather than fail it for a
    database blip; a task that already had its attempts fails as before. While the database
    still does not answer, the task is left to the reaper (no heartbeat: re-queued or failed)."""
    logger.warning("task %s: the job lost the database (%s)", task_id, exc)
    connection.close()  # the broken connection; the next query opens a new one
    try:
        ours = OCRTask.objects.filter(
            pk=task_id, status=TaskStatus.PROCESSING, worker_pid=os.getpid(), worker_host=settings.OCR_NODE_NAME[:255]
        )
        attempt = ours.values_list("attempt", flat=True).first()
        if attempt is None:
            return
        if attempt < upkeep.MAX_ATTEMPTS and services.task_requeue(task_id=task_id, attempt=attempt):
            logger.warning("task %s: re-queued after attempt %d lost the database", task_id, attempt)
        else:
            services.task_fail(task_id=task_id, error=f"Internal error: {exc}", attempt=attempt)
    except (OperationalError, InterfaceError):
        logger.warning("task %s: the database still does not answer; left to the reaper", task_id)


def _run(task: OCRTask) -> bool:
    with task.input_file.open("rb") as handle:
        data = handle.read()
    doc = None
    if task.kind.is_pdf:
        try:
            doc = engine.open_pdf(data)
        except engine.EngineError as exc:
            services.task_fail(task_id=task.pk, error=str(exc))
            return True
        page_numbers = task.parameters.pages_of(doc.page_count)
    else:
        page_numbers = [1]

    started = services.task_start(task_id=task.pk, total_pages=len(page_numbers))
    if started is None:
        logger.info("task %s: cancelled before start, skipped without work", task.pk)
        return False
    done = set(OCRPage.objects.filter(task_id=task.pk).values_list("page_number", flat=True))
    page_numbers = [number for number in page_numbers if number not in done]  # kept from a lost attempt
    logger.info("task %s: started (attempt %d), %d pages to do", task.pk, started.attempt, len(page_numbers))
    scope = engine.CancelScope()
    watcher = CancelWatcher(started, scope)
    watcher.start()
    pipeline = PagePipeline(started, scope)
    try:
        if doc is not None:
            pipeline.run_pdf(doc, page_numbers)
        elif page_numbers:
            pipeline.run_image(data)
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
    return True


def reap() -> dict:
    """Scheduled (django-q2 schedule and `ocr_sweeper`): lost tasks, and orphan tesseracts here."""
    report = upkeep.reap_lost_tasks(
        lost_after=settings.OCR_WORKER_LOST_SECONDS, requeue_pending_after=settings.OCR_PENDING_REQUEUE_SECONDS
    )
    report["orphans_killed"] = engine.kill_orphans(pages_dir())
    report["orphan_pages_removed"] = engine.remove_orphan_pages(pages_dir())
    return report


def cleanup() -> dict:
    """Scheduled daily: retention of finished tasks and cancel audits."""
    return upkeep.purge_expired(
        retention_days=settings.OCR_RETENTION_DAYS, audit_retention_days=settings.OCR_AUDIT_RETENTION_DAYS
    )
