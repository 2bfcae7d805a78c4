"""Cancel endpoints (API.md section 4) against real services and Redis, without workers."""

import json
import time

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from ocr import queue, services
from ocr.models import CancelAudit, OCRPage, OCRTask, OperatorEvent, PageSource, TaskEvent
from tests import factories

pytestmark = pytest.mark.django_db

KINDS = {
    "ocr": ("/v1/ocr/tasks/", "OCR task successfully cancelled"),
    "llm": ("/v1/ocr/llm-tasks/", "LLM task successfully cancelled"),
    "pdf": ("/v1/ocr/pdf-tasks/", "PDF task successfully cancelled"),
    "pdf_llm": ("/v1/ocr/pdf-llm-tasks/", "PDF LLM task successfully cancelled"),
}


def make_task(task_type="pdf", *, owner=None, streaming=False, pages=2) -> OCRTask:
    return factories.submit_task(task_type, owner=owner, streaming=streaming, pages=pages)


def cancel(client, path, body=None, content_type="application/json"):
    if body is None:
        return client.post(path)
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.generic("POST", path, raw, content_type=content_type)


@pytest.fixture
def client():
    return APIClient()


@pytest.mark.parametrize("kind", list(KINDS))
def test_cancel_each_kind_on_its_typed_path_and_universal_path(client, kind):
    path, message = KINDS[kind]
    task = make_task(kind)
    response = cancel(client, f"{path}{task.pk}/cancel", {"reason": "not needed"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "cancelled" and body["message"] == message
    assert body["cancellation_reason"] == "not needed" and body["task_id"] == str(task.pk)
    task.refresh_from_db()
    assert task.status == "cancelled" and task.cancelled_at.isoformat() == body["cancelled_at"]
    assert task.cancelled_by == "user"
    other = make_task(kind)
    assert cancel(client, f"/v1/ocr/tasks/{other.pk}/cancel").json()["message"] == message


def test_wrong_kind_unknown_and_malformed_ids_are_404(client):
    task = make_task("pdf")
    assert cancel(client, f"/v1/ocr/llm-tasks/{task.pk}/cancel").status_code == 404
    assert cancel(client, f"/v1/ocr/pdf-llm-tasks/{task.pk}/cancel").status_code == 404
    assert cancel(client, f"/v1/ocr/stream/{task.pk}/cancel").status_code == 404  # not streaming
    assert cancel(client, "/v1/ocr/tasks/7b0c6a0e-4d57-4b7c-9a55-2f0b5c3f0d11/cancel").status_code == 404
    assert cancel(client, "/v1/ocr/tasks/12345/cancel").status_code == 404
    assert OCRTask.objects.get(pk=task.pk).status == "pending"


def test_stream_cancel_says_streaming(client):
    task = make_task("pdf", streaming=True)
    response = cancel(client, f"/v1/ocr/stream/{task.pk}/cancel")
    assert response.status_code == 200 and response.json()["message"] == "Streaming task successfully cancelled"


@pytest.mark.parametrize("body", [None, "", "{}", "null", {"reason": ""}, {"reason": "   "}, {"reason": None}])
def test_default_reason(client, body):
    task = make_task()
    response = cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel", body)
    assert response.status_code == 200, response.content
    assert response.json()["cancellation_reason"] == "User requested cancellation"


def test_curl_form_encoded_json_body_is_read(client):
    task = make_task()
    response = cancel(
        client, f"/v1/ocr/tasks/{task.pk}/cancel", '{"reason": "from curl"}', "application/x-www-form-urlencoded"
    )
    assert response.json()["cancellation_reason"] == "from curl"
    other = make_task()
    response = client.generic("POST", f"/v1/ocr/tasks/{other.pk}/cancel", b'{"reason": "no type"}', content_type="")
    assert response.json()["cancellation_reason"] == "no type"


def test_reason_length_type_and_bad_json(client):
    task = make_task()
    assert cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel", {"reason": "x" * 1001}).status_code == 400
    assert cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel", {"reason": 42}).status_code == 400
    assert cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel", "{not json").status_code == 400
    assert cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel", "[1]").status_code == 400
    assert OCRTask.objects.get(pk=task.pk).status == "pending"
    response = cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel", {"reason": "y" * 1000})
    assert response.status_code == 200 and len(response.json()["cancellation_reason"]) == 1000


def test_double_cancel_is_idempotent(client):
    task = make_task()
    first = cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel", {"reason": "first"}).json()
    second = cancel(client, f"/v1/ocr/pdf-tasks/{task.pk}/cancel", {"reason": "second"})
    assert second.status_code == 200
    body = second.json()
    assert body["message"] == "Task was already cancelled"
    assert body["cancelled_at"] == first["cancelled_at"] and body["cancellation_reason"] == "first"
    assert TaskEvent.objects.filter(task=task, type="cancelled").count() == 1
    assert list(
        CancelAudit.objects.filter(task_id=task.pk).order_by("created_at").values_list("outcome", flat=True)
    ) == [
        "cancelled",
        "already_cancelled",
    ]


def finish(task: OCRTask, *, fail: bool = False) -> None:
    services.task_start(task_id=task.pk, total_pages=1)
    factories.record_page(
        task_id=task.pk, page_number=1, text="x", source=PageSource.OCR, processing_time=0.1, success=not fail
    )
    services.task_finish(task_id=task.pk)


@pytest.mark.parametrize("fail,status", [(False, "completed"), (True, "failed")])
def test_finished_tasks_cannot_be_cancelled(client, fail, status):
    task = make_task(pages=1)
    finish(task, fail=fail)
    response = cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel")
    assert response.status_code == 400
    assert response.json() == {"detail": f"Task {task.pk} is already {status}", "status": status}
    task.refresh_from_db()
    assert task.status == status and task.cancelled_at is None
    audit = CancelAudit.objects.get(task_id=task.pk)
    assert not audit.accepted and audit.outcome == f"already_{status}"


def test_cancel_keeps_partial_pages_and_blocks_later_writes(client):
    task = make_task(pages=3)
    services.task_start(task_id=task.pk, total_pages=3)
    factories.record_page(task_id=task.pk, page_number=1, text="one", source=PageSource.OCR, processing_time=0.5)
    response = cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel", {"reason": "enough"})
    assert response.status_code == 200
    # the worker's late writes are refused
    assert not factories.record_page(task_id=task.pk, page_number=2, text="two", source="ocr", processing_time=0.5)
    assert not services.task_finish(task_id=task.pk)
    assert not services.task_fail(task_id=task.pk, error="late")
    body = client.get(f"/v1/ocr/pdf-tasks/{task.pk}").json()
    assert body["status"] == "cancelled" and body["cancellation_reason"] == "enough"
    assert body["progress"]["processed_pages"] == 1
    assert [r["extracted_text"] for r in body["result"]["results"]] == ["one"]
    assert body["result"]["processed_pages"] == 1 and body["result"]["success"] is False
    events = list(TaskEvent.objects.filter(task=task).values_list("seq", "type"))
    assert events == [(1, "status"), (2, "status"), (3, "page_completed"), (4, "cancelled")]
    last = TaskEvent.objects.get(task=task, seq=4).payload
    assert last["cancellation_reason"] == "enough" and last["processed_pages"] == 1 and last["cancelled_at"]
    audit = CancelAudit.objects.get(task_id=task.pk)
    assert audit.accepted and audit.status_before == "processing" and audit.ran_seconds >= 0


def cancel_reading_pages(client, task) -> tuple[dict, list[str]]:
    """Cancel `task`; its answer and the statements of the cancel that read its pages."""
    with CaptureQueriesContext(connection) as queries:
        response = cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel")
    assert response.status_code == 200, response.content
    return response.json(), [q["sql"] for q in queries.captured_queries if OCRPage._meta.db_table in q["sql"]]


def test_a_running_task_cancel_reads_no_page_and_its_stopped_worker_stores_the_partial_result(client):
    """The answer no longer waits for the text of every page done (it grew with them: 8 ms -> 36 ms
    from 0 to 500 pages, PostgreSQL): until the worker has stopped and stored the partial
    result, reads assemble it from the pages, which are final from the cancel on."""
    task = make_task(pages=3)
    services.task_start(task_id=task.pk, total_pages=3)
    for number, text in ((1, "one"), (2, "two")):
        assert factories.record_page(task_id=task.pk, page_number=number, text=text)
    _, page_reads = cancel_reading_pages(client, task)
    assert page_reads == []
    shown = client.get(f"/v1/ocr/tasks/{task.pk}").json()["result"]
    assert [r["extracted_text"] for r in shown["results"]] == ["one", "two"] and shown["success"] is False
    assert OCRTask.objects.get(pk=task.pk).result is None  # the worker's to store
    services.task_work_stopped(task_id=task.pk)
    stored = OCRTask.objects.get(pk=task.pk)
    assert stored.result == shown and stored.work_stopped_at >= stored.cancelled_at
    assert client.get(f"/v1/ocr/tasks/{task.pk}").json()["result"] == shown
    services.task_work_stopped(task_id=task.pk)  # another slice's worker: nothing changes
    assert OCRTask.objects.get(pk=task.pk).work_stopped_at == stored.work_stopped_at


@pytest.mark.skipif(connection.vendor != "postgresql", reason="round trips to a server")
@pytest.mark.parametrize("owned, pages_done", [(False, 1), (True, 0)])
def test_a_running_task_cancel_is_two_statements_on_postgresql(client, owned, pages_done, monkeypatch):
    """Each statement is a round trip the answer waits for (about 1 ms each under load): the
    UPDATE that stops the task (its time included), then its event, feed item and audit. The
    owner cancelling its own task is named in the feed item without reading its row again.
    The node killers are woken after both (the kill's work slowed the second one down). Before
    its first page too, its (empty) result is left to its worker."""
    owner = User.objects.create_user("dora") if owned else None
    if owner:
        client.force_authenticate(owner)
    task = make_task(pages=3, owner=owner)
    services.task_start(task_id=task.pk, total_pages=3)
    if pages_done:
        assert factories.record_page(task_id=task.pk, page_number=1, text="one")
    wakes, wake = [], queue.wake_task_worker
    transaction = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE SAVEPOINT")  # the test's own transaction too

    def statements() -> list[str]:
        return [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(transaction)]

    def woken(task_id, **kind):
        wakes.append((kind, len(statements())))
        wake(task_id, **kind)

    monkeypatch.setattr(queue, "wake_task_worker", woken)
    with CaptureQueriesContext(connection) as queries:
        assert cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel").status_code == 200
    written = statements()
    assert wakes[0] == ({"in_flight": True}, 2), wakes
    assert len(written) == 2, written
    assert written[0].startswith("UPDATE") and "CLOCK_TIMESTAMP()" in written[0]
    assert written[1].startswith("WITH") and written[1].count("INSERT INTO") == 3
    assert CancelAudit.objects.filter(task_id=task.pk, outcome="cancelled").count() == 1
    assert TaskEvent.objects.filter(task_id=task.pk, type="cancelled").count() == 1
    item = OperatorEvent.objects.get(task_id=task.pk).payload
    assert item["owner"] == item["cancelled_by_user"] == ("dora" if owned else None)
    # cancelled again: the UPDATE changes nothing; the refusal's feed item and audit, one statement
    with CaptureQueriesContext(connection) as queries:
        assert cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel").status_code == 200
    inserts = [sql for sql in statements() if "INSERT INTO" in sql]
    assert len(inserts) == 1 and inserts[0].startswith("WITH") and inserts[0].count("INSERT INTO") == 2, inserts
    assert CancelAudit.objects.filter(task_id=task.pk, outcome="already_cancelled").count() == 1
    refused = OperatorEvent.objects.get(task_id=task.pk, type="cancel_refused").payload
    assert refused["cancelled_by_user"] == ("dora" if owned else None) and refused["outcome"] == "already_cancelled"


def test_a_cancel_with_no_worker_to_stop_stores_the_result_itself(client):
    """No worker will stop for a pending task: its cancel stores the result, reading pages only
    when some are recorded (a task re-queued after its worker was lost keeps its pages)."""
    fresh = make_task(pages=2)
    _, page_reads = cancel_reading_pages(client, fresh)
    assert page_reads == []
    assert OCRTask.objects.get(pk=fresh.pk).result["results"] == []
    requeued = make_task(pages=2)
    services.task_start(task_id=requeued.pk, total_pages=2)
    assert factories.record_page(task_id=requeued.pk, page_number=1, text="kept")
    assert services.task_requeue(task_id=requeued.pk, attempt=1)
    _, page_reads = cancel_reading_pages(client, requeued)
    assert len(page_reads) == 1
    stored = OCRTask.objects.get(pk=requeued.pk).result
    assert [r["extracted_text"] for r in stored["results"]] == ["kept"]
    assert client.get(f"/v1/ocr/tasks/{requeued.pk}").json()["result"] == stored


def test_many_tasks_cancelled_at_once(client):
    tasks = [make_task(pages=1) for _ in range(10)]
    for task in tasks:
        assert cancel(client, f"/v1/ocr/tasks/{task.pk}/cancel").status_code == 200
    assert OCRTask.objects.filter(status="cancelled").count() == 10


def test_cancel_rate_limit_is_429_with_retry_after_and_recovers(client, settings):
    settings.OCR_CANCEL_RATE = "3/m"
    tasks = [make_task(pages=1) for _ in range(4)]
    statuses = [cancel(client, f"/v1/ocr/tasks/{t.pk}/cancel").status_code for t in tasks[:3]]
    assert statuses == [200, 200, 200]
    limited = cancel(client, f"/v1/ocr/pdf-tasks/{tasks[3].pk}/cancel")  # shared by all cancel paths
    assert limited.status_code == 429
    assert int(limited["Retry-After"]) >= 1 and "detail" in limited.json()
    assert OCRTask.objects.get(pk=tasks[3].pk).status == "pending"
    # another client (user) has its own budget
    user = User.objects.create_user("carol")
    other = APIClient()
    other.force_authenticate(user)
    assert cancel(other, f"/v1/ocr/tasks/{tasks[3].pk}/cancel").status_code == 200


def test_cancel_rate_limit_recovers_when_the_window_passes(client, settings):
    settings.OCR_CANCEL_RATE = "1/s"
    first, second, third = (make_task(pages=1) for _ in range(3))
    assert cancel(client, f"/v1/ocr/tasks/{first.pk}/cancel").status_code == 200
    limited = cancel(client, f"/v1/ocr/tasks/{second.pk}/cancel")
    assert limited.status_code == 429
    time.sleep(int(limited["Retry-After"]) + 0.1)  # the window passes; nothing is reset by hand
    assert cancel(client, f"/v1/ocr/tasks/{third.pk}/cancel").status_code == 200


def test_ownership(client):
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    staff = User.objects.create_user("staff", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="cancel_any_task"))
    staff_without = User.objects.create_user("staff2", is_staff=True)
    task = make_task(owner=alice)
    for user in (bob, staff_without, None):
        other = APIClient()
        if user:
            other.force_authenticate(user)
        assert cancel(other, f"/v1/ocr/tasks/{task.pk}/cancel").status_code == 404
        assert cancel(other, f"/v1/ocr/tasks/{task.pk}/cancel", "{not json").status_code == 404  # not 400
    assert OCRTask.objects.get(pk=task.pk).status == "pending"  # the cancel's UPDATE sees what they see
    assert not CancelAudit.objects.filter(task_id=task.pk).exists()
    admin_client = APIClient()
    admin_client.force_authenticate(staff)
    assert admin_client.get(f"/v1/ocr/tasks/{task.pk}").status_code == 200
    assert cancel(admin_client, f"/v1/ocr/tasks/{task.pk}/cancel").status_code == 200
    # anonymous tasks: anyone holding the UUID
    anon = make_task()
    bob_client = APIClient()
    bob_client.force_authenticate(bob)
    assert cancel(bob_client, f"/v1/ocr/tasks/{anon.pk}/cancel").status_code == 200
