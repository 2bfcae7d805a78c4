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
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import layer_sender, rollup
from .kinds import KINDS
from .models import TERMINAL_STATUSES, OCRPage, OCRTask, PageSource, TaskStatus
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
    """Count one answer of a cancel endpoint (all processes share the Redis hash); in a request,
    the answer does not wait for the count (layer_sender.post_redis)."""
    key, field = _key(CANCEL_REQUESTS_KEY), str(status_code)
    if layer_sender.post_redis("HINCRBY", key, field, 1, what=f"cancel request metric ({status_code})"):
        return
    try:
        _redis().hincrby(key, field, 1)
    except redis.RedisError:
        logger.warning("cancel request metric not counted (%s)", status_code)


def normalise_reason(reason: str) -> str:
    """Group reasons that differ only by numbers, ids, case or spacing."""
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", (reason or "").lower())
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return " ".join(text.split())[:80] or "(none)"


REASONS_SAMPLE = 1000  # the reasons breakdown reads the newest cancellations only


def _histogram(rows, value, buckets: tuple) -> dict:
    """Cumulative buckets, count and sum of `value` over `rows`, in one SQL aggregate (no rows
    are loaded: the cost of a scrape must not grow with the pages stored)."""
    annotated = rows.annotate(v=value)
    aggregates = {f"b{i}": Count("pk", filter=Q(v__lte=bound)) for i, bound in enumerate(buckets)}
    result = annotated.filter(v__isnull=False).aggregate(n=Count("pk"), total=Sum("v"), **aggregates)
    total = result["total"] or 0
    if isinstance(total, timedelta):
        total = total.total_seconds()
    return {
        "buckets": {str(bound): result[f"b{i}"] for i, bound in enumerate(buckets)},
        "count": result["n"],
        "sum": round(float(total), 4),
    }


def _seconds_between(start: str, end: str):
    return ExpressionWrapper(F(end) - F(start), output_field=DurationField())


def _bounds_as_durations(buckets: tuple) -> tuple:
    return tuple(timedelta(seconds=bound) for bound in buckets)


def _duration_histogram(rows, start: str, end: str, buckets: tuple) -> dict:
    hist = _histogram(rows, _seconds_between(start, end), _bounds_as_durations(buckets))
    hist["buckets"] = dict(zip((str(b) for b in buckets), hist["buckets"].values(), strict=True))
    return hist


def task_figures(tasks, cancelled=None) -> dict:
    """The figures of a set of tasks that add up (rollup.added): counts per kind and status, per
    worker node, per cancel channel, and the cancel histograms (of `cancelled`, the cancelled
    tasks among them, when a query of its own reads them better)."""
    by_kind: dict[str, dict[str, int]] = {kind: dict.fromkeys(TaskStatus.values, 0) for kind in KINDS}
    nodes = _Nodes()
    # one GROUP BY for both: per kind, and per worker node (no scan of its own)
    rows = tasks.values("task_type", "status", "worker_host").annotate(
        n=Count("id"), pages=Sum("processed_pages"), failed=Sum("failed_pages")
    )
    for row in rows:
        by_kind.setdefault(row["task_type"], dict.fromkeys(TaskStatus.values, 0))[row["status"]] += row["n"]
        nodes.add_tasks(row)
    cancelled = tasks.filter(status=TaskStatus.CANCELLED) if cancelled is None else cancelled
    return {
        "by_kind": by_kind,
        "nodes": nodes.as_dict(),
        "cancelled_by": {
            row["cancelled_by"]: row["n"] for row in cancelled.values("cancelled_by").annotate(n=Count("id"))
        },
        "time_to_cancel_seconds": _duration_histogram(
            cancelled.filter(started_at__isnull=False), "started_at", "cancelled_at", TIME_TO_CANCEL_BUCKETS
        ),
        "cancel_latency_seconds": _duration_histogram(
            cancelled.filter(work_stopped_at__isnull=False), "cancelled_at", "work_stopped_at", CANCEL_LATENCY_BUCKETS
        ),
    }


def page_figures(pages) -> dict:
    """The figures of a set of pages that add up: the OCR time histogram."""
    ocr_pages = pages.filter(source=PageSource.OCR, success=True)
    return {"ocr_page_seconds": _histogram(ocr_pages, F("processing_time"), PAGE_SECONDS_BUCKETS)}


