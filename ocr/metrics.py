"""Service figures computed from the database (and Redis counters) at read time, so that they
are right whatever the number of web and worker processes: JSON for /v1/ocr/metrics and the
dashboard, Prometheus text for /metrics."""

from __future__ import annotations

import logging
import re
from collections import Counter
from datetime import timedelta

import redis
from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .kinds import KINDS
from .models import OCRPage, OCRTask, PageSource, TaskStatus
from .queue import queue_depth, redis_client

logger = logging.getLogger(__name__)

TIME_TO_CANCEL_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 3600)
CANCEL_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
PAGE_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16)
CANCEL_REQUESTS_KEY = "metrics:cancel_requests"


def _redis() -> redis.Redis:
    return redis_client(settings.REDIS_URL)


def _key(name: str) -> str:
    return f"{settings.OCR_QUEUE_NAME}:{name}"


def count_cancel_request(status_code: int) -> None:
    """Count one answer of a cancel endpoint (all processes share the Redis hash)."""
    try:
        _redis().hincrby(_key(CANCEL_REQUESTS_KEY), str(status_code), 1)
    except redis.RedisError:
        logger.warning("cancel request metric not counted (%s)", status_code)


def normalise_reason(reason: str) -> str:
    """Group reasons that differ only by numbers, ids, case or spacing."""
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", (reason or "").lower())
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return " ".join(text.split())[:80] or "(none)"


def _histogram(values: list[float], buckets: tuple) -> dict:
    cumulative = [sum(1 for v in values if v <= bound) for bound in buckets]
    return {
        "buckets": {str(bound): count for bound, count in zip(buckets, cumulative, strict=True)},
        "count": len(values),
        "sum": round(sum(values), 4),
    }


def _seconds(rows, start: str, end: str) -> list[float]:
    delta = ExpressionWrapper(F(end) - F(start), output_field=DurationField())
    return [d.total_seconds() for d in rows.annotate(d=delta).values_list("d", flat=True) if d is not None]


def snapshot(window_minutes: int | None = None) -> dict:
    """All figures; with `window_minutes`, task figures cover the tasks created in that window."""
    now = timezone.now()
    tasks = OCRTask.objects.all()
    pages = OCRPage.objects.all()
    if window_minutes:
        since = now - timedelta(minutes=window_minutes)
        tasks = tasks.filter(created_at__gte=since)
        pages = pages.filter(created_at__gte=since)

    by_kind: dict[str, dict[str, int]] = {kind: dict.fromkeys(TaskStatus.values, 0) for kind in KINDS}
    for row in tasks.values("task_type", "status").annotate(n=Count("id")):
        by_kind[row["task_type"]][row["status"]] = row["n"]
    totals = {kind: sum(counts.values()) for kind, counts in by_kind.items()}
    cancellation_rate = {
        kind: round(by_kind[kind][TaskStatus.CANCELLED] / totals[kind], 4) if totals[kind] else 0.0 for kind in KINDS
    }
    cancelled = tasks.filter(status=TaskStatus.CANCELLED)
    reasons = Counter(normalise_reason(r) for r in cancelled.values_list("cancellation_reason", flat=True))
    started_cancels = cancelled.filter(started_at__isnull=False)
    stopped_cancels = cancelled.filter(work_stopped_at__isnull=False)

    ocr_pages = pages.filter(source=PageSource.OCR, success=True)
    last_minute = OCRPage.objects.filter(created_at__gte=now - timedelta(seconds=60)).count()
    try:
        codes = {int(k): int(v) for k, v in _redis().hgetall(_key(CANCEL_REQUESTS_KEY)).items()}
    except redis.RedisError:
        codes = {}
    requests_total = sum(codes.values())
    return {
        "window_minutes": window_minutes,
        "generated_at": now.isoformat(),
        "tasks": {"by_kind": by_kind, "submitted": totals},
        "cancellation_rate": cancellation_rate,
        "cancellation_reasons": [{"reason": r, "count": n} for r, n in reasons.most_common(10)],
        "cancelled_by": dict(Counter(cancelled.values_list("cancelled_by", flat=True))),
        "time_to_cancel_seconds": _histogram(
            _seconds(started_cancels, "started_at", "cancelled_at"), TIME_TO_CANCEL_BUCKETS
        ),
        "cancel_latency_seconds": _histogram(
            _seconds(stopped_cancels, "cancelled_at", "work_stopped_at"), CANCEL_LATENCY_BUCKETS
        ),
        "cancel_requests": {
            "by_status": codes,
            "error_rate": {
                str(code): round(codes.get(code, 0) / requests_total, 4) if requests_total else 0.0
                for code in (400, 404, 429)
            },
        },
        "queue_depth": queue_depth(),
        "running_tasks": OCRTask.objects.filter(status=TaskStatus.PROCESSING).count(),
        "pending_tasks": OCRTask.objects.filter(status=TaskStatus.PENDING).count(),
        "pages_per_second": round(last_minute / 60.0, 3),
        "ocr_page_seconds": _histogram(list(ocr_pages.values_list("processing_time", flat=True)), PAGE_SECONDS_BUCKETS),
    }


