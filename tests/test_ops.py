"""Operations: metrics (JSON, Prometheus, across processes), OpenAPI, retention, dashboard."""

import json
import logging
import os
import re
import time
import tracemalloc
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from ocr import metrics, queue, services, upkeep
from ocr.models import CancelAudit, OCRTask, PageSource
from tests import factories
from tests.support import post_json, wait_for


def make_task(task_type="pdf") -> OCRTask:
    return factories.submit_task(task_type)


def complete(task: OCRTask, seconds: float = 0.4) -> None:
    services.task_start(task_id=task.pk, total_pages=1)
    factories.record_page(task_id=task.pk, page_number=1, text="x", source=PageSource.OCR, processing_time=seconds)
    services.task_finish(task_id=task.pk)


@pytest.fixture
def clean_metric_counters(settings):
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(f"{settings.OCR_QUEUE_NAME}:{metrics.CANCEL_REQUESTS_KEY}")
    yield
    client.delete(f"{settings.OCR_QUEUE_NAME}:{metrics.CANCEL_REQUESTS_KEY}")


@pytest.mark.django_db
def test_metrics_after_a_known_sequence(no_worker, clean_metric_counters):
    for _ in range(2):
        complete(make_task("pdf"), seconds=0.4)
    running = make_task("pdf")
    services.task_start(task_id=running.pk, total_pages=1)
    services.task_cancel(task=running, reason="Deadline of 5 s exceeded", cancelled_by="deadline")
    services.task_work_stopped(task_id=running.pk)
    services.task_cancel(task=make_task("ocr"), reason="deadline of 10 s  exceeded")
    api = APIClient()
    assert api.post(f"/v1/ocr/tasks/{running.pk}/cancel").status_code == 200  # already cancelled
    assert api.post("/v1/ocr/tasks/7b0c6a0e-4d57-4b7c-9a55-2f0b5c3f0d11/cancel").status_code == 404
    done = OCRTask.objects.filter(status="completed").first()
    assert api.post(f"/v1/ocr/tasks/{done.pk}/cancel").status_code == 400

    staff = APIClient()
    staff.force_authenticate(User.objects.create_user("ops", is_staff=True))
    data = staff.get("/v1/ocr/metrics").json()
    assert data["tasks"]["by_kind"]["pdf"] == {
        "pending": 0,
        "processing": 0,
        "completed": 2,
        "failed": 0,
        "cancelled": 1,
    }
    assert data["tasks"]["submitted"] == {"ocr": 1, "llm": 0, "pdf": 3, "pdf_llm": 0}
    assert data["cancellation_rate"]["pdf"] == round(1 / 3, 4) and data["cancellation_rate"]["ocr"] == 1.0
    assert data["cancellation_reasons"] == [{"reason": "deadline of N s exceeded", "count": 2}]
    assert data["time_to_cancel_seconds"]["count"] == 1
    assert data["cancel_latency_seconds"]["count"] == 1
    assert data["cancel_requests"]["by_status"] == {"200": 1, "404": 1, "400": 1}
    assert data["cancel_requests"]["error_rate"]["404"] == round(1 / 3, 4)
    assert data["ocr_page_seconds"]["count"] == 2 and data["ocr_page_seconds"]["buckets"]["0.5"] == 2
    assert data["pages_per_second"] == round(2 / 60, 3)
    assert data["running_tasks"] == 0 and data["pending_tasks"] == 0

    text = Client().get("/metrics").content.decode()
    assert 'ocr_tasks_total{status="completed",task_type="pdf"} 2.0' in text
    assert 'ocr_cancel_requests_total{code="404"} 1.0' in text
    assert 'ocr_cancellation_reasons{reason="deadline of N s exceeded"} 2.0' in text
    assert "ocr_cancel_latency_seconds_count 1.0" in text

    # anyone else: their own figures only, and no one's free-text reasons
    alice = User.objects.create_user("alice")
    mine = factories.submit_task("pdf", owner=alice)
    services.task_cancel(task=mine, reason="my private reason", user=alice)
    as_alice = APIClient()
    as_alice.force_authenticate(alice)
    own = as_alice.get("/v1/ocr/metrics").json()
    assert own["tasks"]["submitted"] == {"ocr": 0, "llm": 0, "pdf": 1, "pdf_llm": 0}
    assert "cancellation_reasons" not in own and "cancel_requests" not in own
    assert "private" not in json.dumps(own) and "deadline" not in json.dumps(own)
    assert "cancellation_reasons" not in APIClient().get("/v1/ocr/metrics").json()


