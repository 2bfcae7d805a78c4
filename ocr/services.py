"""Every write to tasks, pages, events and audits (lost work and retention: ocr/upkeep.py).

Each status change is one conditional UPDATE from the states it may leave (see TaskStatus),
so that a cancel racing a completion has exactly one winner, and every other write is guarded
by the status in the same UPDATE: nothing is written for a task after it became terminal.
The same UPDATE hands out the next event `seq`, so events are numbered without gaps.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Model, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import feed, progress, queue, scheduling, selectors, statements, webhooks
from .exceptions import ServiceUnavailable, TaskConflict, TaskNotCancellable
from .kinds import Kind
from .models import (
    ACTIVE_STATUSES,
    TERMINAL_EVENTS,
    CancelAudit,
    CancelledBy,
    EventType,
    OCRPage,
    OCRTask,
    TaskEvent,
    TaskStatus,
    storage_name,
)
from .params import TaskParams
from .returning import DATABASE_CLOCK, insert_together, locked_clock, update_returning

logger = logging.getLogger(__name__)

DEFAULT_CANCEL_REASON = "User requested cancellation"
DISCONNECT_REASON = "Client disconnected"


def _advance(task_id: uuid.UUID, from_statuses, *, only_attempt: int | None = None, **fields) -> OCRTask | None:
    """Conditional UPDATE that also takes the next event seq; the row after it, or None.

    With `only_attempt`, only that attempt's worker may make the change."""
    rows = OCRTask.objects.filter(pk=task_id, status__in=from_statuses)
    if only_attempt is not None:
        rows = rows.filter(attempt=only_attempt)
    return update_returning(rows, event_seq=F("event_seq") + 1, **fields)


def _store_event(task: OCRTask, type: str, *also: Model, user=None, **details) -> progress.TaskEventPayload:
    """Store the event numbered `task.event_seq` (a terminal one also in the operator feed, `user`
    the caller if known) and the new rows `also`, in one statement; publish it on commit."""
    payload = progress.build_event(task, seq=task.event_seq, type=type, **details)
    item = feed.item(task, type, user=user) if type in TERMINAL_EVENTS else None
    insert_together(TaskEvent(task_id=task.pk, seq=task.event_seq, type=type, payload=payload), *also, item)
    feed_id = item and item.pk
    transaction.on_commit(lambda: progress.publish(payload, feed_id=feed_id))
    webhooks.on_event(task, payload)
    return payload


def _store_result(task: OCRTask) -> None:
    """Assemble and store the task's result."""
    task.result = progress.assemble_result(task, progress.recorded_pages(task))
    OCRTask.objects.filter(pk=task.pk).update(result=task.result)


# --- Submit and start ---------------------------------------------------------------------


def task_submit(
    *,
    kind: Kind,
    params: TaskParams,
    filename: str,
    data: bytes,
    owner=None,
    session_key: str = "",
    streaming: bool = False,
    task_id: uuid.UUID | None = None,
    total_pages: int = 0,
    warnings: list[str] | None = None,
    batch=None,
    resumed_from: uuid.UUID | None = None,
) -> OCRTask:
    """Admit, then create a pending task with its input file and first event; queued on commit."""
    scheduling.admit(kind=kind, priority=params.priority)
    task = OCRTask(
        id=task_id or uuid.uuid4(),
        task_type=kind.slug,
        streaming=streaming,
        params=params.to_json(),
        priority=params.priority,
        batch=batch,
        resumed_from=resumed_from,
        owner=owner,
        session_key=session_key or "",
        input_name=filename[:255],
        input_size=len(data),
        total_pages=total_pages,
        warnings=warnings or [],
        event_seq=1,
        enqueued_at=timezone.now(),  # its job goes on the queue as the row commits
    )
    if params.deadline_seconds:
        task.deadline_at = timezone.now() + timedelta(seconds=params.deadline_seconds)
    if task_id is not None and OCRTask.objects.filter(pk=task_id).exists():
        raise TaskConflict(f"Task {task_id} already exists")
    try:
        task.input_file.save(storage_name(filename), ContentFile(data), save=False)
    except OSError as exc:  # media read-only, full or gone: the service's fault, a 503 not a 500
        logger.error("task %s: upload could not be stored: %s", task.pk, exc)
        raise ServiceUnavailable(f"The upload could not be stored: {exc.strerror or exc}", retry_after=30) from exc
    try:
        with transaction.atomic():
            task.save(force_insert=True)
            _store_event(task, EventType.STATUS)
            # `task` stays the row as submitted (its answer says pending), though once this commits
            # a free worker may start it before the answer is built
            transaction.on_commit(lambda: enqueue_task(task.pk))
            if task.deadline_at is not None:
                transaction.on_commit(queue.wake_sweeper)
    except IntegrityError as exc:
        task.input_file.delete(save=False)
        raise TaskConflict(f"Task {task.pk} already exists") from exc
    logger.info("task %s: %s task submitted (%s, %d bytes)", task.pk, kind.slug, task.input_name, len(data))
    return task


