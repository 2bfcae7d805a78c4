"""PDFs of more than OCR_SLICE_PAGES pages, split into slices that workers on any node read.

The task keeps one status, one event stream and one result. The job that starts it
(ocr/tasks.py) writes its slices (OCRSlice rows), queues one more job per further slice and reads
the first. Every job first takes a pending slice of a running task (`claim`) unless a pending task
of a higher priority waits, and once its slice is read takes the next one of the same task, so a
job lost by the broker never strands a slice. A claim is one conditional UPDATE of a row chosen
with SELECT ... FOR UPDATE SKIP LOCKED (PostgreSQL; SQLite's IMMEDIATE transactions serialize
it): two workers never read the same page. Pages go through services.page_record as for any task
(one gapless seq per task, results per page number), each guarded in the same transaction by its
slice's attempt; the task finishes once, when its last slice ends.

Cancel: each slice's watcher polls its task's row and kills its tesseracts once the task is no
longer processing (or the slice was taken over); no slice is claimed for a task that is not
processing. A slice whose worker went quiet is re-queued alone; its recorded pages are kept.
`limits.max_cpu_seconds` counts every slice's CPU seconds (reported with its heartbeats).
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, IntegerField, Sum, Value, When
from django.utils import timezone

from . import engine, queue, services
from .models import OCRPage, OCRSlice, OCRTask, SliceStatus, TaskStatus
from .pipeline import PagePipeline
from .scheduling import PRIORITY_RANK, priority_rank
from .services import PageOutcome
from .upkeep import WORKER_LOST_MESSAGE
from .watcher import CancelWatcher, run_watched

logger = logging.getLogger(__name__)

UNFINISHED = (SliceStatus.PENDING, SliceStatus.PROCESSING)


def is_sliced(page_numbers: list[int]) -> bool:
    return len(page_numbers) > settings.OCR_SLICE_PAGES


def plan(page_numbers: list[int], size: int) -> list[list[int]]:
    """The task's pages cut into runs of `size`, in order."""
    return [page_numbers[start : start + size] for start in range(0, len(page_numbers), size)]


# --- Start and claim ------------------------------------------------------------------------


# Jobs queued beyond one per slice: the starting node's cluster, its worker busy with the first
# slice, may take up to two jobs off Redis ahead of time (Q_CLUSTER queue_limit 1, plus one in its
# pusher's hand); these two make sure the other slices' jobs reach the nodes that are free. A
# job that finds no slice left starts the next pending task, or does nothing.
SPARE_JOBS = 2


def create(task: OCRTask, page_numbers: list[int]) -> int:
    """Write the task's slices (idempotent) and queue a job for each but the first, which the
    starting job reads itself, plus SPARE_JOBS; returns how many slices the task has."""
    chunks = plan(page_numbers, settings.OCR_SLICE_PAGES)
    with transaction.atomic():
        OCRSlice.objects.bulk_create(
            [
                OCRSlice(task_id=task.pk, index=index, first_page=min(chunk), last_page=max(chunk), pages=chunk)
                for index, chunk in enumerate(chunks)
            ],
            ignore_conflicts=True,
        )
        for _ in range(len(chunks) - 1 + (SPARE_JOBS if len(chunks) > 1 else 0)):
            transaction.on_commit(partial(services.enqueue_task, task.pk))
    logger.info(
        "task %s: started (attempt %d), %d pages in %d slices", task.pk, task.attempt, len(page_numbers), len(chunks)
    )
    return len(chunks)


def run_task(task: OCRTask, doc, page_numbers: list[int]) -> None:
    """The starting job: write the task's slices, then read them until none is left to take."""
    create(task, page_numbers)
    _run_slices(task, doc, claim(task_id=task.pk))


def run_claimed(claimed: OCRSlice) -> bool:
    """Any other job: read `claimed`, then further slices of its task."""
    task = OCRTask.objects.get(pk=claimed.task_id)
    with task.input_file.open("rb") as handle:
        doc = engine.open_pdf(handle.read())
    try:
        _run_slices(task, doc, claimed)
    finally:
        doc.close()
    return True


def _run_slices(task: OCRTask, doc, claimed: OCRSlice | None) -> None:
    while claimed is not None:
        _run_one(task, doc, claimed)
        claimed = claim(task_id=task.pk)


