"""Every write to tasks, pages, events and audits.

Each status change is one conditional UPDATE from the states it may leave (see TaskStatus),
so that a cancel racing a completion has exactly one winner, and every other write is guarded
by the status in the same UPDATE: nothing is written for a task after it became terminal.
The same UPDATE hands out the next event `seq`, so events are numbered without gaps.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import progress
from .exceptions import TaskConflict, TaskNotCancellable
from .models import (
    ACTIVE_STATUSES,
    CancelAudit,
    CancelSource,
    EventType,
    OCRPage,
    OCRTask,
    TaskEvent,
    TaskStatus,
)
from .queue import wake_task_worker

logger = logging.getLogger(__name__)

DEFAULT_CANCEL_REASON = "User requested cancellation"
DISCONNECT_REASON = "Client disconnected"


def _advance(task_id: uuid.UUID | str, from_statuses, *, only_attempt: int | None = None, **fields) -> OCRTask | None:
    """Conditional UPDATE that also takes the next event seq; the row after it, or None.

    With `only_attempt`, only that attempt's worker may make the change."""
    rows = OCRTask.objects.filter(pk=task_id, status__in=from_statuses)
    if only_attempt is not None:
        rows = rows.filter(attempt=only_attempt)
    changed = rows.update(event_seq=F("event_seq") + 1, **fields)
    if not changed:
        return None
    return OCRTask.objects.get(pk=task_id)


def _store_event(task: OCRTask, type: str, **details) -> dict:
    """Store the event numbered `task.event_seq`, publish it once the transaction commits."""
    payload = progress.build_event(task, seq=task.event_seq, type=type, **details)
    TaskEvent.objects.create(task_id=task.pk, seq=task.event_seq, type=type, payload=payload)
    transaction.on_commit(lambda: progress.publish(payload))
    return payload


def _store_result(task: OCRTask) -> None:
    task.result = progress.assemble_result(task, list(OCRPage.objects.filter(task_id=task.pk)))
    OCRTask.objects.filter(pk=task.pk).update(result=task.result)


# --- Submit and start ---------------------------------------------------------------------


def task_submit(
    *,
    task_type: str,
    params: dict,
    filename: str,
    data: bytes,
    owner=None,
    session_key: str = "",
    streaming: bool = False,
    task_id: uuid.UUID | None = None,
    total_pages: int = 0,
) -> OCRTask:
    """Create a pending task with its input file and first event, and queue it on commit."""
    task = OCRTask(
        id=task_id or uuid.uuid4(),
        task_type=task_type,
        streaming=streaming,
        params=params,
        owner=owner,
        session_key=session_key or "",
        input_name=filename[:255],
        input_size=len(data),
        total_pages=total_pages,
        event_seq=1,
    )
    if params.get("deadline_seconds"):
        task.deadline_at = timezone.now() + timedelta(seconds=params["deadline_seconds"])
    if task_id is not None and OCRTask.objects.filter(pk=task_id).exists():
        raise TaskConflict(f"Task {task_id} already exists")
    safe_name = os.path.basename(filename).replace(" ", "_")[-100:] or "upload"
    task.input_file.save(safe_name, ContentFile(data), save=False)
    try:
        with transaction.atomic():
            task.save(force_insert=True)
            _store_event(task, EventType.STATUS)
            transaction.on_commit(lambda: _enqueue(task.pk))
    except IntegrityError as exc:
        task.input_file.delete(save=False)
        raise TaskConflict(f"Task {task.pk} already exists") from exc
    logger.info("task %s: %s task submitted (%s, %d bytes)", task.pk, task_type, task.input_name, len(data))
    return task


def _enqueue(task_id: uuid.UUID) -> None:
    """Put the task's job on the queue. A duplicate job is harmless: only one start wins."""
    from django_q.tasks import async_task

    try:
        async_task("ocr.tasks.process_task", str(task_id), task_name=f"ocr-{task_id}")
        OCRTask.objects.filter(pk=task_id).update(enqueued_at=timezone.now())
    except Exception as exc:  # the broker is down: fail the task rather than leave it pending
        logger.exception("task %s: could not be queued", task_id)
        task_fail(task_id=task_id, error=f"Could not queue the task: {exc}")


def task_start(*, task_id: uuid.UUID | str, total_pages: int) -> OCRTask | None:
    """pending -> processing as a new attempt; None when no longer pending (cancelled before start)."""
    now = timezone.now()
    with transaction.atomic():
        task = _advance(
            task_id,
            [TaskStatus.PENDING],
            status=TaskStatus.PROCESSING,
            started_at=Coalesce("started_at", Value(now)),
            heartbeat_at=now,
            attempt=F("attempt") + 1,
            total_pages=total_pages,
            worker_host=socket.gethostname()[:255],
            worker_pid=os.getpid(),
        )
        if task is not None:
            _store_event(task, EventType.STATUS)
    return task


def task_heartbeat(*, task_id: uuid.UUID | str, attempt: int) -> bool:
    """The worker of `attempt` is alive; False when the task is no longer its to run."""
    return bool(
        OCRTask.objects.filter(pk=task_id, status=TaskStatus.PROCESSING, attempt=attempt).update(
            heartbeat_at=timezone.now()
        )
    )


