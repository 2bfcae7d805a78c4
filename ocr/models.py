"""OCRTask, OCRSlice, OCRPage, TaskEvent, CancelAudit, OperatorEvent and WebhookDelivery, with the task
state machine."""

import os
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from . import kinds
from .kinds import TaskType
from .params import TaskParams

__all__ = ["TaskType"]  # re-exported: models and migrations name it here


class TaskStatus(models.TextChoices):
    """The task state machine, the only transitions there are:

        pending ──start──▶ processing ──finish──▶ completed | failed
           │                    │
           └──────cancel────────┴──────────────▶ cancelled

    `pending` and `processing` are ACTIVE; the three others are TERMINAL and final: a
    terminal task is never changed again (its result, pages, counters and events stay; the
    partial result of a cancel is stored by its stopped worker, as reads assemble it before).
    Every transition is one conditional UPDATE in `ocr.services`.
    """

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (TaskStatus.PENDING, TaskStatus.PROCESSING)
TERMINAL_STATUSES = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class CancelledBy(models.TextChoices):
    """Who or what cancelled a task (`cancelled_by` on the task, its audit and its event)."""

    USER = "user"
    ADMIN = "admin"
    WEBSOCKET = "websocket"
    DEADLINE = "deadline"
    DISCONNECT = "disconnect"
    SYSTEM = "system"


class Priority(models.TextChoices):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class PageSource(models.TextChoices):
    OCR = "ocr"
    TEXT_LAYER = "text_layer"
    LLM = "llm"


class EventType(models.TextChoices):
    STATUS = "status"
    PAGE_COMPLETED = "page_completed"
    PAGE_FAILED = "page_failed"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_EVENTS = (EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED)


def upload_path(task: "OCRTask", filename: str) -> str:
    return f"uploads/{timezone.now():%Y/%m/%d}/{task.pk}/{filename}"


MAX_STORED_NAME_BYTES = 100


def storage_name(filename: str) -> str:
    """The upload's name for storage: no folders, no spaces, at most MAX_STORED_NAME_BYTES of
    UTF-8 (file systems count bytes: 84 CJK characters are 252), extension kept."""
    name = os.path.basename(filename.replace("\\", "/")).replace(" ", "_").strip(".") or "upload"
    stem, dot, extension = name.rpartition(".")
    if not dot or len(extension.encode()) > 16:
        stem, extension = name, ""
    suffix = f".{extension}" if extension else ""
    room = MAX_STORED_NAME_BYTES - len(suffix.encode())
    stem = stem.encode()[:room].decode(errors="ignore") or "upload"
    return stem + suffix


