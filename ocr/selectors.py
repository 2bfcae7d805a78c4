"""Reads that are more than a `.get()`: who may see which task, lists, events."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db.models import Q, QuerySet

from .compiled import Compiled
from .exceptions import BatchNotFound, TaskNotFound
from .models import Batch, OCRTask, TaskEvent, WebhookDelivery


def can_see_any(user) -> bool:
    return bool(user and user.is_authenticated and user.is_staff and user.has_perm("ocr.cancel_any_task"))


def _viewer(user) -> tuple[str, int | None]:
    """Who looks: "any" (staff who may cancel any task), "user" (and its id) or "anonymous"."""
    if can_see_any(user):
        return "any", None
    if user is not None and user.is_authenticated:
        return "user", user.pk
    return "anonymous", None


def _visible_to(viewer: str, owner_id: int | None = None) -> QuerySet[OCRTask]:
    if viewer == "any":
        return OCRTask.objects.all()
    if viewer == "user":
        return OCRTask.objects.filter(Q(owner_id=owner_id) | Q(owner__isnull=True))
    return OCRTask.objects.filter(owner__isnull=True)


def tasks_visible_to(user) -> QuerySet[OCRTask]:
    """Anonymous tasks are reachable by UUID by anyone; a user's tasks by that user (and staff)."""
    return _visible_to(*_viewer(user))


def parse_task_id(raw: object) -> uuid.UUID:
    """A task id from a URL or a message, as a UUID; TaskNotFound when it is not one."""
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise TaskNotFound(raw) from None


@dataclass(frozen=True)
class TaskLookup:
    """A task as one caller may see it on one path: the query's shape and its values."""

    shape: tuple[str, bool]  # (viewer: "any", "user" or "anonymous"; streaming tasks only)
    values: dict  # pk, and owner_id and task_type where they are compared


def visible_query(shape: tuple[str, bool], *, pk, owner_id=None, task_type=None) -> QuerySet[OCRTask]:
    """The query of a TaskLookup (and of its compiled forms: task_get_for, services' cancel)."""
    viewer, streaming_only = shape
    tasks = _visible_to(viewer, owner_id).filter(pk=pk)
    if task_type is not None:
        tasks = tasks.filter(task_type=task_type)
    if streaming_only:
        tasks = tasks.filter(streaming=True)
    return tasks


LOOKUP_FIELDS = {"pk": "id", "owner_id": "owner", "task_type": "task_type"}  # the fields its values are of
# every task GET's lookup, compiled once per shape (compiled.py: most of the lookup's cost)
_VISIBLE_TASK = Compiled(OCRTask, visible_query, **LOOKUP_FIELDS)


def task_lookup(*, user, task_id, task_type: str | None = None, streaming_only: bool = False) -> TaskLookup:
    """The task `task_id` as `user` may see it on this path (kind, streaming). TaskNotFound when
    `task_id` is not a UUID."""
    viewer, owner_id = _viewer(user)
    values = {"pk": parse_task_id(task_id)}
    if owner_id is not None:
        values["owner_id"] = owner_id
    if task_type:
        values["task_type"] = task_type
    return TaskLookup((viewer, streaming_only), values)


def any_task_lookup(task_id: uuid.UUID) -> TaskLookup:
    """The task `task_id` whoever owns it (for the service's and operators' own writes)."""
    return TaskLookup(("any", False), {"pk": task_id})


def visible_rows(*, user, task_id, task_type: str | None = None, streaming_only: bool = False) -> QuerySet[OCRTask]:
    """The task as a query, if `user` may see it on this path (kind, streaming); else empty.
    TaskNotFound when `task_id` is not a UUID."""
    lookup = task_lookup(user=user, task_id=task_id, task_type=task_type, streaming_only=streaming_only)
    return visible_query(lookup.shape, **lookup.values)


def task_found(lookup: TaskLookup) -> OCRTask | None:
    return _VISIBLE_TASK.first(shape=lookup.shape, **lookup.values)


def task_get_for(*, user, task_id: uuid.UUID, task_type: str | None = None, streaming_only: bool = False) -> OCRTask:
    """The task if `user` may see it on this path (kind, streaming); TaskNotFound otherwise."""
    lookup = task_lookup(user=user, task_id=task_id, task_type=task_type, streaming_only=streaming_only)
    task = task_found(lookup)
    if task is None:
        raise TaskNotFound(lookup.values["pk"])
    return task


def task_list_for(
    *, user, session_key: str | None, status: str | None = None, task_type: str | None = None
) -> QuerySet[OCRTask]:
    """The caller's own tasks, newest first: a user's, or an anonymous session's."""
    if user is not None and user.is_authenticated:
        tasks = OCRTask.objects.filter(owner=user)
    elif session_key:
        tasks = OCRTask.objects.filter(owner__isnull=True, session_key=session_key)
    else:
        tasks = OCRTask.objects.none()
    if status:
        tasks = tasks.filter(status=status)
    if task_type:
        tasks = tasks.filter(task_type=task_type)
    return tasks.order_by("-created_at")


def events_after(*, task_id: uuid.UUID, seq: int = 0) -> list[dict]:
    return list(
        TaskEvent.objects.filter(task_id=task_id, seq__gt=seq).order_by("seq").values_list("payload", flat=True)
    )


def tasks_owned_by(*, user, session_key: str | None) -> QuerySet[OCRTask]:
    """The caller's own tasks (a user's, or an anonymous session's); every task for staff who may
    cancel any: what a selective (filter) cancel may touch."""
    if can_see_any(user):
        return OCRTask.objects.all()
    return task_list_for(user=user, session_key=session_key)


def batch_get_for(*, user, batch_id) -> Batch:
    """The batch if `user` may see it (the same rules as for tasks); BatchNotFound otherwise."""
    try:
        pk = uuid.UUID(str(batch_id))
    except ValueError:
        raise BatchNotFound(batch_id) from None
    batches = Batch.objects.filter(pk=pk)
    if not can_see_any(user):
        owner = Q(owner__isnull=True)
        if user is not None and user.is_authenticated:
            owner |= Q(owner=user)
        batches = batches.filter(owner)
    batch = batches.first()
    if batch is None:
        raise BatchNotFound(pk)
    return batch


def deliveries_of(task: OCRTask) -> QuerySet[WebhookDelivery]:
    """Every webhook attempt for the task, by event seq then attempt."""
    return WebhookDelivery.objects.filter(task_id=task.pk).order_by("seq", "attempt")
