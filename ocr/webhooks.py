"""Webhooks (API.md section 10): a task's wanted events POSTed to its `callback_url`.

`on_event` (called by `services._store_event` for every stored event) queues a delivery job for
the task once the event is committed: its id on a Redis list, taken by the `Deliverer` of any
sweeper (`manage.py ocr_sweeper`: every worker node runs one), which runs it in a small thread
pool of its own (OCR_WEBHOOK_CONCURRENCY). Deliveries never run on an OCR worker, so a slow or
dead receiver holds back no OCR; the page pipeline never waits for a delivery either.
The job (`deliver_task`) delivers the task's events in seq order, one attempt each (a
WebhookDelivery row): a 2xx delivers it, anything else is retried after
OCR_WEBHOOK_BACKOFF_SECONDS * 2**(attempt-1) up to OCR_WEBHOOK_MAX_ATTEMPTS, and a later event
waits until the earlier one is delivered or given up. Due retries are queued by the sweeper
(`retry_due`). One job per task runs at a time (a Redis lock); a job that finds the lock taken
leaves a mark that makes the holder look again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Min
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder

from . import queue, webhook_http, webhook_policy
from .models import TERMINAL_EVENTS, DeliveryOutcome, EventType, OCRTask, TaskEvent, WebhookDelivery
from .params import TaskParams

logger = logging.getLogger(__name__)

EVENT_GROUPS = {
    "terminal": tuple(TERMINAL_EVENTS),
    "page": (EventType.PAGE_COMPLETED, EventType.PAGE_FAILED),
}
RETRY_BATCH = 200


def wanted_types(params: TaskParams) -> set[str]:
    """The event types the task's callback wants (none without a callback_url)."""
    if not params.callback_url:
        return set()
    return {str(t) for group in params.callback_events for t in EVENT_GROUPS.get(group, ())}


def on_event(task: OCRTask, payload: dict) -> None:
    """A stored event: queue its delivery once the transaction commits, if the callback wants it."""
    if payload["type"] in wanted_types(task.parameters):
        task_id = task.pk
        transaction.on_commit(lambda: enqueue(task_id))


def _jobs_key() -> str:
    return f"{settings.OCR_QUEUE_NAME}:webhook-jobs"


def enqueue(task_id: uuid.UUID | str) -> None:
    """Queue a delivery job for the task (for the sweepers' deliverers, not the OCR workers)."""
    try:
        queue.redis_client(settings.REDIS_URL).rpush(_jobs_key(), str(task_id))
    except Exception:  # Redis is down: the next event or due retry queues the job again
        logger.exception("task %s: webhook delivery could not be queued", task_id)


class Deliverer(threading.Thread):
    """Takes delivery jobs off the Redis list into a pool of `threads` threads, one job per free
    thread (a job is only taken when a thread can run it at once, so the others stay queued for
    any other sweeper). `stop()` lets the jobs in flight finish, up to `grace` seconds."""

    def __init__(self, threads: int) -> None:
        super().__init__(name="webhook-deliverer", daemon=True)
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="webhook")
        self.free = threading.BoundedSemaphore(threads)
        self.stopping = threading.Event()

    def run(self) -> None:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=None)
        while not self.stopping.is_set():
            if not self.free.acquire(timeout=1):
                continue
            try:
                popped = client.blpop([_jobs_key()], timeout=1)
            except redis.RedisError as exc:
                self.free.release()
                logger.warning("webhook deliverer: Redis unavailable (%s); trying again", exc)
                self.stopping.wait(1)
                continue
            if popped is None:
                self.free.release()
                continue
            self.pool.submit(self._deliver, popped[1].decode())

    def _deliver(self, task_id: str) -> None:
        try:
            deliver_task(task_id)
        except Exception:
            logger.exception("task %s: webhook delivery job failed", task_id)
        finally:
            connection.close()
            self.free.release()

    def stop(self, grace: float = 5.0) -> bool:
        """Take no more jobs; wait up to `grace` s for those in flight. False if some were left
        (their attempt is not recorded: the event goes with the task's next delivery job)."""
        self.stopping.set()
        deadline = time.monotonic() + grace
        self.join(grace)
        for _ in range(self.threads):
            if not self.free.acquire(timeout=max(0.0, deadline - time.monotonic())):
                logger.warning("webhook deliverer: deliveries still in flight at exit")
                return False
        return True


def backoff_seconds(attempt: int) -> float:
    """Wait after failed attempt number `attempt` (1-based)."""
    return min(settings.OCR_WEBHOOK_BACKOFF_SECONDS * 2 ** (attempt - 1), settings.OCR_WEBHOOK_BACKOFF_MAX_SECONDS)


def webhook_id(task_id: uuid.UUID, seq: int) -> str:
    """The same for every attempt of one event, so that receivers can drop duplicates."""
    return f"msg_{uuid.UUID(str(task_id)).hex}_{seq}"


# --- The job ----------------------------------------------------------------------------------


def _keys(task_id: str) -> tuple[str, str]:
    prefix = f"{settings.OCR_QUEUE_NAME}:webhook"
    return f"{prefix}-lock:{task_id}", f"{prefix}-dirty:{task_id}"


