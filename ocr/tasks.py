"""django-q2 entry points: run one task (`process_task`, queued as queue.PROCESS_TASK_JOB),
reap lost work, apply retention. The work itself is in ocr/pipeline.py, watched by ocr/watcher.py."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from functools import partial

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from . import engine, queue, scheduling, services, slices, upkeep
from .models import OCRPage, OCRSlice, OCRTask, TaskStatus
from .pipeline import PagePipeline, pages_dir
from .watcher import CancelWatcher, run_watched

logger = logging.getLogger(__name__)

PICK_CANDIDATES = 20  # pending tasks a job tries per reading of the start order
PICK_ROUNDS = 50  # readings of the start order a job makes before it gives up
DATABASE_WAIT_SECONDS = 30.0  # how long a job waits for a database gone away (restart, failover)
DATABASE_RETRY_SECONDS = 0.25


def process_task(task_id: str) -> None:
    """The job: take a pending slice of a running task (ocr/slices.py: unless a pending task of
    a higher priority waits), else start the first pending task of the start order
    (ocr/scheduling.py), which is this job's own task unless a higher-priority or fairer one
    waits, and read it to its end. A job that cannot reach the database before it has started a
    task (one it started is handed back: _run_guarded) waits for it, as long as
    DATABASE_WAIT_SECONDS, and begins again: a job lost there left its task pending until the
    sweeper queued it again (OCR_PENDING_REQUEUE_SECONDS)."""
    try:
        _process(task_id)
    except (OperationalError, InterfaceError) as exc:
        logger.warning("task %s: its job cannot reach the database (%s); waiting for it", task_id, exc)
        if not _wait_for_database(task_id):
            raise
        _process(task_id)


def _wait_for_database(task_id) -> bool:
    """True as soon as a new connection to the database answers; False after DATABASE_WAIT_SECONDS."""
    deadline = time.monotonic() + DATABASE_WAIT_SECONDS
    while True:
        connection.close()  # the broken one; a new one is opened
        try:
            connection.ensure_connection()
            return True
        except (OperationalError, InterfaceError):
            if time.monotonic() >= deadline:
                logger.warning("task %s: the database still does not answer", task_id)
                return False
            time.sleep(DATABASE_RETRY_SECONDS)


def _process(task_id: str) -> None:
    close_old_connections()
    claimed = slices.claim()
    if claimed is not None:
        logger.info("task %s: slice %d taken by the job of task %s", claimed.task_id, claimed.index, task_id)
        _run_guarded(claimed.task_id, lambda: slices.run_claimed(claimed))
        return
    own = uuid.UUID(task_id)
    alone = _pending_alone(own)
    if alone is not None and not upkeep.task_cancel_if_expired(task=alone):
        if _run_guarded(own, lambda: _run(alone)):
            return
    # Every job starts a task while one is pending: jobs starting each other's tasks (the start
    # order) must not leave one pending task without a job. So a job whose candidates were all
    # taken meanwhile reads the order again (tasks submitted since are in it) until none is
    # pending; each candidate lost is one another job started.
    for round_number in range(PICK_ROUNDS):
        order = scheduling.start_order(limit=PICK_CANDIDATES)
        if round_number == 0 and own not in order:
            _log_own_task_not_pending(own)
        if not order:
            return
        for candidate_id in order:
            candidate = OCRTask.objects.filter(pk=candidate_id, status=TaskStatus.PENDING).first()
            if candidate is None or upkeep.task_cancel_if_expired(task=candidate):
                continue
            if candidate.pk != own:
                logger.info("task %s: started by the job of task %s (start order)", candidate.pk, task_id)
            if _run_guarded(candidate.pk, lambda candidate=candidate: _run(candidate)):
                return
    logger.warning("task %s: its job found no pending task it could start in %d rounds", task_id, PICK_ROUNDS)


def _pending_alone(task_id: uuid.UUID) -> OCRTask | None:
    """The job's own task when it is the only pending one: the start order is then that task
    alone, read without the order's queries (an idle service's every submit)."""
    pending = list(OCRTask.objects.filter(status=TaskStatus.PENDING).order_by()[:2])
    return pending[0] if len(pending) == 1 and pending[0].pk == task_id else None


def _log_own_task_not_pending(task_id: uuid.UUID) -> None:
    """Why a job's own task is not among the first it may start (read only then: the common
    case, its task pending and next, costs the pick no query)."""
    status = OCRTask.objects.filter(pk=task_id).values_list("status", flat=True).first()
    if status is None:
        logger.warning("task %s: not found, its job starts the next pending task", task_id)
    elif status != TaskStatus.PENDING:
        logger.info("task %s: %s before start, skipped (its job takes the next)", task_id, status)


def _run_guarded(task_id: uuid.UUID, work: Callable[[], bool]) -> bool:
    """Run `work` for the task; False when another job started it first (the caller tries the next one)."""
    try:
        return work()
    except (OperationalError, InterfaceError) as exc:  # the database restarted or failed over mid-task
        _hand_back_after_database_loss(task_id, exc)
    except Exception as exc:  # never leave a task processing behind
        logger.exception("task %s: unexpected error", task_id)
        services.task_fail(task_id=task_id, error=f"Internal error: {exc}")
    except BaseException:  # django-q2's timeout (SIGALRM -> SystemExit), a worker shutdown
        message = f"Job interrupted (timeout of {settings.OCR_JOB_TIMEOUT} s, or worker shutdown)"
        logger.error("task %s: %s", task_id, message)
        services.task_fail(task_id=task_id, error=message)
        raise
    return True


def _hand_back_after_database_loss(task_id: uuid.UUID, exc: Exception) -> None:
    """Re-queue our attempt of the task (its finished pages are kept) rather than fail it for a
    database blip, once the database answers again (as long as DATABASE_WAIT_SECONDS: after a
    3 s restart the reaper re-queued it 6-10 s later); a task that already had its attempts
    fails as before. A database still away is left to the reaper (no heartbeat: re-queued or failed)."""
    logger.warning("task %s: the job lost the database (%s)", task_id, exc)
    if not _wait_for_database(task_id):
        logger.warning("task %s: left to the reaper", task_id)
        return
    try:
        if OCRSlice.objects.filter(task_id=task_id).exists():
            logger.warning("task %s: sliced; the slice reaper re-queues the lost slice alone", task_id)
            return
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
        all_pages = task.parameters.pages_of(doc.page_count)
    else:
        all_pages = [1]

    started = services.task_start(task_id=task.pk, total_pages=len(all_pages))
    if started is None:
        logger.info("task %s: no longer pending (started by another job, or cancelled), skipped", task.pk)
        return False
    try:
        if doc is not None and slices.is_sliced(all_pages):
            slices.run_task(started, doc, all_pages)
            return True
        done = set(OCRPage.objects.filter(task_id=task.pk).values_list("page_number", flat=True))
        page_numbers = [number for number in all_pages if number not in done]  # kept from a lost attempt
        logger.info("task %s: started (attempt %d), %d pages to do", task.pk, started.attempt, len(page_numbers))
        scope = engine.CancelScope(label=str(task.pk))
        pipeline = PagePipeline(started, scope)

        def work() -> None:
            if doc is not None:
                pipeline.run_pdf(doc, page_numbers)
            elif page_numbers:
                pipeline.run_image(data)

        finish = partial(services.task_finish, task_id=task.pk, attempt=started.attempt)
        run_watched(started, CancelWatcher(started, scope), work, finish)
    finally:
        if doc is not None:
            doc.close()
    return True


_broker_run_id: str | None = None  # the broker's Redis as this process's last reaper pass saw it


def reap() -> dict:
    """Scheduled (django-q2 schedule and `ocr_sweeper`): lost tasks, and orphan tesseracts here.
    Pending work not on the queue is queued again after OCR_PENDING_REQUEUE_SECONDS (a job may
    be in a worker's hands meanwhile), or at once after a Redis restart (`make run`'s keeps
    nothing on disk: every job on its list is gone; one queued twice only starts once)."""
    global _broker_run_id
    run_id = queue.redis_run_id()
    restarted = None not in (run_id, _broker_run_id) and run_id != _broker_run_id
    if restarted:
        logger.warning("reaper: the broker's Redis restarted; pending work not on the queue is queued again now")
    requeue_after = 0.0 if restarted else settings.OCR_PENDING_REQUEUE_SECONDS
    lost_after = settings.OCR_WORKER_LOST_SECONDS
    report = upkeep.reap_lost_tasks(lost_after=lost_after, requeue_pending_after=requeue_after)
    report.update(slices.reap_lost_slices(lost_after=lost_after, requeue_pending_after=requeue_after))
    report["orphans_killed"] = engine.kill_orphans(pages_dir())
    report["orphan_pages_removed"] = engine.remove_orphan_pages(pages_dir())
    _broker_run_id = run_id or _broker_run_id  # a pass that failed looks again at the next
    return report


def cleanup() -> dict:
    """Scheduled daily: retention of finished tasks and cancel audits."""
    return upkeep.purge_expired(
        retention_days=settings.OCR_RETENTION_DAYS, audit_retention_days=settings.OCR_AUDIT_RETENTION_DAYS
    )
