"""Idempotent submits (API.md section 8): replay, conflict, key rules, and two concurrent
submits with the same key against a real daphne creating one task."""

import json
import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from ocr.exceptions import TaskConflict
from ocr.idempotency import (
    CLAIM_STALE_SECONDS,
    WAIT_FOR_FIRST_SECONDS,
    idempotency_claim,
    idempotency_release,
    idempotency_store,
)
from ocr.models import Batch, IdempotencyRecord, OCRTask
from tests import factories
from tests.support import connection, multipart, wait_for

DOCUMENT = factories.text_pdf(2)  # pymupdf stamps each PDF it writes: make the bytes once


@pytest.fixture
def client(no_worker):
    return APIClient()


def submit(client, path="/v1/ocr/process-pdf", data=None, request=None, key="key-1", name="doc.pdf"):
    body = {"file": SimpleUploadedFile(name, data if data is not None else DOCUMENT)}
    if request is not None:
        body["request"] = json.dumps(request)
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(path, body, format="multipart", **headers)


@pytest.mark.django_db
def test_same_key_replays_the_first_answer_without_a_new_task(client):
    first = submit(client, request={"dpi": 200})
    assert first.status_code == 202 and not first.has_header("Idempotent-Replayed")
    again = submit(client, request={"dpi": 200})
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert OCRTask.objects.count() == 1
    other = submit(client, request={"dpi": 200}, key="key-2")
    assert other.status_code == 202 and other.json()["task_id"] != first.json()["task_id"]
    assert OCRTask.objects.count() == 2


@pytest.mark.django_db
def test_same_key_with_another_file_or_request_is_409(client):
    assert submit(client, request={"dpi": 200}).status_code == 202
    response = submit(client, request={"dpi": 300})
    assert response.status_code == 409 and "Idempotency-Key" in response.json()["detail"]
    assert submit(client, data=factories.text_pdf(3), request={"dpi": 200}).status_code == 409
    assert submit(client, path="/v1/ocr/process-pdf-stream", request={"dpi": 200}).status_code == 409
    assert OCRTask.objects.count() == 1


@pytest.mark.django_db
def test_keys_are_per_caller_and_expire_after_24_hours(client):
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    client.force_authenticate(alice)
    first = submit(client).json()["task_id"]
    client.force_authenticate(bob)
    assert submit(client).json()["task_id"] != first  # same key, another caller
    client.force_authenticate(alice)
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))
    response = submit(client)
    assert response.status_code == 202 and not response.has_header("Idempotent-Replayed")
    assert response.json()["task_id"] != first and OCRTask.objects.count() == 3


@pytest.mark.django_db
def test_a_refused_submit_does_not_hold_its_key(client):
    assert submit(client, data=b"not a pdf").status_code == 415
    assert submit(client).status_code == 202  # the corrected retry is a first submit


@pytest.mark.django_db
def test_a_claim_whose_call_died_is_taken_over(client):
    """A web process killed between claiming the key and storing its answer leaves a claim
    with no answer: the client's retry gets a task (not 30 s of waiting, then 409 for 24 h)."""
    submit(client)
    IdempotencyRecord.objects.update(
        status_code=None, body=None, created_at=timezone.now() - timedelta(seconds=CLAIM_STALE_SECONDS + 1)
    )
    started = time.monotonic()
    retry = submit(client)
    assert retry.status_code == 202 and not retry.has_header("Idempotent-Replayed")
    assert time.monotonic() - started < WAIT_FOR_FIRST_SECONDS / 2
    again = submit(client)
    assert again["Idempotent-Replayed"] == "true" and again.json()["task_id"] == retry.json()["task_id"]


@pytest.mark.django_db
def test_a_live_claim_is_waited_for_and_keeps_its_answer():
    claim = idempotency_claim(caller="ip:1", key="k", fingerprint="f")
    with pytest.raises(TaskConflict, match="still being handled"):
        idempotency_claim(caller="ip:1", key="k", fingerprint="f", wait_seconds=0.2)
    # Taken over once stale: the late first call's answer no longer lands on the new claim.
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(seconds=CLAIM_STALE_SECONDS + 1))
    second = idempotency_claim(caller="ip:1", key="k", fingerprint="f", wait_seconds=0.2)
    assert second.pk != claim.pk and second.status_code is None
    idempotency_store(second, status_code=202, body={"task_id": "second"})
    idempotency_store(claim, status_code=202, body={"task_id": "first"})
    idempotency_release(claim)
    assert idempotency_claim(caller="ip:1", key="k", fingerprint="f").body == {"task_id": "second"}


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_bad_keys_are_400(client, key):
    response = submit(client, key=key)
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["detail"]
    assert not OCRTask.objects.exists()


@pytest.mark.django_db
def test_batch_submit_is_idempotent(client):
    files = [("a.png", factories.text_image()), ("b.pdf", DOCUMENT)]

    def post():
        body = {"file": [SimpleUploadedFile(name, data) for name, data in files]}
        return client.post("/v1/ocr/batches", body, format="multipart", HTTP_IDEMPOTENCY_KEY="batch-1")

    first, again = post(), post()
    assert first.status_code == again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert Batch.objects.count() == 1 and OCRTask.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_submits_with_one_key_create_one_task(live_daphne, cluster):
    body, content_type = multipart({"file": ("doc.pdf", factories.text_pdf(2)), "request": "{}"})
    answers = []

    def post():
        conn = connection(live_daphne)
        conn.request(
            "POST", "/v1/ocr/process-pdf", body=body, headers={"Content-Type": content_type, "Idempotency-Key": "race"}
        )
        response = conn.getresponse()
        answers.append((response.status, response.getheader("Idempotent-Replayed"), json.loads(response.read())))
        conn.close()

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(status for status, _, _ in answers) == [202, 202]
    assert sorted(str(replayed) for _, replayed, _ in answers) == ["None", "true"]
    assert answers[0][2]["task_id"] == answers[1][2]["task_id"]
    assert OCRTask.objects.count() == 1
    # the test cluster runs the task: let it end before the tables are emptied (on PostgreSQL
    # a worker mid-transaction and the TRUNCATE of the teardown deadlocked once)
    wait_for(lambda: OCRTask.objects.get().status in ("completed", "failed", "cancelled"), timeout=60)


@pytest.mark.django_db(transaction=True)
def test_sync_submit_replays_the_finished_task(live_daphne, cluster):
    body, content_type = multipart({"file": ("doc.pdf", factories.text_pdf(1))})
    answers = []
    for _ in range(2):
        conn = connection(live_daphne)
        headers = {"Content-Type": content_type, "Idempotency-Key": "sync-1"}
        conn.request("POST", "/v1/ocr/process-pdf-sync", body=body, headers=headers)
        response = conn.getresponse()
        answers.append((response.status, response.getheader("Idempotent-Replayed"), json.loads(response.read())))
        conn.close()
    assert [a[0] for a in answers] == [200, 200] and [a[1] for a in answers] == [None, "true"]
    assert answers[0][2] == answers[1][2] and answers[0][2]["status"] == "completed"
    assert OCRTask.objects.count() == 1