# --- Pages --------------------------------------------------------------------------------


def page_record(
    *,
    task_id: uuid.UUID | str,
    page_number: int,
    text: str,
    source: str,
    processing_time: float,
    success: bool = True,
    error: str | None = None,
    extra: dict | None = None,
    attempt: int | None = None,
) -> bool:
    """Record one page and its event, only while the task is processing (in `attempt`, when
    given); False otherwise."""
    counter = "processed_pages" if success else "failed_pages"
    with transaction.atomic():
        task = _advance(task_id, [TaskStatus.PROCESSING], only_attempt=attempt, **{counter: F(counter) + 1})
        if task is None:
            return False
        page = OCRPage.objects.create(
            task_id=task.pk,
            page_number=page_number,
            text=text,
            source=source,
            processing_time=processing_time,
            success=success,
            error=error,
            extra=extra or {},
        )
        _store_event(
            task,
            EventType.PAGE_COMPLETED if success else EventType.PAGE_FAILED,
            current_page=page_number,
            latest_page_result=progress.page_result(page, task.params),
        )
    return True


# --- Terminal transitions -------------------------------------------------------------------


def task_finish(*, task_id: uuid.UUID | str, attempt: int | None = None) -> bool:
    """processing -> completed, or failed when no page succeeded; False if something else won."""
    with transaction.atomic():
        task = _advance(
            task_id,
            [TaskStatus.PROCESSING],
            only_attempt=attempt,
            status=Case(When(processed_pages=0, then=Value(TaskStatus.FAILED)), default=Value(TaskStatus.COMPLETED)),
            completed_at=timezone.now(),
        )
        if task is None:
            return False
        _store_result(task)
        if task.status == TaskStatus.FAILED:
            task.error_message = _all_pages_failed_message(task)
            OCRTask.objects.filter(pk=task.pk).update(error_message=task.error_message)
        _store_event(task, task.status)
    logger.info("task %s: %s (%d pages, %d failed)", task.pk, task.status, task.processed_pages, task.failed_pages)
    return True


def _all_pages_failed_message(task: OCRTask) -> str:
    errors = list(OCRPage.objects.filter(task_id=task.pk, success=False).values_list("error", flat=True)[:1])
    first = f": {errors[0]}" if errors and errors[0] else ""
    if task.total_pages <= 1:
        return f"OCR failed{first}"
    return f"All {task.failed_pages} pages failed{first}"


def task_fail(*, task_id: uuid.UUID | str, error: str, attempt: int | None = None) -> bool:
    """pending|processing -> failed with `error`, keeping the pages done so far."""
    with transaction.atomic():
        task = _advance(
            task_id,
            ACTIVE_STATUSES,
            only_attempt=attempt,
            status=TaskStatus.FAILED,
            completed_at=timezone.now(),
            error_message=error,
        )
        if task is None:
            return False
        _store_result(task)
        _store_event(task, EventType.FAILED)
        transaction.on_commit(lambda: wake_task_worker(task_id))
    logger.warning("task %s: failed: %s", task_id, error)
    return True


@dataclass
class CancelResult:
    task: OCRTask
    newly_cancelled: bool


def task_cancel(
    *,
    task: OCRTask,
    reason: str | None = None,
    by: str = CancelSource.USER,
    user=None,
    client: str = "",
) -> CancelResult:
    """Cancel an active task: one conditional UPDATE, partial result kept, one `cancelled` event.

    Idempotent for a cancelled task (original time and reason); raises TaskNotCancellable for
    a completed or failed one. Every call is audited, accepted or refused.
    """
    reason = (reason or "").strip() or DEFAULT_CANCEL_REASON
    user = user if getattr(user, "is_authenticated", False) else None
    with transaction.atomic():
        cancelled = _advance(
            task.pk,
            ACTIVE_STATUSES,
            status=TaskStatus.CANCELLED,
            cancellation_reason=reason,
            cancelled_by=by,
            cancelled_by_user=user,
        )
        # Stamped once the UPDATE holds the row: every page committed before it is older.
        now = timezone.now()
        if cancelled is not None:
            cancelled.cancelled_at = now
            OCRTask.objects.filter(pk=task.pk).update(cancelled_at=now)
            _store_result(cancelled)
            _store_event(cancelled, EventType.CANCELLED)
            transaction.on_commit(lambda: wake_task_worker(task.pk))
            current, outcome = cancelled, "cancelled"
            status_before = TaskStatus.PROCESSING if cancelled.started_at else TaskStatus.PENDING
        else:
            current = OCRTask.objects.get(pk=task.pk)
            outcome = "already_cancelled" if current.status == TaskStatus.CANCELLED else f"already_{current.status}"
            status_before = current.status
        ran_seconds = (now - current.started_at).total_seconds() if current.started_at else None
        CancelAudit.objects.create(
            task_id=current.pk,
            task_type=current.task_type,
            accepted=cancelled is not None,
            outcome=outcome,
            reason=reason,
            source=by,
            user=user,
            client=client[:255],
            status_before=status_before,
            ran_seconds=ran_seconds if cancelled is not None else None,
        )
    if cancelled is not None:
        logger.info("task %s: cancelled by %s (%s): %s", task.pk, by, status_before, reason)
    else:
        logger.info("task %s: cancel by %s refused: %s", task.pk, by, outcome)
    if current.status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
        raise TaskNotCancellable(current.pk, current.status)
    return CancelResult(task=current, newly_cancelled=cancelled is not None)


