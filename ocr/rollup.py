"""The metrics of the past, added up once: a scrape of /metrics (and the staff figures over all
time) reads the rollup row plus what came after it, so its cost follows the recent work, not the
history (#11: 187 ms per scrape on PostgreSQL with 400,000 pages and 105,000 tasks stored, when
every scrape aggregated them all).

The rollup (models.MetricsRollup, one row) holds the additive figures (metrics.task_figures and
metrics.page_figures) of the tasks that ended before `tasks_ended_before` (a terminal task never
changes again) and of the pages up to id `pages_through`. Only what ended or was recorded more
than FOLD_AFTER ago is added, so that no transaction still open (on any host's clock) is passed
over. The figures so survive the retention purge: counters that go down would read as resets to
Prometheus.

Any process may fold: the row is updated only if its watermarks are still those it read
(compare-and-set), so a fold that started from a row another process has moved on since (and
the purge may have deleted what that one added up) writes nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import NamedTuple

from django.db.models import Max, Q, QuerySet
from django.utils import timezone

from .models import ACTIVE_STATUSES, MetricsRollup, OCRPage, OCRTask, TaskStatus

logger = logging.getLogger(__name__)

FOLD_AFTER = timedelta(minutes=10)  # how old an end or a page must be to be added up
FOLD_EVERY = timedelta(minutes=1)  # the rollup is written at most this often
ENDED_AT = {  # a terminal task's end
    TaskStatus.COMPLETED: "completed_at",
    TaskStatus.FAILED: "completed_at",
    TaskStatus.CANCELLED: "cancelled_at",
}


def ended(*, since: datetime | None = None, until: datetime | None = None, statuses=tuple(ENDED_AT)) -> Q:
    """Terminal tasks (of `statuses`) whose end (completed_at, or cancelled_at) is in [since,
    until): a union of (status, end time) index ranges."""
    condition = Q()
    for status in statuses:
        field = ENDED_AT[status]
        term = Q(status=status)
        if since is not None:
            term &= Q(**{f"{field}__gte": since})
        if until is not None:
            term &= Q(**{f"{field}__lt": until})
        condition |= term
    return condition


def _not_folded(before: datetime | None, statuses=(*ACTIVE_STATUSES, *ENDED_AT)) -> Q:
    """Tasks (of `statuses`) the rollup leaves out: active, ended since `before`, or with no end
    time. A union of index ranges, never a NOT that scans them all; one status at a time, so that
    SQLite does not read every cancelled task for a filter on status=cancelled."""
    if before is None:
        return Q(status__in=statuses)
    ended_statuses = [status for status in statuses if status in ENDED_AT]
    condition = Q(status__in=[status for status in statuses if status in ACTIVE_STATUSES])
    condition |= ended(since=before, statuses=ended_statuses)
    for status in ended_statuses:
        condition |= Q(status=status, **{f"{ENDED_AT[status]}__isnull": True})
    return condition


def added(a: dict, b: dict) -> dict:
    """Two figure dicts added key by key (nested dicts in turn; a missing number counts 0), in
    the order of `b`'s keys, then `a`'s others (a jsonb column keeps no order: pass fresh figures
    as `b`)."""
    total = {}
    for key in [*b, *(key for key in a if key not in b)]:
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) or isinstance(right, dict):
            total[key] = added(left or {}, right or {})
        else:
            total[key] = round((left or 0) + (right or 0), 4)
    return total


class Unfolded(NamedTuple):
    figures: dict  # added up
    tasks: QuerySet[OCRTask]  # left out
    cancelled: QuerySet[OCRTask]  # the cancelled ones among them
    pages: QuerySet[OCRPage]  # left out


def current() -> Unfolded:
    """The figures added up (after adding what is due), and the tasks and pages they leave out."""
    rollup = fold_due()
    before = rollup.tasks_ended_before
    return Unfolded(
        rollup.figures,
        OCRTask.objects.filter(_not_folded(before)),
        OCRTask.objects.filter(_not_folded(before, statuses=[TaskStatus.CANCELLED])),
        OCRPage.objects.filter(id__gt=rollup.pages_through),
    )


def fold_due(now: datetime | None = None) -> MetricsRollup:
    """Add up what ended and was recorded before FOLD_AFTER ago, if the last fold is older than
    FOLD_EVERY (the first one adds up the whole history once); returns the rollup as it stands."""
    from .metrics import page_figures, task_figures  # metrics reads the rollup

    rollup, _ = MetricsRollup.objects.get_or_create(pk=1)
    until = (now or timezone.now()) - FOLD_AFTER
    before, through = rollup.tasks_ended_before, rollup.pages_through
    if before is not None and until - before < FOLD_EVERY:
        return rollup
    pages_through = (
        OCRPage.objects.filter(id__gt=through, created_at__lt=until).aggregate(last=Max("id"))["last"] or through
    )
    tasks = OCRTask.objects.filter(ended(since=before, until=until))
    cancelled = OCRTask.objects.filter(ended(since=before, until=until, statuses=[TaskStatus.CANCELLED]))
    pages = OCRPage.objects.filter(id__gt=through, id__lte=pages_through)
    figures = added(rollup.figures, added(task_figures(tasks, cancelled), page_figures(pages)))
    changed = MetricsRollup.objects.filter(pk=1, tasks_ended_before=before, pages_through=through).update(
        figures=figures, tasks_ended_before=until, pages_through=pages_through, updated_at=timezone.now()
    )
    if not changed:  # another process folded first: its row is as good
        return MetricsRollup.objects.get(pk=1)
    logger.info("metrics rollup: tasks ended before %s and pages through id %d added up", until, pages_through)
    rollup.figures, rollup.tasks_ended_before, rollup.pages_through = figures, until, pages_through
    return rollup