def deliver_task(task_id: str) -> None:
    """A delivery job: the task's due events in seq order (one job per task at a time)."""
    client = queue.redis_client(settings.REDIS_URL)
    lock_key, dirty_key = _keys(task_id)
    client.set(dirty_key, 1, ex=3600)
    while client.exists(dirty_key):
        lock = client.lock(lock_key, timeout=settings.OCR_WEBHOOK_TIMEOUT_SECONDS * 3 + 30)
        if not lock.acquire(blocking=False):
            logger.debug("task %s: webhook job already running; it will look again", task_id)
            return
        try:
            client.delete(dirty_key)
            deliver_due(task_id, on_attempt=lock.reacquire)
        finally:
            try:
                lock.release()
            except Exception:
                logger.warning("task %s: webhook lock expired before release", task_id)


def deliver_due(task_id: str, on_attempt=None, now: datetime | None = None) -> int:
    """Attempt each wanted event not yet delivered or given up, lowest seq first, stopping at one
    that waits for its retry. Returns the number of attempts made."""
    task = OCRTask.objects.filter(pk=task_id).only("id", "params").first()
    types = wanted_types(task.parameters) if task else set()
    if not types:
        return 0
    finished = set(
        WebhookDelivery.objects.filter(
            task_id=task.pk, outcome__in=(DeliveryOutcome.DELIVERED, DeliveryOutcome.GIVEN_UP)
        ).values_list("seq", flat=True)
    )
    attempts = 0
    events = TaskEvent.objects.filter(task_id=task.pk, type__in=types).exclude(seq__in=finished).order_by("seq")
    for event in events:
        last = WebhookDelivery.objects.filter(task_id=task.pk, seq=event.seq).order_by("-attempt").first()
        if last is not None and last.next_retry_at and last.next_retry_at > (now or timezone.now()):
            return attempts  # later events wait behind this one; the sweeper queues the retry
        delivery = attempt(task_id=task.pk, event=event, number=last.attempt + 1 if last else 1)
        attempts += 1
        if on_attempt is not None:
            on_attempt()
        if delivery.outcome == DeliveryOutcome.RETRYING:
            return attempts
    return attempts


def _body(event: TaskEvent) -> str:
    body = dict(event.payload)
    if event.type in TERMINAL_EVENTS:
        from .api.serializers import TaskSerializer

        body["task"] = TaskSerializer(OCRTask.objects.get(pk=event.task_id)).data
    return json.dumps(body, cls=JSONEncoder, ensure_ascii=False, separators=(",", ":"))


def attempt(*, task_id: uuid.UUID, event: TaskEvent, number: int) -> WebhookDelivery:
    """One signed POST of one event, recorded; the address is checked again right before it."""
    task = OCRTask.objects.only("id", "params").get(pk=task_id)
    url = task.parameters.callback_url or ""
    message_id = webhook_id(task_id, event.seq)
    started = time.monotonic()
    status_code, refused = None, False
    try:
        if not settings.OCR_WEBHOOK_SECRET:
            raise webhook_policy.CallbackRefused("OCR_WEBHOOK_SECRET is not set")
        target = webhook_policy.parse_url(url)
        addresses = webhook_policy.checked_addresses(
            target, webhook_policy.AllowList.parse(settings.OCR_WEBHOOK_ALLOWED_HOSTS)
        )
    except webhook_policy.CallbackRefused as exc:
        error, refused = f"refused: {exc}", True
    else:
        body = _body(event)
        headers = webhook_http.signed_headers(settings.OCR_WEBHOOK_SECRET, message_id, body)
        result = webhook_http.post(target, addresses, body.encode(), headers, settings.OCR_WEBHOOK_TIMEOUT_SECONDS)
        status_code, error = result.status_code, result.error
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    now = timezone.now()
    fields = {}
    if status_code is not None and 200 <= status_code < 300:
        outcome, fields["delivered_at"] = DeliveryOutcome.DELIVERED, now
    elif refused or number >= settings.OCR_WEBHOOK_MAX_ATTEMPTS:
        outcome = DeliveryOutcome.GIVEN_UP
    else:
        outcome = DeliveryOutcome.RETRYING
        fields["next_retry_at"] = now + timedelta(seconds=backoff_seconds(number))
    delivery = WebhookDelivery.objects.create(
        task_id=task_id,
        seq=event.seq,
        type=event.type,
        attempt=number,
        webhook_id=message_id,
        url=url,
        outcome=outcome,
        status_code=status_code,
        error=error[:2000],
        duration_ms=duration_ms,
        attempted_at=now,
        **fields,
    )
    log = logger.info if outcome == DeliveryOutcome.DELIVERED else logger.warning
    log(
        "task %s: webhook event %s (%s) attempt %d %s in %.0f ms%s",
        task_id,
        event.seq,
        event.type,
        number,
        outcome,
        duration_ms,
        f": {error}" if error else "",
    )
    return delivery


# --- Retries (the sweeper) -------------------------------------------------------------------


def _due_retries():
    return WebhookDelivery.objects.filter(outcome=DeliveryOutcome.RETRYING, retry_queued=False)


def retry_due(now: datetime | None = None) -> int:
    """Queue the job of every task whose retry is due (each retry once); returns how many."""
    due = _due_retries().filter(next_retry_at__lte=now or timezone.now()).values_list("pk", "task_id")
    queued = 0
    for pk, task_id in list(due[:RETRY_BATCH]):
        if WebhookDelivery.objects.filter(pk=pk, retry_queued=False).update(retry_queued=True):
            enqueue(task_id)
            queued += 1
    return queued


def next_retry() -> datetime | None:
    return _due_retries().aggregate(due=Min("next_retry_at"))["due"]