@pytest.mark.django_db
def test_prometheus_metrics_only_for_allowed_scrapers(settings):
    assert Client().get("/metrics").status_code == 200  # loopback, the default
    remote = Client(REMOTE_ADDR="203.0.113.9")
    assert remote.get("/metrics").status_code == 403
    settings.OCR_METRICS_TOKEN = "scrape-token"
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token").status_code == 200
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    settings.OCR_METRICS_ALLOW = ["203.0.113.0/24"]
    assert remote.get("/metrics").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_metrics_are_right_across_processes(live_daphne, no_worker, clean_metric_counters):
    task = make_task("pdf")
    # another process (the live daphne) answers cancel requests: the counts are shared
    assert post_json(live_daphne, f"/v1/ocr/tasks/{task.pk}/cancel")[0] == 200
    assert post_json(live_daphne, "/v1/ocr/tasks/not-a-task/cancel")[0] == 404
    # counted as the answers go out, not before (layer_sender.post_redis)
    wait_for(lambda: metrics.snapshot()["cancel_requests"]["by_status"] == {200: 1, 404: 1}, timeout=5)
    assert metrics.snapshot()["tasks"]["by_kind"]["pdf"]["cancelled"] == 1


@pytest.mark.django_db(transaction=True)
def test_a_cancel_through_daphne_wakes_the_worker_before_and_after_its_commit(live_daphne, no_worker):
    """The wake-up on commit goes out on daphne's loop, the answer not waiting for it: it still
    follows the one sent before the commit."""
    task = make_task("pdf")
    services.task_start(task_id=task.pk, total_pages=2)
    wakeups = queue.subscribe_task_wakeups(task.pk)
    try:
        assert post_json(live_daphne, f"/v1/ocr/tasks/{task.pk}/cancel")[0] == 200
        received, deadline = [], time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            message = wakeups.get_message(timeout=1)  # None for the subscription's own reply too
            if message is not None:
                received.append(message["data"])
        assert received == [queue.WAKE_IN_FLIGHT, queue.WAKE_CANCELLED]
        assert OCRTask.objects.get(pk=task.pk).status == "cancelled"
    finally:
        wakeups.close()


def test_openapi_schema_validates_and_docs_are_local():
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.validation import validate_schema

    schema = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(schema)
    paths = schema["paths"]
    for path in (
        "/v1/ocr/process",
        "/v1/ocr/process-sync",
        "/v1/ocr/process-pdf",
        "/v1/ocr/process-pdf-sync",
        "/v1/ocr/process-pdf-stream",
        "/v1/ocr/tasks/{task_id}/cancel",
        "/v1/ocr/stream/{task_id}",
        "/v1/ocr/stream/{task_id}/cancel",
        "/v1/ocr/tasks",
        "/v1/ocr/health",
    ):
        assert path in paths, path
    upload = paths["/v1/ocr/process-pdf"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"202", "400", "413", "415", "429"} <= set(upload["responses"])
    assert {"200", "400", "404", "429"} <= set(paths["/v1/ocr/tasks/{task_id}/cancel"]["post"]["responses"])
    assert "200" in paths["/v1/ocr/process-pdf-sync"]["post"]["responses"]


@pytest.mark.django_db
def test_schema_and_docs_endpoints():
    client = Client()
    assert client.get("/api/schema/").status_code == 200
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html and "/static/drf_spectacular_sidecar/" in html
    external = re.findall(r'(?:src|href)\s*=\s*["\']((?:https?:)?//[^"\']+)', html)
    assert not external, external  # served locally, no CDN
    asset = html.split('src="')[1].split('"')[0]
    assert client.get(asset).status_code == 200


