"""Writes whose SQL is compiled once (compiled.py), for the requests a client waits on.

`CANCEL`: a cancel's conditional UPDATE ... RETURNING (services.task_cancel_visible) of the task
as its caller sees it (selectors.TaskLookup). Building its SQL through the ORM each time took
0.6-0.8 ms of daphne's CPU per cancel: 4.6-5.1 ms per cancel before, 3.9-4.4 ms after, and the
answer as much sooner (p50 4.7 -> 4.0 ms on SQLite, 6.1 -> 5.2 ms on PostgreSQL; cancels one
after another on an idle service).
"""

from __future__ import annotations

from django.db.models import F, QuerySet

from . import selectors
from .compiled import CompiledUpdate
from .models import ACTIVE_STATUSES, OCRTask, TaskStatus
from .returning import DATABASE_CLOCK


def _cancel_update(shape, *, reason, cancelled_by, user_id=None, at=None, **lookup) -> tuple[QuerySet, dict]:
    """The cancel of an active task of this lookup; `at` None: PostgreSQL's clock as the UPDATE
    runs (returning.locked_clock gives the value to pass elsewhere)."""
    rows = selectors.visible_query(shape, **lookup).filter(status__in=ACTIVE_STATUSES)
    return rows, {
        "event_seq": F("event_seq") + 1,
        "status": TaskStatus.CANCELLED,
        "cancellation_reason": reason,
        "cancelled_by": cancelled_by,
        "cancelled_by_user_id": user_id,
        "cancelled_at": DATABASE_CLOCK if at is None else at,
    }


CANCEL = CompiledUpdate(
    OCRTask,
    _cancel_update,
    **selectors.LOOKUP_FIELDS,
    reason="cancellation_reason",
    cancelled_by="cancelled_by",
    user_id="cancelled_by_user",
    at="cancelled_at",
)
