"""The metrics of the past added up once (ocr/rollup.py): a scrape reads the rollup plus what
came after it, with the figures of reading every row; they survive the retention purge; a fold
that started from a row another process has moved on since writes nothing."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ocr import metrics, rollup, services, upkeep
from ocr.models import MetricsRollup, OCRPage, OCRTask
from tests import factories

pytestmark = pytest.mark.django_db

ADDITIVE = ("cancelled_by", "time_to_cancel_seconds", "cancel_latency_seconds", "ocr_page_seconds", "nodes")


def history(settings, *, ended_ago: timedelta) -> list[OCRTask]:
    """Tasks of every ending on two nodes (pages recorded, a cancel mid-task, a failure), plus
    one still running, their ends and pages moved `ended_ago` into the past."""
    made = []
    for node, end in (("node-a", "finish"), ("node-b", "finish"), ("node-a", "cancel"), ("node-b", "fail")):
        settings.OCR_NODE_NAME = node
        task = factories.submit_task("pdf", pages=2, start=True)
        factories.record_page(task_id=task.pk, page_number=1, processing_time=0.3)
        factories.record_page(task_id=task.pk, page_number=2, success=False, error="unreadable")
        if end == "finish":
            services.task_finish(task_id=task.pk)
        elif end == "cancel":
            services.task_cancel(task=task, reason=f"stop {node}", cancelled_by="user")
            services.task_work_stopped(task_id=task.pk)
        else:
            services.task_fail(task_id=task.pk, error="broken")
        made.append(task)
    services.task_cancel(task=factories.submit_task("ocr"), reason="not started")
    ids = [task.pk for task in made] + list(OCRTask.objects.filter(task_type="ocr").values_list("pk", flat=True))
    then = timezone.now() - ended_ago
    OCRTask.objects.filter(pk__in=ids, completed_at__isnull=False).update(completed_at=then, created_at=then)
    OCRTask.objects.filter(pk__in=ids, cancelled_at__isnull=False).update(cancelled_at=then, created_at=then)
    OCRPage.objects.filter(task_id__in=ids).update(created_at=then)
    factories.submit_task("pdf", pages=1, start=True)  # running: never added up
    return made


def every_row() -> dict:
    """The figures of reading every row (the path of a caller's own tasks)."""
    return metrics.snapshot(tasks=OCRTask.objects.all())


def same_figures(a: dict, b: dict) -> None:
    assert a["tasks"] == b["tasks"] and a["cancellation_rate"] == b["cancellation_rate"]
    for name in ADDITIVE:
        assert a[name] == b[name], name


def test_a_scrape_reads_the_rollup_and_what_came_after(settings):
    history(settings, ended_ago=timedelta(hours=2))
    expected = every_row()
    assert expected["tasks"]["by_kind"]["pdf"]["completed"] == 2 and expected["ocr_page_seconds"]["count"] == 4
    same_figures(metrics.snapshot(), expected)  # the first scrape adds the past up
    row = MetricsRollup.objects.get()
    assert row.figures["by_kind"]["pdf"] == {"pending": 0, "processing": 0, "completed": 2, "failed": 1, "cancelled": 1}
    assert row.figures["ocr_page_seconds"]["count"] == 4 and row.pages_through == OCRPage.objects.latest("id").pk
    # recent work is read, not added up: a page and an end of now
    task = OCRTask.objects.get(status="processing")
    factories.record_page(task_id=task.pk, page_number=1, processing_time=2.5)
    services.task_finish(task_id=task.pk)
    same_figures(metrics.snapshot(), every_row())
    assert MetricsRollup.objects.get().figures == row.figures
    # the reads of a scrape go no further back than the rollup: no page it added up is read
    with CaptureQueriesContext(connection) as queries:
        text = metrics.prometheus_text().decode()
    page_reads = [q["sql"] for q in queries.captured_queries if '"ocr_ocrpage"' in q["sql"]]
    assert page_reads and all('"ocr_ocrpage"."id" >' in sql for sql in page_reads), page_reads
    # buckets in ascending order, whatever order the stored figures came back in (jsonb sorts keys)
    bounds = re.findall(r'^ocr_page_seconds_bucket\{le="([^"]+)"\}', text, re.M)
    assert bounds[-1] == "+Inf" and bounds[:-1] == sorted(bounds[:-1], key=float) and len(bounds) == 9, bounds


def test_figures_added_up_survive_the_retention_purge(settings):
    history(settings, ended_ago=timedelta(days=40))
    before = metrics.snapshot()
    assert upkeep.purge_expired(retention_days=30)["tasks"] == 5
    assert OCRTask.objects.count() == 1 and every_row()["tasks"]["submitted"]["pdf"] == 1
    after = metrics.snapshot()
    same_figures(after, before)  # counters never go down
    assert after["tasks"]["by_kind"]["pdf"]["cancelled"] == 1


def test_a_purge_adds_up_what_no_scrape_has_seen(settings):
    history(settings, ended_ago=timedelta(days=40))
    expected = metrics.snapshot(tasks=OCRTask.objects.all())
    upkeep.purge_expired(retention_days=30)
    same_figures(metrics.snapshot(), expected)


def test_a_fold_from_a_stale_row_changes_nothing(settings, monkeypatch):
    """A process that read the row before another folded and the purge deleted what that fold
    added up must not write its figures (they would lack the deleted tasks): compare-and-set."""
    history(settings, ended_ago=timedelta(days=40))
    now = timezone.now()
    rollup.fold_due(now - timedelta(days=50))  # a first fold: nothing had ended by then
    stale = MetricsRollup.objects.get()
    expected = metrics.snapshot()  # another process folds the history
    folded = MetricsRollup.objects.get()
    assert folded.figures["by_kind"]["pdf"]["completed"] == 2
    upkeep.purge_expired(retention_days=30)
    monkeypatch.setattr(MetricsRollup.objects, "get_or_create", lambda **_: (stale, False))
    returned = rollup.fold_due(now + timedelta(minutes=5))
    assert MetricsRollup.objects.get().figures == folded.figures == returned.figures
    same_figures(metrics.snapshot(), expected)
