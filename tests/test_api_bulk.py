"""Bulk and selective cancel, batches and resume (API.md section 8) through the REST API, the
tests playing the worker through the services (real Redis and database, no qcluster)."""

import json
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from ocr import services
from ocr.models import Batch, CancelAudit, OCRTask, TaskEvent
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(no_worker):
    return APIClient()


def bulk_cancel(client, body):
    return client.generic("POST", "/v1/ocr/tasks/cancel", json.dumps(body), content_type="application/json")


def finish(task) -> OCRTask:
    started = services.task_start(task_id=task.pk, total_pages=1)
    factories.record_page(task_id=task.pk, page_number=1, attempt=started.attempt)
    services.task_finish(task_id=task.pk, attempt=started.attempt)
    return OCRTask.objects.get(pk=task.pk)


def cancelled_events(task_id) -> int:
    return TaskEvent.objects.filter(task_id=task_id, type="cancelled").count()


def test_bulk_cancel_by_ids_sorts_every_task_into_its_list(client):
    pending = factories.submit_task("pdf")
    processing = factories.submit_task("pdf", start=True, pages=3)
    factories.record_page(task_id=processing.pk, page_number=1, attempt=processing.attempt)
    done = finish(factories.submit_task("ocr"))
    gone = factories.submit_task("pdf")
    services.task_cancel(task=gone, reason="earlier")
    missing = str(uuid.uuid4())
    ids = [str(pending.pk), str(processing.pk), str(done.pk), str(gone.pk), missing, "not-a-uuid", str(pending.pk)]
    response = bulk_cancel(client, {"task_ids": ids, "reason": "clear the queue"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert sorted(body["cancelled"]) == sorted([str(pending.pk), str(processing.pk)])
    assert body["already_cancelled"] == [str(gone.pk)]
    assert body["already_finished"] == [str(done.pk)]
    assert body["not_found"] == [missing, "not-a-uuid"]
    assert body["truncated"] is False and body["reason"] == "clear the queue"
    for task_id in (pending.pk, processing.pk):
        task = OCRTask.objects.get(pk=task_id)
        assert task.status == "cancelled" and task.cancellation_reason == "clear the queue"
        assert cancelled_events(task_id) == 1
        assert CancelAudit.objects.filter(task_id=task_id, accepted=True).count() == 1
    partial = client.get(f"/v1/ocr/tasks/{processing.pk}").json()["result"]
    assert [page["page_number"] for page in partial["results"]] == [1]  # partial result kept
    assert OCRTask.objects.get(pk=gone.pk).cancellation_reason == "earlier"  # untouched
    assert OCRTask.objects.get(pk=done.pk).status == "completed"


def test_bulk_cancel_never_touches_another_users_task(client):
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    alices = factories.submit_task("pdf", owner=alice)
    bobs = factories.submit_task("pdf", owner=bob)
    client.force_authenticate(alice)
    body = bulk_cancel(client, {"task_ids": [str(alices.pk), str(bobs.pk)]}).json()
    assert body["cancelled"] == [str(alices.pk)] and body["not_found"] == [str(bobs.pk)]
    assert body["reason"] == "User requested cancellation"
    body = bulk_cancel(client, {"filter": {"status": ["pending", "processing"]}}).json()
    assert body["cancelled"] == []
    assert OCRTask.objects.get(pk=bobs.pk).status == "pending"
    assert not CancelAudit.objects.filter(task_id=bobs.pk).exists()


def test_staff_with_permission_cancels_anyones_tasks_by_filter(client):
    bob = User.objects.create_user("bob")
    staff = User.objects.create_user("staff", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="cancel_any_task"))
    bobs = factories.submit_task("pdf", owner=bob)
    client.force_authenticate(User.objects.get(pk=staff.pk))
    body = bulk_cancel(client, {"filter": {"status": ["pending"]}}).json()
    assert body["cancelled"] == [str(bobs.pk)]


def test_filter_selects_by_status_kind_and_time_and_dry_run_changes_nothing(client):
    user = User.objects.create_user("alice")
    old = factories.submit_task("pdf", owner=user)
    OCRTask.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=2))
    image = factories.submit_task("ocr", owner=user)
    running = factories.submit_task("pdf", owner=user, start=True)
    client.force_authenticate(user)
    dry = bulk_cancel(client, {"filter": {"task_type": ["pdf"]}, "dry_run": True}).json()
    assert dry["cancelled"] == [str(old.pk), str(running.pk)]  # oldest first
    assert OCRTask.objects.filter(status="cancelled").count() == 0
    assert not CancelAudit.objects.exists() and cancelled_events(old.pk) == 0
    since = (timezone.now() - timedelta(hours=1)).isoformat()
    body = bulk_cancel(client, {"filter": {"task_type": ["pdf"], "created_after": since}}).json()
    assert body["cancelled"] == [str(running.pk)]
    body = bulk_cancel(client, {"filter": {"status": ["processing", "cancelled"]}}).json()
    assert body["cancelled"] == [] and body["already_cancelled"] == [str(running.pk)]
    assert OCRTask.objects.get(pk=image.pk).status == "pending"
    assert OCRTask.objects.get(pk=old.pk).status == "pending"


