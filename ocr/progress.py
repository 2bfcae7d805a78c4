"""Event payloads (one typed builder), page results, and the one sender to the Channels layer.

Events are stored first (TaskEvent, by `ocr.services`); the layer only wakes live listeners,
who can always catch up from the database (ocr/streams.py).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, NotRequired, TypedDict

from channels.layers import get_channel_layer
from django.utils import timezone

from . import layer_sender
from .models import OCRPage, OCRTask, TaskStatus
from .params import TaskParams

logger = logging.getLogger(__name__)


class PageResult(TypedDict, total=False):
    """One page in the shape of API.md section 3 (`result.results[]`), plus kind-specific extras."""

    page_number: int
    extracted_text: str
    source: str
    processing_time: float
    success: bool
    error_message: str | None
    threshold_used: int | str  # "auto" or the global cut
    contrast_level_used: float
    # OCR pages (API.md section 9)
    mean_confidence: float | None
    lang_used: str
    rotation: int
    script: str
    skew_corrected: float
    binarisation: str  # threshold "auto": "global" (even paper) or "adaptive" (Sauvola)


class TaskEventPayload(TypedDict):
    """One event of API.md section 5, as stored, streamed and pushed."""

    seq: int
    task_id: str
    type: str
    status: str
    current_page: int | None
    total_pages: int
    processed_pages: int
    failed_pages: int
    progress_percentage: float
    latest_page_result: PageResult | None
    timestamp: str
    cancelled_at: NotRequired[str | None]
    cancellation_reason: NotRequired[str | None]
    cancelled_by: NotRequired[str | None]
    error_message: NotRequired[str | None]


def group_name(task_id: uuid.UUID | str) -> str:
    return f"ocr-task-{task_id}"


def page_result(page: OCRPage, params: TaskParams) -> PageResult:
    result: PageResult = {
        "page_number": page.page_number,
        "extracted_text": page.text,
        "source": page.source,
        "processing_time": round(page.processing_time, 4),
        "success": page.success,
        "error_message": page.error,
        "threshold_used": params.threshold,
        "contrast_level_used": params.contrast_level,
    }
    result.update(page.extra)  # type: ignore[typeddict-item]
    return result


def recorded_pages(task: OCRTask) -> list[OCRPage]:
    """The task's pages as its result reads them (their documents are for downloads only). None
    is read when its counters say none is recorded (each page is counted as it is stored)."""
    if not task.processed_pages + task.failed_pages:
        return []
    return list(OCRPage.objects.filter(task_id=task.pk).defer("outputs", "text_pdf"))


def result_of(task: OCRTask) -> dict[str, Any] | None:
    """The task's `result` as stored; for a cancelled task whose result is not stored yet,
    assembled from its pages. A cancel leaves the partial result of a running task with pages
    to its worker, which stores it once its work has stopped (services.task_work_stopped): the
    pages are final from the cancel on, so both give the same result."""
    if task.result is not None or task.status != TaskStatus.CANCELLED:
        return task.result
    return assemble_result(task, recorded_pages(task))


def assemble_result(task: OCRTask, pages: list[OCRPage]) -> dict[str, Any] | None:
    """The task's `result` from its recorded pages (partial when the task was cancelled)."""
    params = task.parameters
    if not task.kind.is_pdf:
        if not pages:
            return None
        page = pages[0]
        result = {
            "success": page.success,
            "extracted_text": page.text,
            "processing_time": round(page.processing_time, 4),
            "threshold_used": params.threshold,
            "contrast_level_used": params.contrast_level,
            **page.extra,
        }
        if not page.success:
            result["error_message"] = page.error
        return result
    results = [page_result(page, params) for page in sorted(pages, key=lambda p: p.page_number)]
    return {
        "success": bool(results) and all(r["success"] for r in results) and len(results) == task.total_pages,
        "total_pages": task.total_pages,
        "processed_pages": sum(1 for r in results if r["success"]),
        "dpi_used": params.dpi,
        "total_processing_time": round(sum(p.processing_time for p in pages), 4),
        "results": results,
    }


def build_event(
    task: OCRTask,
    *,
    seq: int,
    type: str,
    current_page: int | None = None,
    latest_page_result: PageResult | None = None,
) -> TaskEventPayload:
    """The event payload, from the task row as it stands after the change."""
    event: TaskEventPayload = {
        "seq": seq,
        "task_id": str(task.pk),
        "type": type,
        "status": task.status,
        "current_page": current_page,
        "total_pages": task.total_pages,
        "processed_pages": task.processed_pages,
        "failed_pages": task.failed_pages,
        "progress_percentage": task.progress_percentage,
        "latest_page_result": latest_page_result,
        "timestamp": timezone.now().isoformat(),
    }
    if type == "cancelled":
        event["cancelled_at"] = task.cancelled_at.isoformat() if task.cancelled_at else None
        event["cancellation_reason"] = task.cancellation_reason
        event["cancelled_by"] = task.cancelled_by
    if type == "failed":
        event["error_message"] = task.error_message
    return event


FEED_GROUP = "ocr-operator-feed"  # the staff feed (ocr/feed.py): every node's readers join it


def publish(event: TaskEventPayload, *, feed_id: int | None = None) -> None:
    """Push a stored event to the task's group (and, for a terminal event, its operator feed
    item's id to the feed group, in the same call); a lost push is recovered from the database."""
    messages = [(group_name(event["task_id"]), {"type": "task.event", "event": event})]
    if feed_id is not None:
        messages.append((FEED_GROUP, {"type": "feed.item", "id": feed_id}))
    _send(messages, f"task {event['task_id']}: event {event['seq']}")


def publish_feed(feed_id: int, task_id: uuid.UUID | str) -> None:
    """Push an operator feed item's id (ocr/feed.py) to the feed group."""
    _send([(FEED_GROUP, {"type": "feed.item", "id": feed_id})], f"task {task_id}: operator feed item {feed_id}")


def _send(messages: list[tuple[str, dict]], what: str) -> None:
    """The one sender to the Channels layer; one call, so one connection, for all `messages`.
    In a request it does not wait (layer_sender.post): the response goes out meanwhile."""
    layer = get_channel_layer()
    if layer is None:
        return

    async def send_all() -> None:
        for attempt in (1, 2):  # a pooled connection that a Redis restart broke fails once
            try:
                for group, message in messages:
                    await layer.group_send(group, message)
                return
            except Exception:
                if attempt == 2:
                    raise

    layer_sender.post(send_all, what)