def _priorities_now() -> list[str]:
    """Priorities whose slices go before every pending task: those not below the best pending."""
    pending = OCRTask.objects.filter(status=TaskStatus.PENDING).order_by().values_list("priority", flat=True).distinct()
    best = min(map(priority_rank, pending), default=len(PRIORITY_RANK))
    return [str(priority) for priority, rank in PRIORITY_RANK.items() if rank <= best]


def claim(*, task_id: uuid.UUID | None = None) -> OCRSlice | None:
    """Take the next pending slice of a processing task (of `task_id` when given; else high
    priority first, then the task started first), or None; never the same slice twice."""
    rows = OCRSlice.objects.filter(status=SliceStatus.PENDING, task__status=TaskStatus.PROCESSING)
    if not rows.exists():  # the common case, without a write lock (SQLite) or a priority query
        return None
    if task_id is not None:
        rows = rows.filter(task_id=task_id).order_by("index")
    else:
        rank = Case(
            *(When(task__priority=str(priority), then=Value(value)) for priority, value in PRIORITY_RANK.items()),
            default=Value(1),
            output_field=IntegerField(),
        )
        rows = rows.filter(task__priority__in=_priorities_now()).annotate(rank=rank)
        rows = rows.order_by("rank", "task__started_at", "task_id", "index")
    now = timezone.now()
    with transaction.atomic():
        candidate = rows.select_for_update(skip_locked=True, of=("self",)).values_list("pk", flat=True).first()
        if candidate is None:
            return None
        taken = OCRSlice.objects.filter(pk=candidate, status=SliceStatus.PENDING).update(
            status=SliceStatus.PROCESSING,
            attempt=F("attempt") + 1,
            worker_host=settings.OCR_NODE_NAME[:255],
            worker_pid=os.getpid(),
            heartbeat_at=now,
        )
    return OCRSlice.objects.get(pk=candidate) if taken else None


# --- One slice --------------------------------------------------------------------------------


class SliceWatcher(CancelWatcher):
    """The task's watcher, for one attempt of one slice: stops when the task stops or the slice
    is taken over; heartbeats the slice too, and counts the other slices' CPU in the limits."""

    def __init__(self, task: OCRTask, slice_: OCRSlice, scope: engine.CancelScope) -> None:
        super().__init__(task, scope)
        self.slice = slice_
        self.others_cpu = 0.0

    def poll_query(self) -> tuple[str, list, str]:
        """(task status, task attempt), the attempt -1 once the slice is no longer this one's."""
        if self._poll_sql is None:
            slices = connection.ops.quote_name(OCRSlice._meta.db_table)
            tasks = connection.ops.quote_name(OCRTask._meta.db_table)
            self._poll_sql = (
                f"SELECT t.status, CASE WHEN s.status = %s AND s.attempt = %s THEN t.attempt ELSE -1 END "  # noqa: S608
                f"FROM {slices} s JOIN {tasks} t ON t.id = s.task_id WHERE s.id = %s"
            )
        return self._poll_sql, [str(SliceStatus.PROCESSING), self.slice.attempt, self.slice.pk], "FOR SHARE OF t"

    def requeue(self) -> None:
        requeue(self.slice)

    def heartbeat(self) -> None:
        super().heartbeat()
        OCRSlice.objects.filter(pk=self.slice.pk, status=SliceStatus.PROCESSING, attempt=self.slice.attempt).update(
            heartbeat_at=timezone.now(), cpu_seconds=self.scope.cpu_seconds()
        )
        if self.limits.get("max_cpu_seconds"):
            others = OCRSlice.objects.filter(task_id=self.task.pk).exclude(pk=self.slice.pk)
            self.others_cpu = others.aggregate(total=Sum("cpu_seconds"))["total"] or 0.0

    def cpu_seconds(self) -> float:
        return self.scope.cpu_seconds() + self.others_cpu


