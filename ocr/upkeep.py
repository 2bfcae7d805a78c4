"""Writes of the sweeper, the watchers and the schedules: deadlines, lost work, retention.

Safe to run anywhere, any number of times: every change is a conditional UPDATE in the same
way as in ocr/services.py.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from . import progress, queue, rollup, services
from .idempotency import REPLAY_WINDOW
from .kinds import pdf_kinds
from .models import (
    ACTIVE_STATUSES,
    CancelAudit,
    CancelledBy,
    IdempotencyRecord,
    OCRTask,
    OperatorEvent,
    TaskStatus,
)

logger = logging.getLogger(__name__)

# --- Deadlines ------------------------------------------------------------------------------


def deadline_reason(task: OCRTask) -> str:
    return f"Deadline of {task.parameters.deadline_seconds} s exceeded"


def task_cancel_if_expired(*, task: OCRTask) -> bool:
    """Cancel `task` with the deadline reason when its deadline has passed; True if it did."""
    if task.deadline_at is None or task.deadline_at > timezone.now():
        return False
    return services.task_cancel_if_active(
        task_id=task.pk, reason=deadline_reason(task), cancelled_by=CancelledBy.DEADLINE
    )


def next_deadline():
    """The earliest deadline of an active task (None when there is none)."""
    return (
        OCRTask.objects.filter(status__in=ACTIVE_STATUSES, deadline_at__isnull=False)
        .order_by("deadline_at")
        .values_list("deadline_at", flat=True)
        .first()
    )


def expire_deadlines() -> int:
    """Cancel every active task whose deadline has passed; returns how many were cancelled."""
    expired = OCRTask.objects.filter(status__in=ACTIVE_STATUSES, deadline_at__lte=timezone.now())
    return sum(task_cancel_if_expired(task=task) for task in expired)


# --- Lost work ------------------------------------------------------------------------------

WORKER_LOST_MESSAGE = "Worker lost"
MAX_ATTEMPTS = 2  # a task whose work was lost this many times fails instead of being re-queued
CANCELLED_RESULT_WINDOW = timedelta(days=1)  # how far back cancels are looked at for a lost worker


def reap_lost_tasks(
    *, lost_after: float, max_attempts: int = MAX_ATTEMPTS, requeue_pending_after: float = 60.0
) -> dict:
    """Find work whose worker died and put it right; safe to run anywhere, any number of times.

    - processing without a heartbeat for `lost_after` s: back to pending and re-queued (the
      pages already done are kept and skipped) while attempts remain, else failed "Worker lost";
    - pending for `requeue_pending_after` s and not on the queue (the Redis broker does not
      acknowledge, so a job taken by a dying worker is gone): queued again;
    - cancelled in the last CANCELLED_RESULT_WINDOW while it ran, and its worker died before it
      stopped (no heartbeat for `lost_after` s, no stop recorded): the partial result the worker
      would have stored (services.task_work_stopped) is stored. Its stop time stays unknown.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=lost_after)
    report = {"requeued": 0, "failed": 0, "pending_requeued": 0}
    # a sliced task's lost work is its slices' (ocr/slices.py): re-queued one by one
    stale = OCRTask.objects.filter(status=TaskStatus.PROCESSING, heartbeat_at__lt=cutoff, slices__isnull=True)
    for task in stale.only("id", "attempt"):
        if task.attempt < max_attempts:
            if services.task_requeue(task_id=task.pk, attempt=task.attempt):
                report["requeued"] += 1
                logger.warning("task %s: worker lost (attempt %d), re-queued", task.pk, task.attempt)
        elif services.task_fail(task_id=task.pk, error=WORKER_LOST_MESSAGE, attempt=task.attempt):
            report["failed"] += 1
    waiting_since = now - timedelta(seconds=requeue_pending_after)
    waiting = OCRTask.objects.filter(status=TaskStatus.PENDING, created_at__lt=waiting_since).filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=waiting_since)
    )
    for task_id in queue.missing_from_queue(list(waiting.values_list("pk", flat=True)[:1000])):
        logger.warning("task %s: pending but not on the queue, queued again", task_id)
        OCRTask.objects.filter(pk=task_id).update(enqueued_at=now)
        services.enqueue_task(task_id)
        report["pending_requeued"] += 1
    report["cancelled_results_stored"] = _store_results_of_lost_cancels(now - CANCELLED_RESULT_WINDOW, cutoff)
    return report


def _store_results_of_lost_cancels(since, cutoff) -> int:
    """Store the partial results of the PDF tasks cancelled since `since` while they ran, that a
    cancel leaves to their worker (services.task_cancel), whose worker has sent no heartbeat since
    `cutoff` and recorded no stop. Returns how many were stored."""
    recent = OCRTask.objects.filter(status=TaskStatus.CANCELLED, cancelled_at__gte=since)  # an index range
    lost = recent.filter(
        task_type__in=pdf_kinds(),  # an image's result before its one page is none: nothing to store
        result__isnull=True,
        work_stopped_at__isnull=True,
        heartbeat_at__lt=cutoff,
    )
    stored = 0
    for task in lost[:1000]:
        result = progress.assemble_result(task, progress.recorded_pages(task))
        if OCRTask.objects.filter(pk=task.pk, result__isnull=True).update(result=result):
            logger.warning("task %s: cancelled, its worker lost before it stopped: partial result stored", task.pk)
            stored += 1
    return stored


# --- Retention --------------------------------------------------------------------------------


PURGE_BATCH = 500  # tasks deleted at a time: Django's delete loads each task (its result too) first


def purge_expired(*, retention_days: int, audit_retention_days: int | None = None, dry_run: bool = False) -> dict:
    """Delete terminal tasks older than `retention_days` (their input files, pages and events
    with them), and cancel audits and operator feed items older than `audit_retention_days`.
    Active tasks are kept; the metrics of the tasks deleted have been added up first (a counter
    that went down would read as a reset to Prometheus)."""
    now = timezone.now()
    if not dry_run:
        rollup.fold_due(now)
    cutoff = now - timedelta(days=retention_days)
    old = OCRTask.objects.exclude(status__in=ACTIVE_STATUSES).filter(created_at__lt=cutoff)
    audit_cutoff = now - timedelta(days=audit_retention_days or retention_days)
    audits = CancelAudit.objects.filter(created_at__lt=audit_cutoff)
    report = {"tasks": old.count(), "files": 0, "audits": audits.count(), "dry_run": dry_run}
    if dry_run:
        return report
    storage = OCRTask._meta.get_field("input_file").storage
    while batch := list(old.values_list("id", "input_file")[:PURGE_BATCH]):
        for task_id, name in batch:
            try:
                if name:
                    storage.delete(name)
                    report["files"] += 1
            except OSError:
                logger.warning("task %s: input file could not be deleted", task_id)
        OCRTask.objects.filter(pk__in=[task_id for task_id, _ in batch]).delete()
    audits.delete()
    OperatorEvent.objects.filter(created_at__lt=audit_cutoff).delete()
    IdempotencyRecord.objects.filter(created_at__lt=now - REPLAY_WINDOW).delete()  # replays last 24 h
    logger.info("retention: deleted %s", report)
    return report