def task_work_stopped(*, task_id: uuid.UUID | str) -> None:
    """The worker of a cancelled task has stopped (processes killed): the cancel latency's end.
    Bookkeeping only: result, pages and events stay as the cancel left them."""
    OCRTask.objects.filter(pk=task_id, status=TaskStatus.CANCELLED, work_stopped_at__isnull=True).update(
        work_stopped_at=timezone.now()
    )


def deadline_reason(task: OCRTask) -> str:
    return f"Deadline of {task.params.get('deadline_seconds')} s exceeded"


def task_cancel_if_expired(*, task: OCRTask) -> bool:
    """Cancel `task` with the deadline reason when its deadline has passed; True if it did."""
    if task.deadline_at is None or task.deadline_at > timezone.now():
        return False
    try:
        return task_cancel(task=task, reason=deadline_reason(task), by=CancelSource.DEADLINE).newly_cancelled
    except TaskNotCancellable:
        return False


def expire_deadlines() -> int:
    """Cancel every active task whose deadline has passed; returns how many were cancelled."""
    expired = OCRTask.objects.filter(status__in=ACTIVE_STATUSES, deadline_at__lte=timezone.now())
    return sum(task_cancel_if_expired(task=task) for task in expired)


# --- Lost work ------------------------------------------------------------------------------

WORKER_LOST_MESSAGE = "Worker lost"


def reap_lost_tasks(*, lost_after: float, max_attempts: int = 2, requeue_pending_after: float = 60.0) -> dict:
    """Find work whose worker died and put it right; safe to run anywhere, any number of times.

    - processing without a heartbeat for `lost_after` s: back to pending and re-queued (the
      pages already done are kept and skipped) while attempts remain, else failed "Worker lost";
    - pending for `requeue_pending_after` s and not on the queue (the Redis broker does not
      acknowledge, so a job taken by a dying worker is gone): queued again.
    """
    from .queue import queued_task_ids

    now = timezone.now()
    cutoff = now - timedelta(seconds=lost_after)
    report = {"requeued": 0, "failed": 0, "pending_requeued": 0}
    stale = OCRTask.objects.filter(status=TaskStatus.PROCESSING, heartbeat_at__lt=cutoff)
    for task in stale.only("id", "attempt"):
        if task.attempt < max_attempts:
            with transaction.atomic():
                requeued = _advance(
                    task.pk,
                    [TaskStatus.PROCESSING],
                    only_attempt=task.attempt,
                    status=TaskStatus.PENDING,
                    worker_pid=None,
                )
                if requeued is not None:
                    _store_event(requeued, EventType.STATUS)
                    transaction.on_commit(lambda pk=task.pk: _enqueue(pk))
            if requeued is not None:
                report["requeued"] += 1
                logger.warning("task %s: worker lost (attempt %d), re-queued", task.pk, task.attempt)
        elif task_fail(task_id=task.pk, error=WORKER_LOST_MESSAGE, attempt=task.attempt):
            report["failed"] += 1
    waiting_since = now - timedelta(seconds=requeue_pending_after)
    waiting = OCRTask.objects.filter(status=TaskStatus.PENDING, created_at__lt=waiting_since).filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=waiting_since)
    )
    waiting_ids = list(waiting.values_list("pk", flat=True)[:1000])
    if waiting_ids:
        on_queue = queued_task_ids()
        for task_id in waiting_ids:
            if str(task_id) not in on_queue:
                logger.warning("task %s: pending but not on the queue, queued again", task_id)
                _enqueue(task_id)
                report["pending_requeued"] += 1
    return report


# --- Retention --------------------------------------------------------------------------------


def purge_expired(*, retention_days: int, audit_retention_days: int | None = None, dry_run: bool = False) -> dict:
    """Delete terminal tasks older than `retention_days` (their input files, pages and events
    with them), and cancel audits older than `audit_retention_days`. Active tasks are kept."""
    now = timezone.now()
    cutoff = now - timedelta(days=retention_days)
    old = OCRTask.objects.exclude(status__in=ACTIVE_STATUSES).filter(created_at__lt=cutoff)
    audit_cutoff = now - timedelta(days=audit_retention_days or retention_days)
    audits = CancelAudit.objects.filter(created_at__lt=audit_cutoff)
    report = {"tasks": old.count(), "files": 0, "audits": audits.count(), "dry_run": dry_run}
    if dry_run:
        return report
    for task in old.only("id", "input_file").iterator():
        if task.input_file:
            try:
                task.input_file.delete(save=False)
                report["files"] += 1
            except OSError:
                logger.warning("task %s: input file could not be deleted", task.pk)
    old.delete()
    audits.delete()
    logger.info("retention: deleted %s", report)
    return report
