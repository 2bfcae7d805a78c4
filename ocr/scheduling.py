"""Whether a submit is taken now (`admit`: MAX_CONCURRENT_TASKS, a high priority preempting a
low one), and which pending task starts next: high priority first, then round-robin across
clients, then oldest first; a task's place in that order (`queue_position`) and a start estimate.

Jobs on the broker do not choose their task: a job starts the first pending task of this order
(ocr/tasks.py). Every pending task has a job of its own on the queue, so every one is started.
A job takes a pending slice of a running sliced PDF (ocr/slices.py) first, unless a pending task
of a higher priority waits: started work is finished before new work of the same priority.

Round-robin: within a priority, a client's next task ranks by how many of its tasks are already
running or ahead of it, so one client's 200 queued tasks never keep another's single task waiting
behind all of them.
"""

from __future__ import annotations

import heapq
import logging
import math
import uuid
from collections import defaultdict
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.db.models import Avg, Case, Count, F, Q, When, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from .exceptions import ServiceUnavailable
from .kinds import Kind
from .models import ACTIVE_STATUSES, CancelledBy, OCRTask, Priority, TaskStatus

logger = logging.getLogger(__name__)

PRIORITY_RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
DEFAULT_TASK_SECONDS = 10.0
ESTIMATE_WINDOW = timedelta(hours=1)
LLM_NOT_CONFIGURED = "LLM OCR is not configured: set OCR_LLM_BASE_URL (and OCR_LLM_MODEL, OCR_LLM_API_KEY)"
BUSY_RETRY_AFTER_SECONDS = 5
PREEMPTED_REASON = "Preempted by higher-priority work"


def admit(*, kind: Kind, priority: str = Priority.NORMAL) -> None:
    """Refuse a submit the service cannot take now (ServiceUnavailable, 503); when only full, a
    high-priority submit preempts the newest pending low-priority task instead."""
    from . import services  # which admits every submit through here

    if kind.uses_llm and not settings.OCR_LLM_BASE_URL:
        raise ServiceUnavailable(LLM_NOT_CONFIGURED)
    if settings.MAX_CONCURRENT_TASKS:
        active = OCRTask.objects.filter(status__in=ACTIVE_STATUSES).count()
        if active < settings.MAX_CONCURRENT_TASKS:
            return
        victim = newest_pending_low() if priority == Priority.HIGH else None
        cancelled = victim and services.task_cancel_if_active(
            task_id=victim, reason=PREEMPTED_REASON, cancelled_by=CancelledBy.SYSTEM
        )
        if cancelled:
            logger.info("task %s: preempted by a high-priority submit", victim)
        else:
            raise ServiceUnavailable(
                f"Server busy: {active} tasks queued or running (MAX_CONCURRENT_TASKS); retry later",
                retry_after=BUSY_RETRY_AFTER_SECONDS,
            )


def priority_rank(priority: str) -> int:
    """0 for high, 1 for normal (and anything unknown), 2 for low."""
    return PRIORITY_RANK.get(priority, PRIORITY_RANK[Priority.NORMAL])


def client_of(owner_id, session_key: str, task_id) -> tuple:
    """A user, an anonymous session, or (no session) the task alone."""
    if owner_id:
        return ("user", owner_id)
    return ("session", session_key) if session_key else ("task", task_id)


def start_order(limit: int | None = None) -> list[uuid.UUID]:
    """Pending task ids in the order they are to start (at most `limit`).

    Read on every pick by a worker (`limit`: PICK_CANDIDATES) and every list of tasks holding
    more than one pending task (one task's place is counted: queue_place): so a task's place in
    the SQL order (created_at, id) stands for its created_at, which Django would convert row by
    row, and clients are tuples, not formatted strings. With a `limit`, only each client's
    `limit` oldest pending tasks of each priority are read: its later ones have that many of its
    own before them, and session-less tasks (each a client with none running) have that many
    older ones of theirs (5000 pending of 5 users: 27 -> 14 ms on SQLite, 10 -> 4 ms on
    PostgreSQL)."""
    running: dict[tuple, int] = defaultdict(int)
    # unordered: for the model's order (newest first), SQLite, once its statistics said most rows
    # were finished, walked the whole table in created_at order
    processing = OCRTask.objects.filter(status=TaskStatus.PROCESSING).order_by()
    for owner_id, session_key, pk in processing.values_list("owner_id", "session_key", "id"):
        running[client_of(owner_id, session_key, pk)] += 1
    queues: dict[tuple[int, tuple], list[tuple[int, uuid.UUID]]] = defaultdict(list)
    pending = OCRTask.objects.filter(status=TaskStatus.PENDING)
    if limit is not None:
        client = [F("priority"), F("owner_id"), Case(When(owner_id__isnull=True, then=F("session_key")))]
        oldest_first = [F("created_at").asc(), F("id").asc()]
        turn = Window(RowNumber(), partition_by=client, order_by=oldest_first)
        pending = pending.annotate(turn=turn).filter(turn__lte=limit)
    pending = pending.order_by("created_at", "id")
    for place, (pk, priority, owner_id, session_key) in enumerate(
        pending.values_list("id", "priority", "owner_id", "session_key")
    ):
        rank = priority_rank(priority)
        queues[(rank, client_of(owner_id, session_key, pk))].append((place, pk))
    # one heap entry per (priority, client): its oldest task, keyed by how busy the client is
    heap = [(rank, running[client], tasks[0][0], client) for (rank, client), tasks in queues.items()]
    heapq.heapify(heap)
    taken = dict.fromkeys(queues, 0)
    order: list[uuid.UUID] = []
    while heap and (limit is None or len(order) < limit):
        rank, busy, _, client = heapq.heappop(heap)
        tasks = queues[(rank, client)]
        index = taken[(rank, client)]
        order.append(tasks[index][1])
        taken[(rank, client)] = index + 1
        if index + 1 < len(tasks):
            heapq.heappush(heap, (rank, busy + 1, tasks[index + 1][0], client))
    return order


