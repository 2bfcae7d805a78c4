"""Many tasks at once: bulk and selective cancel, batches (submit, status, cancel) and resume.

Every cancel here goes through `services.task_cancel`, one task at a time, so that each task
gets exactly what a single cancel gives it (event, partial result, audit, worker woken).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from . import services
from .exceptions import BatchNotCancellable, InputGone, InvalidInput, TaskNotCancellable
from .kinds import Kind
from .models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Batch,
    CancelledBy,
    OCRPage,
    OCRTask,
    TaskStatus,
)
from .params import TaskParams

logger = logging.getLogger(__name__)

MAX_BULK_CANCEL = 1000


# --- Bulk cancel ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFilter:
    """The `filter` of a selective cancel; every field optional, lists match any of their values."""

    status: tuple[str, ...] = ()
    task_type: tuple[str, ...] = ()
    priority: tuple[str, ...] = ()
    batch_id: uuid.UUID | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def apply(self, tasks: QuerySet[OCRTask]) -> QuerySet[OCRTask]:
        if self.status:
            tasks = tasks.filter(status__in=self.status)
        if self.task_type:
            tasks = tasks.filter(task_type__in=self.task_type)
        if self.priority:
            tasks = tasks.filter(priority__in=self.priority)
        if self.batch_id:
            tasks = tasks.filter(batch_id=self.batch_id)
        if self.created_after:
            tasks = tasks.filter(created_at__gte=self.created_after)
        if self.created_before:
            tasks = tasks.filter(created_at__lt=self.created_before)
        return tasks


@dataclass
class BulkCancelResult:
    reason: str
    cancelled: list[str] = field(default_factory=list)
    already_cancelled: list[str] = field(default_factory=list)
    already_finished: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    truncated: bool = False

    def as_dict(self) -> dict:
        return {
            "cancelled": self.cancelled,
            "already_cancelled": self.already_cancelled,
            "already_finished": self.already_finished,
            "not_found": self.not_found,
            "truncated": self.truncated,
            "reason": self.reason,
        }


def _classify(task: OCRTask) -> str:
    if task.status in ACTIVE_STATUSES:
        return "cancelled"
    return "already_cancelled" if task.status == TaskStatus.CANCELLED else "already_finished"


def tasks_cancel_many(
    *,
    tasks: QuerySet[OCRTask],
    task_ids: list[str] | None = None,
    task_filter: TaskFilter | None = None,
    reason: str | None = None,
    dry_run: bool = False,
    cancelled_by: str = CancelledBy.USER,
    user=None,
    client: str = "",
) -> BulkCancelResult:
    """Cancel the tasks of `tasks` (those the caller may cancel) named by `task_ids`, or matched
    by `task_filter` (oldest first, at most MAX_BULK_CANCEL); with `dry_run`, only say what would be."""
    result = BulkCancelResult(reason=(reason or "").strip() or services.DEFAULT_CANCEL_REASON)
    if task_ids is not None:
        if len(task_ids) > MAX_BULK_CANCEL:
            raise InvalidInput(f"task_ids: at most {MAX_BULK_CANCEL} ids per call, got {len(task_ids)}")
        wanted: dict[str, uuid.UUID | None] = {}
        for raw in task_ids:
            try:
                wanted[str(raw)] = uuid.UUID(str(raw))
            except ValueError:
                wanted[str(raw)] = None
        found = {task.pk: task for task in tasks.filter(pk__in=[pk for pk in wanted.values() if pk])}
        selected, seen = [], set()
        for raw, pk in wanted.items():
            if pk in found and pk not in seen:
                selected.append(found[pk])
            elif pk not in found:
                result.not_found.append(raw)
            seen.add(pk)  # an id repeated (in any spelling) is handled once
    else:
        matched = list((task_filter or TaskFilter()).apply(tasks).order_by("created_at")[: MAX_BULK_CANCEL + 1])
        result.truncated = len(matched) > MAX_BULK_CANCEL
        selected = matched[:MAX_BULK_CANCEL]
    # running work first, so its tesseracts stop before the pending tail is written; the lists
    # keep the order asked for (ids) or oldest first (filter)
    outcomes = {
        task.pk: _cancel_one(task, result.reason, dry_run, cancelled_by, user, client)
        for task in sorted(selected, key=lambda task: task.status != TaskStatus.PROCESSING)
    }
    for task in selected:
        getattr(result, outcomes[task.pk]).append(str(task.pk))
    logger.info(
        "bulk cancel by %s%s: %d cancelled, %d already cancelled, %d finished, %d not found (tasks %s)",
        cancelled_by,
        " (dry run)" if dry_run else "",
        len(result.cancelled),
        len(result.already_cancelled),
        len(result.already_finished),
        len(result.not_found),
        ", ".join(result.cancelled[:20]) + (" ..." if len(result.cancelled) > 20 else ""),
    )
    return result


def _cancel_one(task: OCRTask, reason: str, dry_run: bool, cancelled_by: str, user, client: str) -> str:
    if dry_run:
        return _classify(task)
    try:
        outcome = services.task_cancel(task=task, reason=reason, cancelled_by=cancelled_by, user=user, client=client)
    except TaskNotCancellable:
        return "already_finished"
    return "cancelled" if outcome.newly_cancelled else "already_cancelled"


# --- Batches ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchDocument:
    kind: Kind
    params: TaskParams
    filename: str
    data: bytes
    total_pages: int


def batch_submit(*, documents: list[BatchDocument], owner=None, session_key: str = "") -> tuple[Batch, list[OCRTask]]:
    """One batch and one pending task per document, all or none (each queued once committed)."""
    created: list[OCRTask] = []
    try:
        with transaction.atomic():
            batch = Batch.objects.create(owner=owner, session_key=session_key or "")
            for document in documents:
                created.append(
                    services.task_submit(
                        kind=document.kind,
                        params=document.params,
                        filename=document.filename,
                        data=document.data,
                        owner=owner,
                        session_key=session_key,
                        total_pages=document.total_pages,
                        batch=batch,
                    )
                )
    except Exception:
        for task in created:  # rolled back: their stored input files go too
            task.input_file.delete(save=False)
        raise
    logger.info("batch %s: %d tasks submitted (%s)", batch.pk, len(created), ", ".join(str(t.pk) for t in created))
    return batch, created


def batch_counts(batch: Batch) -> dict[str, int]:
    counts = dict.fromkeys(TaskStatus.values, 0)
    for status in batch.tasks.values_list("status", flat=True):
        counts[status] += 1
    return counts


def batch_status(batch: Batch, counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if batch.cancelled_at is not None:
        return "cancelled"
    if total and counts[TaskStatus.COMPLETED] == total:
        return "completed"
    if total and sum(counts[s] for s in TERMINAL_STATUSES) == total:
        return "finished"
    if counts[TaskStatus.PENDING] == total:
        return "pending"
    return "processing"


def batch_cancel(*, batch: Batch, reason: str | None, user=None, client: str = "") -> tuple[BulkCancelResult, bool]:
    """Mark the batch cancelled and cancel each of its tasks still pending or processing.
    Returns the bulk-cancel lists and whether this call cancelled the batch (False: it already was).
    Raises BatchNotCancellable when every task had already finished before."""
    reason = (reason or "").strip() or services.DEFAULT_CANCEL_REASON
    counts = batch_counts(batch)
    if batch.cancelled_at is None and batch_status(batch, counts) in ("completed", "finished"):
        raise BatchNotCancellable(batch.pk, batch_status(batch, counts))
    newly = bool(
        Batch.objects.filter(pk=batch.pk, cancelled_at__isnull=True).update(
            cancelled_at=timezone.now(), cancellation_reason=reason
        )
    )
    batch.refresh_from_db()
    result = tasks_cancel_many(
        tasks=batch.tasks.all(),
        task_filter=TaskFilter(status=tuple(ACTIVE_STATUSES)),
        reason=batch.cancellation_reason if not newly else reason,
        user=user,
        client=client,
    )
    logger.info(
        "batch %s: cancelled (%s), %d tasks stopped", batch.pk, "new" if newly else "again", len(result.cancelled)
    )
    return result, newly


# --- Resume -----------------------------------------------------------------------------------


RESUMABLE = (TaskStatus.CANCELLED, TaskStatus.FAILED)


def task_resume(*, task: OCRTask) -> OCRTask:
    """A new task of the same kind, file and parameters; the old task's successful pages are
    copied into it (not recomputed) before it is queued. The old task is not changed."""
    if task.status not in RESUMABLE:
        raise InvalidInput(f"Task {task.pk} cannot be resumed: {task.status}")
    if not task.kind.is_pdf:
        raise InvalidInput(f"Task {task.pk} cannot be resumed: {task.kind.label} tasks have a single page")
    try:
        with task.input_file.open("rb") as handle:
            data = handle.read()
    except (OSError, ValueError):
        raise InputGone(f"Task {task.pk} cannot be resumed: its input file is gone (retention)") from None
    kept = list(OCRPage.objects.filter(task_id=task.pk, success=True))
    with transaction.atomic():
        resumed = services.task_submit(
            kind=task.kind,
            params=task.parameters,
            filename=task.input_name,
            data=data,
            owner=task.owner,
            session_key=task.session_key,
            streaming=task.streaming,
            total_pages=task.total_pages,
            resumed_from=task.pk,  # not in the old task's batch: a cancelled batch stays as it ended
        )
        OCRPage.objects.bulk_create(
            OCRPage(
                task_id=resumed.pk,
                page_number=page.page_number,
                text=page.text,
                source=page.source,
                processing_time=page.processing_time,
                success=True,
                extra=page.extra,
            )
            for page in kept
        )
        OCRTask.objects.filter(pk=resumed.pk).update(processed_pages=len(kept))
    resumed.refresh_from_db()
    logger.info("task %s: resumes task %s, %d pages kept", resumed.pk, task.pk, len(kept))
    return resumed
