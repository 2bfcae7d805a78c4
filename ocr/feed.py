"""The operator feed: every task's terminal event and every refused cancel request, for staff.

`item()` makes every item: ocr.services stores it where terminal events and cancel requests
are written, in their transaction, and progress.publish pushes the new id to the operator group
once committed (the one sender to Channels). `follow(after)` is the one reader, behind the
staff WebSocket `ws/ocr/events/` and SSE `GET /v1/ocr/events`: the stored items after a cursor
(the row id; without one, the newest OCR_FEED_REPLAY), then live ones. A push only wakes the
reader, which always reads the database: a lost or duplicated push, or a Redis restart (the
group re-joined every OCR_STREAM_RESYNC_SECONDS, as ocr/streams.py does), costs no item.

Ids come from a sequence, and on PostgreSQL a transaction may commit id N+1 before id N. The
reader never steps over a missing id until the item after it is OCR_FEED_GAP_SECONDS old (a
rolled-back transaction leaves a hole for ever), so a resumed cursor misses nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, transaction
from django.utils import timezone

from . import progress
from .models import CancelAudit, OCRTask, OperatorEvent, OperatorEventType
from .returning import insert_together
from .streams import DatabaseRetry, Membership

logger = logging.getLogger(__name__)

READ_LIMIT = 200  # items per database read; a longer backlog takes several reads
GAP_POLL_SECONDS = 0.25  # how often a reader waiting for a missing id looks again


def _usernames(*user_ids: int | None, known=None) -> dict[int, str]:
    """Usernames by id; `known` (a user, or None) is not read again (a cancel's caller is mostly
    the task's owner and its canceller)."""
    names = {known.pk: known.username} if getattr(known, "pk", None) is not None else {}
    ids = {pk for pk in user_ids if pk is not None and pk not in names}
    if ids:
        names.update(get_user_model().objects.filter(pk__in=ids).values_list("pk", "username"))
    return names


def item(
    task: OCRTask,
    type: str,
    *,
    reason: str | None = None,
    cancelled_by: str | None = None,
    user=None,
    outcome: str | None = None,
) -> OperatorEvent:
    """One item about `task` (its row as it stands after the change), to store; `user` is the
    caller, if known.

    A terminal item takes its reason from the task (cancellation reason or error); a refused
    cancel names the reason, channel (`cancelled_by`) and user of the request, and its outcome."""
    refused = type == OperatorEventType.CANCEL_REFUSED
    user_id = getattr(user, "pk", None) if refused else task.cancelled_by_user_id
    names = _usernames(task.owner_id, user_id, known=user)
    payload = {
        "type": type,
        "task_id": str(task.pk),
        "task_type": task.task_type,
        "owner": names.get(task.owner_id),
        "status": task.status,
        "reason": reason if refused else (task.cancellation_reason or task.error_message),
        "cancelled_by": cancelled_by if refused else task.cancelled_by,
        "cancelled_by_user": names.get(user_id),
        "outcome": outcome if refused else type,
        "processed_pages": task.processed_pages,
        "failed_pages": task.failed_pages,
        "total_pages": task.total_pages,
        "worker_node": task.worker_host or None,
        "timestamp": timezone.now().isoformat(),
    }
    return OperatorEvent(type=type, task_id=task.pk, payload=payload)


def record_refused_cancel(task: OCRTask, audit: CancelAudit) -> None:
    """A cancel request that changed nothing (the task had ended, or was cancelled already): its
    feed item stored with its (new) audit row, in one statement where the database can; pushed
    on commit."""
    row = item(
        task,
        OperatorEventType.CANCEL_REFUSED,
        reason=audit.reason,
        cancelled_by=audit.cancelled_by,
        user=audit.user,
        outcome=audit.outcome,
    )
    insert_together(row, audit)
    transaction.on_commit(lambda: progress.publish_feed(row.pk, task.pk))


# --- Reading ----------------------------------------------------------------------------------


@database_sync_to_async
def start_cursor(after: int | None) -> int | None:
    """`after` itself, or (no cursor) the id before the newest OCR_FEED_REPLAY items; None when
    there is none yet: the first item to come is taken whatever its id."""
    if after is not None:
        return max(0, after)
    newest = list(OperatorEvent.objects.order_by("-pk").values_list("pk", flat=True)[: settings.OCR_FEED_REPLAY])
    return newest[-1] - 1 if newest else None


@database_sync_to_async
def _stored_after(cursor: int | None) -> list[tuple[int, dict, object]]:
    rows = OperatorEvent.objects.filter(pk__gt=cursor or 0).order_by("pk")
    return list(rows.values_list("pk", "payload", "created_at")[:READ_LIMIT])


def _deliverable(rows: list, cursor: int | None) -> tuple[list[dict], bool]:
    """The items that follow `cursor` without a hole (or after a hole old enough to be a
    rollback), and whether the reader must look again soon (a younger hole holds the rest)."""
    items = []
    settled = timezone.now() - timedelta(seconds=settings.OCR_FEED_GAP_SECONDS)
    for pk, payload, created_at in rows:
        if cursor is not None and pk != cursor + 1:
            if created_at > settled:
                return items, True  # an earlier id may still commit: wait for it
            logger.info("operator feed: ids %d..%d never committed (rolled back), skipped", cursor + 1, pk - 1)
        items.append({"id": pk, **payload})
        cursor = pk
    return items, len(rows) == READ_LIMIT


async def follow(
    after: int | None = None, *, keepalive: float | None = None, resync: float | None = None
) -> AsyncIterator[dict | None]:
    """Every item after the cursor `after` (None: the newest OCR_FEED_REPLAY first), in id
    order, then live ones, for as long as the caller reads; `None` is a keep-alive, yielded
    after `keepalive` seconds without an item."""
    resync = resync or settings.OCR_STREAM_RESYNC_SECONDS
    membership = Membership(progress.FEED_GROUP, "operator feed")
    await membership.join()  # before the first read, so that nothing falls between
    cursor = await start_cursor(after)
    read_database, look_again = True, False
    last_frame = last_sync = time.monotonic()  # keep-alive clock; resync clock
    retry = DatabaseRetry(membership.label)
    try:
        while True:
            if read_database and retry.due():
                try:
                    rows = await _stored_after(cursor)
                except DatabaseError as exc:  # a restart or failover: read again soon, live meanwhile
                    retry.failed(exc)
                else:
                    items, look_again = _deliverable(rows, cursor)
                    for item in items:
                        cursor = item["id"]
                        last_frame = time.monotonic()
                        yield item
                    read_database = False
                    retry.succeeded()
                    last_sync = time.monotonic()
            wake_at = last_sync + (GAP_POLL_SECONDS if look_again else resync)
            if read_database:
                wake_at = min(wake_at, retry.at)
            if keepalive is not None:
                wake_at = min(wake_at, last_frame + keepalive)
            message = await membership.receive(max(0.0, wake_at - time.monotonic()))
            now = time.monotonic()
            if message is not None:
                read_database = True  # a push carries only an id: the database has the item
                continue
            if keepalive is not None and now - last_frame >= keepalive:
                last_frame = now
                yield None
            if look_again or now - last_sync >= resync or not membership.joined:
                if not look_again:
                    await membership.join()  # idempotent; brings the group back after a Redis restart
                read_database = True
    finally:
        await membership.leave()