class QueuePlace(NamedTuple):
    position: int  # 1 = the next to start
    busy: int  # tasks processing


def queue_place(task: OCRTask) -> QueuePlace | None:
    """The task's place in start_order, and how many tasks are processing; None unless pending.

    Counted, not sorted: the database returns one row per client, never the queue (with 5000
    pending, a GET of a pending task took 28-43 ms when it sorted the queue in Python as
    start_order does, 22-31 ms in SQL with a window function; benchmarks/queue_position.py).

    start_order sorts the pending tasks by (priority rank, turn, created_at, id), a task's turn
    being the number of its client's tasks running (r) or before it in its client's queue. With
    T's turn b, a client of T's priority with n tasks, o of them older than T, has ahead of T its
    tasks of turn < b (min(n, b - r) of them) and the one of turn b if it is older than T (its
    index b - r < o). Session-less anonymous tasks, each its own client with a turn of 0, are
    counted together."""
    if task.status != TaskStatus.PENDING:
        return None
    own_rank, own_client = priority_rank(task.priority), client_of(task.owner_id, task.session_key, task.pk)
    older = Q(created_at__lt=task.created_at) | Q(created_at=task.created_at, id__lt=task.pk)
    groups = (
        OCRTask.objects.filter(status__in=[TaskStatus.PENDING, TaskStatus.PROCESSING])
        .values_list("status", "priority", "owner_id", "session_key")
        .annotate(tasks=Count("id"), older=Count("id", filter=older))
        .order_by()
    )
    ahead = busy = solo_tasks = solo_older = 0
    running: dict[tuple, int] = defaultdict(int)
    clients: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])  # tasks, older; a user's over its sessions
    for status, priority, owner_id, session_key, tasks, older_tasks in groups:
        rank, client = priority_rank(priority), client_of(owner_id, session_key, None)
        if status == TaskStatus.PROCESSING:
            busy += tasks
            running[client] += tasks if owner_id or session_key else 0
        elif rank < own_rank:
            ahead += tasks
        elif rank == own_rank and not owner_id and not session_key:
            solo_tasks, solo_older = solo_tasks + tasks, solo_older + older_tasks
        elif rank == own_rank:
            clients[client][0] += tasks
            clients[client][1] += older_tasks
    turn = running[own_client] + (clients[own_client][1] if own_client in clients else 0)
    for client, (tasks, older_tasks) in clients.items():
        index = turn - running[client]  # of the client's task whose turn is T's
        ahead += min(tasks, max(0, index)) + (1 if 0 <= index < older_tasks else 0)
    ahead += solo_tasks if turn > 0 else solo_older
    return QueuePlace(ahead + 1, busy)


class EstimateBasis(NamedTuple):
    task_seconds: float  # mean duration of the tasks finished in the last hour
    busy: int  # tasks processing


def estimate_basis(*, busy: int | None = None) -> EstimateBasis:
    """What start estimates are made of (read once per response); `busy` counted unless given."""
    recent = OCRTask.objects.filter(
        status=TaskStatus.COMPLETED, completed_at__gte=timezone.now() - ESTIMATE_WINDOW, started_at__isnull=False
    ).aggregate(mean=Avg(F("completed_at") - F("started_at")))["mean"]
    if busy is None:
        busy = OCRTask.objects.filter(status=TaskStatus.PROCESSING).count()
    return EstimateBasis(recent.total_seconds() if recent else DEFAULT_TASK_SECONDS, busy)


def estimated_start_seconds(position: int | None, basis: EstimateBasis | None = None) -> float | None:
    """Rounds of OCR_WORKERS tasks ahead times the mean task duration of the last hour."""
    if position is None:
        return None
    seconds, busy = basis or estimate_basis()
    rounds = math.ceil((position + busy) / max(1, settings.OCR_WORKERS)) - 1
    return round(max(0, rounds) * seconds + (seconds / 2 if busy >= settings.OCR_WORKERS else 0), 1)


def newest_pending_low() -> uuid.UUID | None:
    """The task a high-priority submit preempts when the service is full."""
    return (
        OCRTask.objects.filter(status=TaskStatus.PENDING, priority=Priority.LOW)
        .order_by("-created_at")
        .values_list("id", flat=True)
        .first()
    )