class SlicePipeline(PagePipeline):
    """The page pipeline of one slice: a page is written only while the slice is this attempt's."""

    def __init__(self, task: OCRTask, scope: engine.CancelScope, slice_: OCRSlice) -> None:
        super().__init__(task, scope)
        self.slice = slice_

    def write(self, page_number: int, outcome: PageOutcome) -> bool:
        with transaction.atomic():  # the slice row stays locked until the page is in
            ours = OCRSlice.objects.filter(
                pk=self.slice.pk, status=SliceStatus.PROCESSING, attempt=self.slice.attempt
            ).update(heartbeat_at=timezone.now())
            return bool(ours) and super().write(page_number, outcome)


def _run_one(task: OCRTask, doc, slice_: OCRSlice) -> None:
    done = set(
        OCRPage.objects.filter(task_id=task.pk, page_number__in=slice_.pages).values_list("page_number", flat=True)
    )
    pages = [number for number in slice_.pages if number not in done]  # kept from a lost attempt
    logger.info(
        "task %s: slice %d (pages %d-%d, attempt %d): %d pages to do",
        task.pk,
        slice_.index,
        slice_.first_page,
        slice_.last_page,
        slice_.attempt,
        len(pages),
    )
    scope = engine.CancelScope(label=str(task.pk))
    mine = OCRSlice.objects.filter(pk=slice_.pk, status=SliceStatus.PROCESSING, attempt=slice_.attempt)

    def finish() -> None:
        if mine.update(status=SliceStatus.DONE, cpu_seconds=scope.cpu_seconds()) and not (
            OCRSlice.objects.filter(task_id=task.pk, status__in=UNFINISHED).exists()
        ):
            services.task_finish(task_id=task.pk, attempt=task.attempt)  # once: the last slice's

    try:
        run_watched(
            task,
            SliceWatcher(task, slice_, scope),
            partial(SlicePipeline(task, scope, slice_).run_pdf, doc, pages),
            finish,
        )
    finally:
        mine.update(status=SliceStatus.STOPPED, cpu_seconds=scope.cpu_seconds())  # its task ended first


# --- Lost work ------------------------------------------------------------------------------


def requeue(slice_: OCRSlice) -> bool:
    """processing (in its attempt, whose worker is thought lost) -> pending, a job queued on commit."""
    with transaction.atomic():
        changed = OCRSlice.objects.filter(pk=slice_.pk, status=SliceStatus.PROCESSING, attempt=slice_.attempt).update(
            status=SliceStatus.PENDING, worker_pid=None, queued_at=timezone.now()
        )
        if changed:
            transaction.on_commit(partial(services.enqueue_task, slice_.task_id))
    if changed:
        logger.warning(
            "task %s: slice %d lost its worker (attempt %d), re-queued", slice_.task_id, slice_.index, slice_.attempt
        )
    return bool(changed)


def reap_lost_slices(*, lost_after: float, max_attempts: int = 2, requeue_pending_after: float = 60.0) -> dict:
    """Slices of processing tasks whose worker went quiet for `lost_after` s: re-queued alone
    while attempts remain, else the task fails "Worker lost"; pending slices that waited
    `requeue_pending_after` s without a job of their task on the broker get one."""
    now = timezone.now()
    report = {"slices_requeued": 0, "slices_failed": 0, "slice_jobs_queued": 0}
    stale = OCRSlice.objects.filter(
        status=SliceStatus.PROCESSING,
        task__status=TaskStatus.PROCESSING,
        heartbeat_at__lt=now - timedelta(seconds=lost_after),
    )
    for slice_ in stale.only("id", "task_id", "index", "attempt"):
        if slice_.attempt < max_attempts:
            report["slices_requeued"] += requeue(slice_)
        elif services.task_fail(task_id=slice_.task_id, error=WORKER_LOST_MESSAGE):
            report["slices_failed"] += 1
    waiting_since = now - timedelta(seconds=requeue_pending_after)
    waiting = OCRSlice.objects.filter(
        status=SliceStatus.PENDING, task__status=TaskStatus.PROCESSING, queued_at__lt=waiting_since
    )
    for task_id in queue.missing_from_queue(set(waiting.values_list("task_id", flat=True)[:1000])):
        logger.warning("task %s: a slice waits without a job, queued one", task_id)
        waiting.filter(task_id=task_id).update(queued_at=now)
        services.enqueue_task(task_id)
        report["slice_jobs_queued"] += 1
    return report