def enqueue_task(task_id: uuid.UUID) -> None:
    """Put the task's job on the queue. A duplicate job is harmless: only one start wins. The
    write that made the task pending stamps `enqueued_at` (no write of its own here)."""
    try:
        queue.enqueue(task_id)
    except Exception as exc:  # the broker is down: fail the task rather than leave it pending
        logger.exception("task %s: could not be queued", task_id)
        task_fail(task_id=task_id, error=f"Could not queue the task: {exc}")


def task_start(*, task_id: uuid.UUID, total_pages: int) -> OCRTask | None:
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
            worker_host=settings.OCR_NODE_NAME[:255],
            worker_pid=os.getpid(),
        )
        if task is not None:
            _store_event(task, EventType.STATUS)
    return task


def task_requeue(*, task_id: uuid.UUID, attempt: int) -> bool:
    """processing (in `attempt`, whose worker is thought lost) -> pending, queued again on commit."""
    with transaction.atomic():
        task = _advance(
            task_id,
            [TaskStatus.PROCESSING],
            only_attempt=attempt,
            status=TaskStatus.PENDING,
            worker_pid=None,
            enqueued_at=timezone.now(),
        )
        if task is None:
            return False
        _store_event(task, EventType.STATUS)
        transaction.on_commit(lambda: enqueue_task(task_id))
    return True


def task_heartbeat(*, task_id: uuid.UUID, attempt: int) -> bool:
    """The worker of `attempt` is alive; False when the task is no longer its to run."""
    return bool(
        OCRTask.objects.filter(pk=task_id, status=TaskStatus.PROCESSING, attempt=attempt).update(
            heartbeat_at=timezone.now()
        )
    )


# --- Pages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageOutcome:
    """What a worker learnt of one page: its text and where it came from, or why it failed."""

    text: str
    source: str
    processing_time: float
    success: bool = True
    error: str | None = None
    extra: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)  # OCRPage.outputs
    text_pdf: bytes | None = None


def page_record(*, task_id: uuid.UUID, page_number: int, outcome: PageOutcome, attempt: int | None = None) -> bool:
    """Record one page and its event, only while the task is processing (in `attempt`, when
    given); False otherwise."""
    counter = "processed_pages" if outcome.success else "failed_pages"
    with transaction.atomic():
        task = _advance(task_id, [TaskStatus.PROCESSING], only_attempt=attempt, **{counter: F(counter) + 1})
        if task is None:
            return False
        page = OCRPage.objects.create(
            task_id=task.pk,
            page_number=page_number,
            text=outcome.text,
            source=outcome.source,
            processing_time=outcome.processing_time,
            success=outcome.success,
            error=outcome.error,
            extra=outcome.extra,
            outputs=outcome.outputs,
            text_pdf=outcome.text_pdf,
        )
        _store_event(
            task,
            EventType.PAGE_COMPLETED if outcome.success else EventType.PAGE_FAILED,
            current_page=page_number,
            latest_page_result=progress.page_result(page, task.parameters),
        )
    return True


# --- Terminal transitions -------------------------------------------------------------------


def task_finish(*, task_id: uuid.UUID, attempt: int | None = None) -> bool:
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


def task_fail(*, task_id: uuid.UUID, error: str, attempt: int | None = None) -> bool:
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
        transaction.on_commit(lambda: queue.wake_task_worker(task_id))
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
    cancelled_by: str = CancelledBy.USER,
    user=None,
    client: str = "",
) -> CancelResult:
    """Cancel an active task: one conditional UPDATE, partial result kept, one `cancelled` event.

    Idempotent for a cancelled task (original time and reason); raises TaskNotCancellable for
    a completed or failed one. Every call is audited, accepted or refused."""
    lookup = selectors.any_task_lookup(task.pk)
    return task_cancel_visible(lookup=lookup, reason=reason, cancelled_by=cancelled_by, user=user, client=client)