@pytest.mark.django_db
def test_retention_deletes_old_finished_tasks_with_their_files(no_worker, settings):
    old_done = make_task()
    complete(old_done)
    old_active = make_task()
    recent = make_task()
    complete(recent)
    services.task_cancel(task=make_task(), reason="kept audit")
    path = old_done.input_file.path
    assert os.path.exists(path)
    long_ago = timezone.now() - timedelta(days=40)
    OCRTask.objects.filter(pk__in=[old_done.pk, old_active.pk]).update(created_at=long_ago)
    CancelAudit.objects.update(created_at=long_ago)
    report = upkeep.purge_expired(retention_days=30, audit_retention_days=90)
    assert report == {"tasks": 1, "files": 1, "audits": 0, "dry_run": False}
    assert not OCRTask.objects.filter(pk=old_done.pk).exists() and not os.path.exists(path)
    assert OCRTask.objects.filter(pk=old_active.pk).exists() and OCRTask.objects.filter(pk=recent.pk).exists()
    assert CancelAudit.objects.count() == 1  # the audit is kept longer
    assert upkeep.purge_expired(retention_days=30, audit_retention_days=30)["audits"] == 1


@pytest.mark.django_db
def test_retention_of_a_long_history_holds_a_batch_in_memory_not_the_history(monkeypatch):
    """Django's delete loads every task it deletes (its result with the pages' text too): one
    call deleting 20,000 tasks with 8 KB results took 537 MB, against 146 MB in batches."""
    long_ago = timezone.now() - timedelta(days=40)
    result = {"results": [{"page": 1, "text": "x" * 50_000}]}
    OCRTask.objects.bulk_create(OCRTask(task_type="pdf", status="completed", result=result) for _ in range(120))
    OCRTask.objects.update(created_at=long_ago)
    monkeypatch.setattr(upkeep, "PURGE_BATCH", 10)
    tracemalloc.start()
    try:
        assert upkeep.purge_expired(retention_days=30)["tasks"] == 120
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not OCRTask.objects.exists()
    assert peak < 3_000_000, peak  # the 120 results alone are 6 MB


@pytest.mark.django_db
def test_cleanup_endpoint_is_for_staff(no_worker):
    anonymous = APIClient()
    assert anonymous.delete("/v1/ocr/tasks/cleanup").status_code == 401
    staff = APIClient()
    staff.force_authenticate(User.objects.create_user("op", is_staff=True))
    response = staff.delete("/v1/ocr/tasks/cleanup?days=30")
    assert response.status_code == 200 and response.json()["tasks"] == 0
    assert staff.delete("/v1/ocr/tasks/cleanup?days=x").status_code == 400


@pytest.mark.django_db
def test_cleanup_command(no_worker, capsys):
    from django.core.management import call_command

    call_command("ocr_cleanup", "--days", "30", "--dry-run")
    assert json.loads(capsys.readouterr().out) == {"tasks": 0, "files": 0, "audits": 0, "dry_run": True}