class Batch(models.Model):
    """Tasks submitted together (POST /v1/ocr/batches); its status is derived from its tasks'."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="ocr_batches"
    )
    session_key = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancellation_reason = models.TextField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"batch {self.pk}"


class OCRTask(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_type = models.CharField(max_length=16, choices=TaskType.choices)
    streaming = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.PENDING, db_index=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="ocr_tasks"
    )
    # Anonymous tasks belong to the browser session that made them (for listing only).
    session_key = models.CharField(max_length=64, blank=True, default="", db_index=True)
    params = models.JSONField(default=dict, help_text="The validated request parameters.")
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.NORMAL)
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks")
    resumed_from = models.UUIDField(null=True, blank=True, help_text="The cancelled or failed task this one resumes")
    input_file = models.FileField(upload_to=upload_path, max_length=300, blank=True)
    input_name = models.CharField(max_length=255, blank=True, default="")
    input_size = models.PositiveBigIntegerField(default=0)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True, db_index=True)

    cancellation_reason = models.TextField(null=True, blank=True)
    cancelled_by = models.CharField(max_length=16, choices=CancelledBy.choices, null=True, blank=True)
    cancelled_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error_message = models.TextField(null=True, blank=True)
    warnings = models.JSONField(default=list, blank=True, help_text="What the service noticed of its input")

    total_pages = models.PositiveIntegerField(default=0)
    processed_pages = models.PositiveIntegerField(default=0)
    failed_pages = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    # Last TaskEvent.seq handed out; bumped in the same UPDATE that guards each event.
    event_seq = models.PositiveIntegerField(default=0)
    worker_host = models.CharField(max_length=255, blank=True, default="")
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    # Each start takes a new attempt; writes of an earlier attempt (a worker thought lost) are refused.
    attempt = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life of its worker")
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="Last time its job was put on the queue")
    work_stopped_at = models.DateTimeField(
        null=True, blank=True, help_text="When its worker had killed its processes after a cancel (for metrics)"
    )

    class Meta:
        ordering = ["-created_at"]
        permissions = [("cancel_any_task", "Can see and cancel any user's OCR task")]
        verbose_name = "OCR task"
        indexes = [  # queue positions (scheduling.queue_place); recent ends (estimates, metrics)
            models.Index(
                fields=["status", "priority", "owner", "session_key", "created_at", "id"], name="ocrtask_queue"
            ),
            models.Index(fields=["status", "completed_at"], name="ocrtask_status_completed"),
            models.Index(fields=["status", "cancelled_at"], name="ocrtask_status_cancelled"),
            models.Index(fields=["owner", "-created_at"], name="ocrtask_owner_newest"),  # a user's list
            models.Index(fields=["session_key", "-created_at"], name="ocrtask_session_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.task_type} {self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def progress_percentage(self) -> float:
        done = self.processed_pages + self.failed_pages
        return round(100.0 * done / self.total_pages, 1) if self.total_pages else 0.0

    @property
    def kind(self) -> kinds.Kind:
        return kinds.get(self.task_type)

    @property
    def parameters(self) -> TaskParams:
        return TaskParams.from_json(self.params)


class SliceStatus(models.TextChoices):
    """A slice of a long PDF task (ocr/slices.py):

    pending ──claim──▶ processing ──▶ done | stopped (its task ended first)
       ▲                    │
       └──worker lost───────┘   (a new attempt; the pages done are kept)
    """

    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    STOPPED = "stopped"


class OCRSlice(models.Model):
    """Pages of one PDF task that one worker reads; the task keeps one status, stream and result."""

    task = models.ForeignKey(OCRTask, on_delete=models.CASCADE, related_name="slices")
    index = models.PositiveIntegerField(help_text="0-based, in page order")
    first_page = models.PositiveIntegerField()
    last_page = models.PositiveIntegerField()
    pages = models.JSONField(default=list, help_text="The 1-based page numbers of this slice, in order")
    status = models.CharField(max_length=16, choices=SliceStatus.choices, default=SliceStatus.PENDING)
    # Each claim takes a new attempt; page writes of an earlier attempt (a worker thought lost) are refused.
    attempt = models.PositiveSmallIntegerField(default=0)
    worker_host = models.CharField(max_length=255, blank=True, default="")
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(default=timezone.now, help_text="Last time a job was queued for it")
    cpu_seconds = models.FloatField(default=0.0, help_text="CPU time of its OCR processes, as last reported")

    class Meta:
        ordering = ["task", "index"]
        constraints = [models.UniqueConstraint(fields=["task", "index"], name="ocrslice_unique_task_index")]
        indexes = [models.Index(fields=["status", "task"], name="ocrslice_status_task")]

    def __str__(self) -> str:
        return f"slice {self.index} (pages {self.first_page}-{self.last_page}) of {self.task_id}"


class IdempotencyRecord(models.Model):
    """The first answer to a submit with an `Idempotency-Key`, replayed to the same caller for 24 h.

    `status_code` is null while the first submit is still being handled (a concurrent retry waits)."""

    caller = models.CharField(max_length=128)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of the endpoint, request and file bytes")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["caller", "key"], name="idempotency_unique_caller_key")]

    def __str__(self) -> str:
        return f"idempotency {self.caller} {self.key}"


class OCRPage(models.Model):
    task = models.ForeignKey(OCRTask, on_delete=models.CASCADE, related_name="pages")
    page_number = models.PositiveIntegerField()
    text = models.TextField(blank=True, default="")
    source = models.CharField(max_length=16, choices=PageSource.choices, default=PageSource.OCR)
    processing_time = models.FloatField(default=0.0)
    success = models.BooleanField(default=True)
    error = models.TextField(null=True, blank=True)
    extra = models.JSONField(default=dict, blank=True, help_text="Kind-specific fields (LLM model, timings)")
    # The formats asked for in request.outputs, from the page's one tesseract run (API.md section 9):
    # "words" (list of {text, confidence, bbox}), "hocr", "alto", "tsv" (text as tesseract wrote it).
    outputs = models.JSONField(default=dict, blank=True, help_text="Requested output formats of this page")
    text_pdf = models.BinaryField(null=True, blank=True, help_text="tesseract's text-only PDF page (invisible text)")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["page_number"]
        constraints = [models.UniqueConstraint(fields=["task", "page_number"], name="ocrpage_unique_task_page")]
        indexes = [models.Index(fields=["created_at"], name="ocrpage_created")]  # metrics over a window

    def __str__(self) -> str:
        return f"page {self.page_number} of {self.task_id}"


class TaskEvent(models.Model):
    """One progress event; `seq` starts at 1 per task and grows by one without gaps."""

    task = models.ForeignKey(OCRTask, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=16, choices=EventType.choices)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["task", "seq"]
        constraints = [models.UniqueConstraint(fields=["task", "seq"], name="taskevent_unique_task_seq")]

    def __str__(self) -> str:
        return f"{self.task_id} #{self.seq} {self.type}"


class CancelAudit(models.Model):
    """Every cancel request, accepted or refused: who, why, from where, how long work had run.

    Kept apart from TaskEvent so that a refused cancel of a finished task never adds a frame
    after a stream's terminal event, and so that audits can outlive their tasks.
    """

    task_id = models.UUIDField(db_index=True)
    task_type = models.CharField(max_length=16, choices=TaskType.choices)
    accepted = models.BooleanField()
    outcome = models.CharField(max_length=32, help_text="cancelled, already_cancelled, already_<status>")
    reason = models.TextField(blank=True, default="")
    cancelled_by = models.CharField(max_length=16, choices=CancelledBy.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    client = models.CharField(max_length=255, blank=True, default="", help_text="IP or channel of the caller")
    status_before = models.CharField(max_length=16, choices=TaskStatus.choices)
    ran_seconds = models.FloatField(null=True, blank=True, help_text="Time the work had run when cancelled")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"cancel {self.task_id} {self.outcome}"


class OperatorEventType(models.TextChoices):
    """What the operator feed carries: every terminal event, and every refused cancel request
    (an accepted one is the `cancelled` item)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCEL_REFUSED = "cancel_refused"