def snapshot(window_minutes: int | None = None, *, tasks=None, staff: bool = True) -> dict:
    """All figures; with `window_minutes`, task figures cover the tasks created in that window.
    `tasks` narrows them to a caller's own tasks; without `staff`, figures that speak of other
    users (free-text cancel reasons, every client's cancel answers) are left out. Over all tasks
    and all time, the past comes added up (ocr/rollup.py) and only the rest is read."""
    now = timezone.now()
    if tasks is None and not window_minutes:
        past, tasks, unfolded_cancelled, pages = rollup.current()
        current = OCRTask.objects.all()
        cancelled = OCRTask.objects.filter(status=TaskStatus.CANCELLED)
    else:
        unfolded_cancelled = None
        past, current = {}, OCRTask.objects.all() if tasks is None else tasks  # running and pending: now
        tasks = current
        pages = OCRPage.objects.filter(task__in=tasks) if not staff else OCRPage.objects.all()
        if window_minutes:
            since = now - timedelta(minutes=window_minutes)
            tasks = tasks.filter(created_at__gte=since)
            pages = pages.filter(created_at__gte=since)
        cancelled = tasks.filter(status=TaskStatus.CANCELLED)
    figures = rollup.added(past, rollup.added(task_figures(tasks, unfolded_cancelled), page_figures(pages)))
    by_kind, nodes = figures["by_kind"], figures["nodes"]
    running = current.filter(status=TaskStatus.PROCESSING).values("worker_host").annotate(n=Count("id"))
    for row in running:
        if row["worker_host"]:
            nodes.setdefault(row["worker_host"], _Nodes.empty())["running"] += row["n"]
    totals = {kind: sum(counts.values()) for kind, counts in by_kind.items()}
    cancellation_rate = {
        kind: round(counts[TaskStatus.CANCELLED] / totals[kind], 4) if totals[kind] else 0.0
        for kind, counts in by_kind.items()
    }
    last_minute = pages.filter(created_at__gte=now - timedelta(seconds=60)).count()
    data = {
        "window_minutes": window_minutes,
        "generated_at": now.isoformat(),
        "tasks": {"by_kind": by_kind, "submitted": totals},
        "cancellation_rate": cancellation_rate,
        "cancelled_by": figures["cancelled_by"],
        "time_to_cancel_seconds": figures["time_to_cancel_seconds"],
        "cancel_latency_seconds": figures["cancel_latency_seconds"],
        "queue_depth": queue_depth(),
        "running_tasks": sum(row["n"] for row in running),
        "pending_tasks": current.filter(status=TaskStatus.PENDING).count(),
        "pages_per_second": round(last_minute / 60.0, 3),
        "ocr_page_seconds": figures["ocr_page_seconds"],
    }
    if staff:
        data["nodes"] = dict(sorted(nodes.items()))
        newest = cancelled.order_by("-cancelled_at").values_list("cancellation_reason", flat=True)[:REASONS_SAMPLE]
        reasons = Counter(normalise_reason(r) for r in newest)
        data["cancellation_reasons"] = [{"reason": r, "count": n} for r, n in reasons.most_common(10)]
        data["cancel_requests"] = _cancel_requests()
    return data


class _Nodes:
    """Figures per worker node (OCR_NODE_NAME, the task's `worker_node`): tasks it ran that
    ended, by status; pages it recorded (a task's pages count for the node that ran it last);
    tasks processing on it now. Tasks that never started belong to no node."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}

    @staticmethod
    def empty() -> dict:
        return {"running": 0, "tasks": {status: 0 for status in TERMINAL_STATUSES}, "pages": {"ok": 0, "failed": 0}}

    def _node(self, name: str) -> dict:
        return self.nodes.setdefault(name, self.empty())

    def add_tasks(self, row: dict) -> None:
        if not row["worker_host"]:
            return
        node = self._node(row["worker_host"])
        if row["status"] in TERMINAL_STATUSES:
            node["tasks"][row["status"]] += row["n"]
        node["pages"]["ok"] += row["pages"] or 0
        node["pages"]["failed"] += row["failed"] or 0

    def as_dict(self) -> dict:
        return dict(sorted(self.nodes.items()))


def _cancel_requests() -> dict:
    try:
        codes = {int(k): int(v) for k, v in _redis().hgetall(_key(CANCEL_REQUESTS_KEY)).items()}
    except redis.RedisError:
        codes = {}
    requests_total = sum(codes.values())
    return {
        "by_status": codes,
        "error_rate": {
            str(code): round(codes.get(code, 0) / requests_total, 4) if requests_total else 0.0
            for code in (400, 404, 429)
        },
    }


def recent_cancellation_rate(minutes: int) -> tuple[float, int]:
    """(cancelled / finished, finished) over the tasks that ended in the last `minutes`."""
    since = timezone.now() - timedelta(minutes=minutes)
    ended = OCRTask.objects.filter(rollup.ended(since=since))
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
            ordered = sorted(hist["buckets"].items(), key=lambda bucket: float(bucket[0]))
            buckets = [*ordered, ("+Inf", hist["count"])]
            family = HistogramMetricFamily(name if name.startswith("ocr_") else f"ocr_{name}", doc)
            family.add_metric([], buckets, hist["sum"])
            yield family
        requests = CounterMetricFamily("ocr_cancel_requests", "Cancel answers by status code", labels=["code"])
        for code, n in data["cancel_requests"]["by_status"].items():
            requests.add_metric([str(code)], n)
        yield requests
        yield from _node_families(data["nodes"])
        for name, doc, value in (
            ("ocr_queue_depth", "Jobs waiting on the broker", data["queue_depth"]),
            ("ocr_running_tasks", "Tasks processing", data["running_tasks"]),
            ("ocr_pending_tasks", "Tasks pending", data["pending_tasks"]),
            ("ocr_pages_per_second", "Pages finished per second over the last minute", data["pages_per_second"]),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)


def _node_families(nodes: dict):
    """The `node` label: what each worker node ran, recorded and runs now."""
    tasks = CounterMetricFamily(
        "ocr_node_tasks", "Tasks a worker node ran that ended, by status", labels=["node", "status"]
    )
    pages = CounterMetricFamily(
        "ocr_node_pages", "Pages a worker node recorded, by outcome", labels=["node", "outcome"]
    )
    running = GaugeMetricFamily("ocr_node_running_tasks", "Tasks processing on a worker node", labels=["node"])
    for name, node in nodes.items():
        for status, n in node["tasks"].items():
            tasks.add_metric([name, status], n)
        for outcome, n in node["pages"].items():
            pages.add_metric([name, outcome], n)
        running.add_metric([name], node["running"])
    yield from (tasks, pages, running)


def prometheus_text() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot()))
    return generate_latest(registry)
