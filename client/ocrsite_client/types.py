"""The JSON shapes of API.md (sections 3, 4, 5, 8), as TypedDicts: what the methods return."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

Status = Literal["pending", "processing", "completed", "failed", "cancelled"]
EventType = Literal["status", "page_completed", "page_failed", "completed", "failed", "cancelled"]
OutputFormat = Literal["text", "json", "words", "hocr", "alto", "tsv", "pdf"]


class Progress(TypedDict):
    total_pages: int
    processed_pages: int
    failed_pages: int
    percentage: float


class PageResult(TypedDict, total=False):
    page_number: int
    extracted_text: str
    source: str
    processing_time: float
    success: bool
    error_message: str | None
    threshold_used: Any
    contrast_level_used: float


class Task(TypedDict, total=False):
    task_id: str
    task_type: str
    streaming: bool
    status: Status
    created_at: str
    started_at: str | None
    completed_at: str | None
    cancelled_at: str | None
    cancellation_reason: str | None
    error_message: str | None
    progress: Progress
    result: dict[str, Any] | None
    stream_url: str
    ws_url: str
    batch_id: str | None
    priority: str
    resumed_from: str | None


class Event(TypedDict, total=False):
    seq: int
    task_id: str
    type: EventType
    status: Status
    current_page: int | None
    total_pages: int
    processed_pages: int
    failed_pages: int
    progress_percentage: float
    latest_page_result: PageResult | None
    timestamp: str
    cancelled_at: str
    cancellation_reason: str


class CancelResult(TypedDict):
    task_id: str
    status: str
    message: str
    cancelled_at: str
    cancellation_reason: str


class BulkCancelResult(TypedDict, total=False):
    cancelled: list[str]
    already_cancelled: list[str]
    already_finished: list[str]
    not_found: list[str]
    truncated: bool
    reason: str
    message: str


class Batch(TypedDict, total=False):
    batch_id: str
    status: str
    tasks: list[dict[str, Any]]
    counts: dict[str, int]
    progress: dict[str, Any]