class OperatorEvent(models.Model):
    """One item of the staff feed (ocr/feed.py), written in the transaction of what it reports;
    its primary key is the feed's cursor (`id:` of the SSE frames, `?after=`)."""

    type = models.CharField(max_length=16, choices=OperatorEventType.choices)
    task_id = models.UUIDField()
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"feed #{self.pk} {self.type} {self.task_id}"


class DeliveryOutcome(models.TextChoices):
    """One webhook attempt's outcome: `retrying` has a `next_retry_at`; the others end its event."""

    DELIVERED = "delivered"
    RETRYING = "retrying"
    GIVEN_UP = "given_up"


class WebhookDelivery(models.Model):
    """One attempt to POST one of a task's events to its callback_url (ocr/webhooks.py)."""

    task = models.ForeignKey(OCRTask, on_delete=models.CASCADE, related_name="webhook_deliveries")
    seq = models.PositiveIntegerField(help_text="The event's seq")
    type = models.CharField(max_length=16, choices=EventType.choices)
    attempt = models.PositiveSmallIntegerField()
    webhook_id = models.CharField(max_length=80, help_text="webhook-id header, the same for every attempt")
    url = models.CharField(max_length=2000)
    outcome = models.CharField(max_length=16, choices=DeliveryOutcome.choices)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    duration_ms = models.FloatField(null=True, blank=True)
    attempted_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    # Set when the sweeper queued the retry, so that one due retry is queued once.
    retry_queued = models.BooleanField(default=False)

    class Meta:
        ordering = ["task", "seq", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["task", "seq", "attempt"], name="webhookdelivery_unique_attempt")
        ]
        indexes = [models.Index(fields=["outcome", "retry_queued", "next_retry_at"], name="webhook_due_retry")]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.task_id} #{self.seq} attempt {self.attempt} {self.outcome}"


class MetricsRollup(models.Model):
    """The metrics of the tasks that ended before `tasks_ended_before` and of the pages up to id
    `pages_through`, added up once (ocr/rollup.py): a scrape reads only what came after. One row."""

    tasks_ended_before = models.DateTimeField(null=True, blank=True)
    pages_through = models.BigIntegerField(default=0)
    figures = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)