def staff_client() -> Client:
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    for codename in ("view_ocrtask", "change_ocrtask", "cancel_any_task"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_dashboard_shows_figures_running_tasks_and_alerts(no_worker, settings, caplog):
    settings.OCR_CANCEL_ALERT_RATE = 0.5
    settings.OCR_CANCEL_ALERT_MIN_TASKS = 3
    client = staff_client()
    running = make_task()
    services.task_start(task_id=running.pk, total_pages=1)
    complete(make_task())
    page = client.get("/admin/ocr/ocrtask/dashboard/?window=60")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<svg" in html and str(running.pk) in html and 'role="alert"' not in html
    for _ in range(3):
        services.task_cancel(task=make_task(), reason="user gave up")
    with caplog.at_level(logging.WARNING, logger="ocr.admin"):
        html = client.get("/admin/ocr/ocrtask/dashboard/").content.decode()
    assert 'role="alert"' in html and "user gave up" in html
    assert any("exceeds OCR_CANCEL_ALERT_RATE" in r.message for r in caplog.records)
    assert "Dashboard" in client.get("/admin/ocr/ocrtask/").content.decode()
    # the cancel button of a running task goes back to the dashboard
    response = client.post(
        f"/admin/ocr/ocrtask/{running.pk}/cancel/",
        {"reason": "from dashboard", "next": "/admin/ocr/ocrtask/dashboard/"},
    )
    assert response.status_code == 302 and response["Location"] == "/admin/ocr/ocrtask/dashboard/"
    running.refresh_from_db()
    assert running.status == "cancelled" and running.cancelled_by == "admin"
    assert Client().get("/admin/ocr/ocrtask/dashboard/").status_code == 302  # login first


@pytest.mark.django_db
def test_metrics_window_is_validated():
    api = APIClient()
    assert api.get("/v1/ocr/metrics?window=15").status_code == 200
    for bad in ("x", "-5", "15026526"):
        response = api.get(f"/v1/ocr/metrics?window={bad}")
        assert response.status_code == 400 and "window" in response.json()["detail"]


@pytest.mark.django_db
def test_credentials_in_urls_are_never_shown(settings):
    from ocr.llm import redact_url

    settings.OCR_LLM_BASE_URL = "http://user:s3cret@127.0.0.1:9/v1?api_key=s3cret&x=1"
    for path in ("/v1/ocr/health", "/v1/ocr/service-info"):
        text = APIClient().get(path).content.decode()
        assert "s3cret" not in text and "127.0.0.1:9" in text, path
    assert redact_url("redis://:pw@host:6379/0") == "redis://***@host:6379/0"


@pytest.mark.django_db
def test_health_without_anonymous_access_gives_probes_the_status_only(settings):
    settings.OCR_ALLOW_ANONYMOUS = False
    response = APIClient().get("/v1/ocr/health")
    assert response.status_code in (200, 503) and set(response.json()) == {"status"}
    staff = APIClient()
    staff.force_authenticate(User.objects.create_user("ops", is_staff=True))
    assert {"database", "redis", "tesseract"} <= set(staff.get("/v1/ocr/health").json())


@pytest.mark.django_db
def test_metrics_per_worker_node(no_worker, settings, django_assert_max_num_queries):
    for node, finish in (("node-a", True), ("node-a", False), ("node-b", True)):
        settings.OCR_NODE_NAME = node  # the node a worker runs on names its tasks (task_start)
        task = make_task("pdf")
        services.task_start(task_id=task.pk, total_pages=2)
        factories.record_page(task_id=task.pk, page_number=1)
        if finish:
            factories.record_page(task_id=task.pk, page_number=2, success=False, error="unreadable")
            services.task_finish(task_id=task.pk)
    services.task_cancel(task=make_task("pdf"))  # never started: no node's
    staff = APIClient()
    staff.force_authenticate(User.objects.create_user("ops-nodes", is_staff=True))
    data = staff.get("/v1/ocr/metrics").json()
    ended = {"completed": 1, "failed": 0, "cancelled": 0}
    assert data["nodes"] == {
        "node-a": {"running": 1, "tasks": ended, "pages": {"ok": 2, "failed": 1}},
        "node-b": {"running": 0, "tasks": ended, "pages": {"ok": 1, "failed": 1}},
    }
    assert data["running_tasks"] == 1
    assert "nodes" not in APIClient().get("/v1/ocr/metrics").json()  # infrastructure: staff only

    # as many as before node labels (the kinds GROUP BY serves both), and the rollup's row
    with django_assert_max_num_queries(10):
        text = Client().get("/metrics").content.decode()
    assert 'ocr_node_running_tasks{node="node-a"} 1.0' in text
    assert 'ocr_node_running_tasks{node="node-b"} 0.0' in text
    assert 'ocr_node_tasks_total{node="node-b",status="completed"} 1.0' in text
    assert 'ocr_node_pages_total{node="node-a",outcome="ok"} 2.0' in text
    assert 'ocr_node_pages_total{node="node-b",outcome="failed"} 1.0' in text
    assert 'ocr_tasks_total{status="processing",task_type="pdf"} 1.0' in text