def recent_cancellation_rate(minutes: int) -> tuple[float, int]:
    """(cancelled / finished, finished) over the tasks that ended in the last `minutes`."""
    since = timezone.now() - timedelta(minutes=minutes)
    ended = OCRTask.objects.filter(Q(completed_at__gte=since) | Q(cancelled_at__gte=since))
    counts = ended.aggregate(total=Count("id"), cancelled=Count("id", filter=Q(status=TaskStatus.CANCELLED)))
    return (counts["cancelled"] / counts["total"] if counts["total"] else 0.0), counts["total"]


class _SnapshotCollector:
    def __init__(self, data: dict) -> None:
        self.data = data

    def collect(self):
        data = self.data
        tasks = CounterMetricFamily("ocr_tasks", "Tasks by kind and current status", labels=["task_type", "status"])
        for kind, counts in data["tasks"]["by_kind"].items():
            for status, n in counts.items():
                tasks.add_metric([kind, status], n)
        yield tasks
        submitted = CounterMetricFamily("ocr_tasks_submitted", "Tasks submitted by kind", labels=["task_type"])
        for kind, n in data["tasks"]["submitted"].items():
            submitted.add_metric([kind], n)
        yield submitted
        rate = GaugeMetricFamily("ocr_cancellation_rate", "Cancelled / submitted by kind", labels=["task_type"])
        for kind, value in data["cancellation_rate"].items():
            rate.add_metric([kind], value)
        yield rate
        reasons = GaugeMetricFamily("ocr_cancellation_reasons", "Top normalised reasons", labels=["reason"])
        for row in data["cancellation_reasons"]:
            reasons.add_metric([row["reason"]], row["count"])
        yield reasons
        for name, doc in (
            ("time_to_cancel_seconds", "Time from start to cancel"),
            ("cancel_latency_seconds", "Cancel accepted to work stopped"),
            ("ocr_page_seconds", "OCR time per page"),
        ):
            hist = data[name]
            buckets = [(bound, count) for bound, count in hist["buckets"].items()] + [("+Inf", hist["count"])]
            family = HistogramMetricFamily(name if name.startswith("ocr_") else f"ocr_{name}", doc)
            family.add_metric([], buckets, hist["sum"])
            yield family
        requests = CounterMetricFamily("ocr_cancel_requests", "Cancel answers by status code", labels=["code"])
        for code, n in data["cancel_requests"]["by_status"].items():
            requests.add_metric([str(code)], n)
        yield requests
        for name, doc, value in (
            ("ocr_queue_depth", "Jobs waiting on the broker", data["queue_depth"]),
            ("ocr_running_tasks", "Tasks processing", data["running_tasks"]),
            ("ocr_pending_tasks", "Tasks pending", data["pending_tasks"]),
            ("ocr_pages_per_second", "Pages finished per second over the last minute", data["pages_per_second"]),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)


def prometheus_text() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot()))
    return generate_latest(registry)