def test_filter_cancels_at_most_1000_and_says_truncated(client, settings):
    user = User.objects.create_user("alice")
    now = timezone.now()
    OCRTask.objects.bulk_create(
        OCRTask(task_type="pdf", owner=user, status="completed", created_at=now) for _ in range(1001)
    )
    client.force_authenticate(user)
    body = bulk_cancel(client, {"filter": {"status": ["completed"]}, "dry_run": True}).json()
    assert body["truncated"] is True and len(body["already_finished"]) == 1000


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"task_ids": [str(uuid.uuid4()) for _ in range(1001)]}, "at most 1000"),
        ({}, "either task_ids or filter"),
        ({"task_ids": [], "filter": {}}, "either task_ids or filter"),
        ({"task_ids": "abc"}, "task_ids"),
        ({"filter": {"status": ["sleeping"]}}, "status"),
        ({"filter": {"colour": "red"}}, "colour"),
        ({"filter": {"created_after": "yesterday"}}, "created_after"),
        ({"task_ids": [], "reason": "x" * 1001}, "reason"),
        ({"task_ids": [], "dry_run": "yes"}, "dry_run"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_bulk_input_is_400_naming_it(client, body, fragment):
    response = bulk_cancel(client, body)
    assert response.status_code == 400, response.content
    assert fragment in response.json()["detail"]


def test_one_bulk_call_counts_once_against_the_cancel_rate(client, settings):
    settings.OCR_CANCEL_RATE = "2/m"
    tasks = [str(factories.submit_task("pdf").pk) for _ in range(5)]
    assert bulk_cancel(client, {"task_ids": tasks}).status_code == 200
    assert bulk_cancel(client, {"task_ids": tasks}).status_code == 200
    response = bulk_cancel(client, {"task_ids": tasks})
    assert response.status_code == 429 and response.has_header("Retry-After")


# --- Batches ----------------------------------------------------------------------------------


def post_batch(client, files: list[tuple[str, bytes]], request: dict | None = None, **headers):
    body = {"file": [SimpleUploadedFile(name, data) for name, data in files]}
    if request is not None:
        body["request"] = json.dumps(request)
    return client.post("/v1/ocr/batches", body, format="multipart", **headers)


def test_batch_creates_one_task_per_file_with_the_kind_of_its_content(client):
    files = [("scan.png", factories.text_image()), ("doc.pdf", factories.text_pdf(3)), ("x.bin", factories.text_pdf(1))]
    response = post_batch(client, files, {"dpi": 200, "text_layer": "ocr"})
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "pending" and body["counts"]["pending"] == 3
    assert [(t["file_name"], t["task_type"]) for t in body["tasks"]] == [
        ("scan.png", "ocr"),
        ("doc.pdf", "pdf"),
        ("x.bin", "pdf"),
    ]
    task = OCRTask.objects.get(pk=body["tasks"][1]["task_id"])
    assert task.parameters.dpi == 200 and task.total_pages == 3 and str(task.batch_id) == body["batch_id"]
    detail = client.get(f"/v1/ocr/tasks/{task.pk}").json()
    assert detail["batch_id"] == body["batch_id"] and detail["priority"] == "normal"
    status = client.get(f"/v1/ocr/batches/{body['batch_id']}").json()
    assert status["progress"]["total_pages"] == 5 and status["status"] == "pending"
    assert [t["status"] for t in status["tasks"]] == ["pending"] * 3


@pytest.mark.parametrize(
    "files, code, fragment",
    [
        ([("a.png", factories.text_image()), ("bad.txt", b"hello there")], 415, 'file[1] "bad.txt"'),
        ([("a.pdf", factories.text_pdf(1)), ("locked.pdf", factories.encrypted_pdf())], 400, 'file[1] "locked.pdf"'),
        ([("empty.png", b"")], 400, 'file[0] "empty.png"'),
        ([], 400, "file: missing"),
    ],
)
def test_one_bad_file_rejects_the_whole_batch(client, files, code, fragment):
    response = post_batch(client, files)
    assert response.status_code == code, response.content
    assert fragment in response.json()["detail"]
    assert not OCRTask.objects.exists() and not Batch.objects.exists()


def test_batch_request_is_validated(client):
    response = post_batch(client, [("a.png", factories.text_image())], {"dpi": 5000})
    assert response.status_code == 400 and "request.dpi" in response.json()["detail"]
    response = post_batch(client, [("a.png", factories.text_image())], {"llm": "yes"})
    assert response.status_code == 400 and "request.llm" in response.json()["detail"]
    assert not OCRTask.objects.exists()


def test_batch_cancel_cascades_to_active_tasks_only(client):
    response = post_batch(client, [(f"{i}.pdf", factories.text_pdf(1)) for i in range(3)])
    batch_id = response.json()["batch_id"]
    first, second, third = [t["task_id"] for t in response.json()["tasks"]]
    finish(OCRTask.objects.get(pk=first))
    services.task_start(task_id=second, total_pages=1)
    path = f"/v1/ocr/batches/{batch_id}/cancel"
    response = client.generic("POST", path, json.dumps({"reason": "wrong files"}), content_type="application/json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["message"] == "Batch successfully cancelled" and body["status"] == "cancelled"
    assert sorted(body["cancelled"]) == sorted([second, third]) and body["cancellation_reason"] == "wrong files"
    assert OCRTask.objects.get(pk=first).status == "completed"
    status = client.get(f"/v1/ocr/batches/{batch_id}").json()
    assert status["status"] == "cancelled" and status["counts"] == {
        "pending": 0,
        "processing": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 2,
    }
    again = client.post(path).json()
    assert again["message"] == "Batch was already cancelled" and again["cancellation_reason"] == "wrong files"
    assert again["cancelled"] == [] and again["cancelled_at"] == body["cancelled_at"]


def test_finished_batch_cannot_be_cancelled_and_foreign_batch_is_404(client):
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    client.force_authenticate(alice)
    response = post_batch(client, [("a.png", factories.text_image())])
    batch_id, task_id = response.json()["batch_id"], response.json()["tasks"][0]["task_id"]
    finish(OCRTask.objects.get(pk=task_id))
    assert client.get(f"/v1/ocr/batches/{batch_id}").json()["status"] == "completed"
    response = client.post(f"/v1/ocr/batches/{batch_id}/cancel")
    assert response.status_code == 400 and response.json()["status"] == "completed"
    client.force_authenticate(bob)
    assert client.get(f"/v1/ocr/batches/{batch_id}").status_code == 404
    assert client.post(f"/v1/ocr/batches/{batch_id}/cancel").status_code == 404
    assert client.get("/v1/ocr/batches/nonsense").status_code == 404


# --- Resume -----------------------------------------------------------------------------------


def cancelled_at_page(pages_done: int, total: int = 4, **kwargs) -> OCRTask:
    task = factories.submit_task("pdf", pages=total, start=True, **kwargs)
    for number in range(1, pages_done + 1):
        factories.record_page(task_id=task.pk, page_number=number, text=f"page {number}", attempt=task.attempt)
    factories.record_page(task_id=task.pk, page_number=pages_done + 1, success=False, error="x", attempt=task.attempt)
    services.task_cancel(task=task, reason="stop")
    return OCRTask.objects.get(pk=task.pk)


def test_resume_copies_the_successful_pages_into_a_new_task(client):
    old = cancelled_at_page(2)
    response = client.post(f"/v1/ocr/pdf-tasks/{old.pk}/resume")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["resumed_from"] == str(old.pk) and body["task_id"] != str(old.pk)
    assert body["task_type"] == "pdf" and body["status"] == "pending"
    assert body["progress"] == {"total_pages": 4, "processed_pages": 2, "failed_pages": 0, "percentage": 50.0}
    new = OCRTask.objects.get(pk=body["task_id"])
    assert new.params == old.params and new.input_name == old.input_name
    assert list(new.pages.values_list("page_number", "text", "source")) == [(1, "page 1", "ocr"), (2, "page 2", "ocr")]
    unchanged = OCRTask.objects.get(pk=old.pk)
    assert (unchanged.status, unchanged.result, unchanged.event_seq) == ("cancelled", old.result, old.event_seq)
    assert client.get(f"/v1/ocr/tasks/{old.pk}").json()["resumed_from"] is None


def test_resume_refusals(client):
    pending = factories.submit_task("pdf")
    response = client.post(f"/v1/ocr/tasks/{pending.pk}/resume")
    assert response.status_code == 400
    assert response.json() == {"detail": f"Task {pending.pk} cannot be resumed: pending"}
    done = finish(factories.submit_task("pdf"))
    assert client.post(f"/v1/ocr/tasks/{done.pk}/resume").json()["detail"].endswith("cannot be resumed: completed")
    image = factories.submit_task("ocr")
    services.task_cancel(task=image)
    assert client.post(f"/v1/ocr/tasks/{image.pk}/resume").status_code == 400
    old = cancelled_at_page(1)
    assert client.post(f"/v1/ocr/llm-tasks/{old.pk}/resume").status_code == 404  # wrong kind
    assert client.post("/v1/ocr/tasks/nonsense/resume").status_code == 404
    bob = User.objects.create_user("bob")
    bobs = cancelled_at_page(1, owner=bob)
    assert client.post(f"/v1/ocr/tasks/{bobs.pk}/resume").status_code == 404
    old.input_file.delete(save=False)
    response = client.post(f"/v1/ocr/tasks/{old.pk}/resume")
    assert response.status_code == 410 and "input file is gone" in response.json()["detail"]
    assert OCRTask.objects.filter(resumed_from__isnull=False).count() == 0