def task_cancel_visible(
    *,
    lookup: selectors.TaskLookup,
    reason: str | None = None,
    cancelled_by: str = CancelledBy.USER,
    user=None,
    client: str = "",
) -> CancelResult:
    """task_cancel of the task as its caller sees it (`lookup`), whose conditional UPDATE is the
    first statement: nothing is read before the cancel that stops the task. OCRTask.DoesNotExist
    when the caller sees no such task (nothing is written)."""
    reason = (reason or "").strip() or DEFAULT_CANCEL_REASON
    user = user if getattr(user, "is_authenticated", False) else None
    values = {**lookup.values, "reason": reason, "cancelled_by": cancelled_by}
    if user is not None:
        values["user_id"] = user.pk
    with transaction.atomic():
        clock = locked_clock()  # read in the transaction: every page committed before is older
        if clock is not DATABASE_CLOCK:
            values["at"] = clock
        cancelled = statements.CANCEL.update_returning(shape=lookup.shape, **values)
        if cancelled is not None:
            # Woken twice: once all is written, for the node killers to kill at once (and on
            # PostgreSQL the worker, which confirms on this commit; see queue.wake_task_worker),
            # and on commit, first (its tesseract dies sooner), then events go out.
            transaction.on_commit(lambda: queue.wake_task_worker(cancelled.pk, cancelled=True))
            if cancelled.worker_pid is None and cancelled.kind.is_pdf:  # no worker: its empty result
                _store_result(cancelled)
            # else its stopped worker stores it (the answer waited for every page's text: 39 ms for
            # 500); an image's result, before its one page, is none
            current, outcome = cancelled, "cancelled"
            status_before = TaskStatus.PROCESSING if cancelled.started_at else TaskStatus.PENDING
        else:
            current = selectors.task_found(lookup)
            if current is None:
                raise OCRTask.DoesNotExist(f"no task {lookup.values['pk']} for this caller")
            outcome = "already_cancelled" if current.status == TaskStatus.CANCELLED else f"already_{current.status}"
            status_before = current.status
        ran = cancelled.cancelled_at - cancelled.started_at if cancelled is not None and cancelled.started_at else None
        audit = CancelAudit(
            task_id=current.pk,
            task_type=current.task_type,
            accepted=cancelled is not None,
            outcome=outcome,
            reason=reason,
            cancelled_by=cancelled_by,
            user=user,
            client=client[:255],
            status_before=status_before,
            ran_seconds=None if ran is None else ran.total_seconds(),
        )
        if cancelled is not None:  # its event, feed item and audit: one statement (one round trip)
            _store_event(cancelled, EventType.CANCELLED, audit, user=user)
            queue.wake_task_worker(cancelled.pk, in_flight=True)
        else:
            feed.record_refused_cancel(current, audit)  # its feed item and audit: one statement too
    if cancelled is not None:
        logger.info("task %s: cancelled by %s (%s): %s", current.pk, cancelled_by, status_before, reason)
    else:
        logger.info("task %s: cancel by %s refused: %s", current.pk, cancelled_by, outcome)
    if current.status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
        raise TaskNotCancellable(current.pk, current.status)
    return CancelResult(task=current, newly_cancelled=cancelled is not None)


def task_cancel_if_active(*, task_id: uuid.UUID, reason: str, cancelled_by: str) -> bool:
    """Cancel on the server's own initiative (client gone, wait too long, deadline): a task that
    finished meanwhile stays as it is. True if this call cancelled it."""
    task = OCRTask.objects.filter(pk=task_id).first()
    if task is None:
        return False
    try:
        return task_cancel(task=task, reason=reason, cancelled_by=cancelled_by).newly_cancelled
    except TaskNotCancellable:
        return False


def task_work_stopped(*, task_id: uuid.UUID) -> None:
    """The worker of a cancelled task has stopped (processes killed): the cancel latency's end,
    and the partial result the cancel left to its workers is stored, by the first to stop (until
    then, and should that write be lost, reads assemble it: progress.result_of)."""
    rows = OCRTask.objects.filter(pk=task_id, status=TaskStatus.CANCELLED, work_stopped_at__isnull=True)
    task = update_returning(rows, work_stopped_at=timezone.now())  # one statement for every other task
    if task is not None and task.result is None:
        _store_result(task)
