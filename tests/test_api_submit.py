"""Submit and read endpoints (API.md sections 1-3), without workers: tasks stay pending."""

import json

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from ocr.models import OCRTask, TaskEvent
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return APIClient()


def upload(client, path, data: bytes, name: str, request=None, **extra):
    body = {"file": (factories_file(data, name))}
    if request is not None:
        body["request"] = request if isinstance(request, str) else json.dumps(request)
    return client.post(path, body, format="multipart", **extra)


def factories_file(data: bytes, name: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data)


@pytest.mark.django_db(transaction=True)
def test_the_202_shows_the_task_as_submitted_even_when_a_worker_starts_it_at_once(client, monkeypatch):
    """The job goes on the queue as the row commits, and a free worker may start the task before
    the answer is built (dispatch takes ~16 ms): the answer still shows it `pending` (API.md)."""
    from django.utils import timezone

    def start_at_once(task_id):
        OCRTask.objects.filter(pk=task_id).update(status="processing", started_at=timezone.now())

    monkeypatch.setattr("ocr.services.enqueue_task", start_at_once)
    response = upload(client, "/v1/ocr/process-pdf", factories.text_pdf(1), "doc.pdf")
    assert response.status_code == 202, response.content
    body = response.json()
    assert OCRTask.objects.get(pk=body["task_id"]).status == "processing"  # the "worker" did start it
    assert body["status"] == "pending" and body["started_at"] is None


def test_pdf_submit_answers_202_with_pending_task(client):
    response = upload(client, "/v1/ocr/process-pdf", factories.text_pdf(2), "doc.pdf", {"threshold": 500})
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "pending" and body["task_type"] == "pdf" and body["streaming"] is False
    assert body["progress"] == {"total_pages": 2, "processed_pages": 0, "failed_pages": 0, "percentage": 0.0}
    for field in ("created_at", "started_at", "completed_at", "cancelled_at", "cancellation_reason", "error_message"):
        assert field in body
    task = OCRTask.objects.get(pk=body["task_id"])
    assert task.params["threshold"] == 500 and task.params["dpi"] == 300 and task.params["contrast_level"] == 1.3
    assert task.input_file.read()[:5] == b"%PDF-"
    assert list(TaskEvent.objects.filter(task=task).values_list("seq", "type")) == [(1, "status")]


def test_image_submit_and_typed_paths(client):
    response = upload(client, "/v1/ocr/process", factories.text_image(), "scan.png")
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    assert client.get(f"/v1/ocr/tasks/{task_id}").status_code == 200
    assert client.get(f"/v1/ocr/pdf-tasks/{task_id}").status_code == 404  # not its kind
    pdf_id = upload(client, "/v1/ocr/process-pdf", factories.text_pdf(1), "a.pdf").json()["task_id"]
    assert client.get(f"/v1/ocr/pdf-tasks/{pdf_id}").json()["task_type"] == "pdf"
    assert client.get(f"/v1/ocr/llm-tasks/{pdf_id}").status_code == 404


def test_streaming_submit_gives_stream_urls(client):
    response = upload(client, "/v1/ocr/process-pdf-stream", factories.text_pdf(1), "a.pdf")
    assert response.status_code == 202
    body = response.json()
    assert body["streaming"] is True
    assert body["stream_url"].endswith(f"/v1/ocr/stream/{body['task_id']}")
    assert body["ws_url"].startswith("ws://") and body["ws_url"].endswith(f"/ws/ocr/tasks/{body['task_id']}/")


def test_llm_kinds_answer_503_until_configured(client):
    response = upload(client, "/v1/ocr/process-with-llm", factories.text_image(), "a.png")
    assert response.status_code == 503
    assert "OCR_LLM_BASE_URL" in response.json()["detail"]
    assert OCRTask.objects.count() == 0


@pytest.mark.parametrize(
    "path,data,name,status,words",
    [
        ("/v1/ocr/process", factories.text_pdf(1), "x.png", 415, "expected an image"),
        ("/v1/ocr/process-pdf", factories.text_image(), "x.pdf", 415, "expected a PDF"),
        ("/v1/ocr/process", b"GIF89a" + b"\0" * 100, "x.gif", 415, "unsupported type"),
        ("/v1/ocr/process", factories.text_image()[:300], "x.png", 400, "decoded"),
        ("/v1/ocr/process-pdf", b"%PDF-1.4\n" + b"\0" * 300, "x.pdf", 400, "could not be opened"),
        ("/v1/ocr/process-pdf", factories.encrypted_pdf(), "x.pdf", 400, "encrypted"),
        ("/v1/ocr/process", b"", "x.png", 400, "empty"),
    ],
)
def test_bad_files_get_a_clear_4xx_and_no_task(client, path, data, name, status, words):
    response = upload(client, path, data, name)
    assert response.status_code == status, response.content
    assert words in response.json()["detail"]
    assert OCRTask.objects.count() == 0


def test_truncated_pdf_is_refused_or_accepted_but_never_500(client):
    data = factories.text_pdf(3)
    response = upload(client, "/v1/ocr/process-pdf", data[: len(data) // 2], "cut.pdf")
    assert response.status_code in (202, 400)


def test_missing_file_and_size_limits(client, settings):
    response = client.post("/v1/ocr/process", {"request": "{}"}, format="multipart")
    assert response.status_code == 400 and "file" in response.json()["detail"]
    settings.OCR_MAX_IMAGE_BYTES = 1000
    response = upload(client, "/v1/ocr/process", factories.text_image(), "big.png")
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    settings.OCR_MAX_PDF_PAGES = 2
    response = upload(client, "/v1/ocr/process-pdf", factories.text_pdf(3), "long.pdf")
    assert response.status_code == 400 and "3 pages" in response.json()["detail"]
    assert OCRTask.objects.count() == 0


def test_decompression_bomb_is_a_400(client, settings):
    from PIL import Image

    data = factories.text_image(size=(2000, 2000))
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000
    try:
        response = upload(client, "/v1/ocr/process", data, "bomb.png")
    finally:
        Image.MAX_IMAGE_PIXELS = old
    assert response.status_code == 400 and "too large" in response.json()["detail"]


@pytest.mark.parametrize(
    "request_part,field",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ({"threshold": 2000}, "request.threshold"),
        ({"threshold": -1}, "request.threshold"),
        ({"threshold": "500"}, "request.threshold"),
        ({"threshold": True}, "request.threshold"),
        ({"contrast_level": 0.05}, "request.contrast_level"),
        ({"contrast_level": 9}, "request.contrast_level"),
        ({"dpi": 100}, "request.dpi"),
        ({"dpi": 700}, "request.dpi"),
        ({"lang": "xxx"}, "not installed"),
        ({"text_layer": "maybe"}, "request.text_layer"),
        ({"page_select": [5]}, "request.page_select"),
        ({"page_select": [0]}, "request.page_select"),
        ({"page_select": "1"}, "request.page_select"),
        ({"deadline_seconds": 0}, "request.deadline_seconds"),
        ({"task_id": "nope"}, "request.task_id"),
        ({"thresold": 500}, "request.thresold"),
        ({"threshold": "adaptive"}, "request.threshold"),
        ({"threshold": 1.5}, "request.threshold"),
        ({"outputs": ["docx"]}, "request.outputs"),
        ({"outputs": []}, "request.outputs"),
        ({"outputs": "pdf"}, "request.outputs"),
        ({"rotate": "left"}, "request.rotate"),
        ({"deskew": "yes"}, "request.deskew"),
        ({"lang": "auto+eng"}, "not installed"),
    ],
)
def test_bad_parameters_get_400_naming_the_field(client, request_part, field):
    response = upload(client, "/v1/ocr/process-pdf", factories.text_pdf(2), "a.pdf", request_part)
    assert response.status_code == 400, response.content
    assert field in response.json()["detail"]
    assert OCRTask.objects.count() == 0


def test_parameters_are_echoed_and_page_select_counts(client):
    response = upload(
        client,
        "/v1/ocr/process-pdf",
        factories.text_pdf(3),
        "a.pdf",
        {"threshold": 0, "contrast_level": 1.0, "dpi": 150, "page_select": [3, 1, 3], "text_layer": "ocr"},
    )
    assert response.status_code == 202
    task = OCRTask.objects.get(pk=response.json()["task_id"])
    assert task.params["page_select"] == [3, 1] and task.total_pages == 2


def test_output_and_page_options_are_stored(client):
    request = {
        "threshold": "auto",
        "outputs": ["pdf", "words", "pdf"],
        "rotate": "auto",
        "deskew": True,
        "lang": "auto",
    }
    response = upload(client, "/v1/ocr/process-pdf", factories.text_pdf(1), "a.pdf", request)
    assert response.status_code == 202, response.content
    params = OCRTask.objects.get(pk=response.json()["task_id"]).parameters
    assert params.outputs == ("pdf", "words") and params.rotate == "auto" and params.deskew is True
    assert params.lang == "auto" and params.threshold == "auto"
    default = upload(client, "/v1/ocr/process", factories.text_image(), "a.png")
    params = OCRTask.objects.get(pk=default.json()["task_id"]).parameters
    assert params.outputs == ("text",) and params.threshold == "auto" and params.rotate == "none"


def test_client_task_id_conflict_is_409(client):
    task_id = "7b0c6a0e-4d57-4b7c-9a55-2f0b5c3f0d11"
    first = upload(client, "/v1/ocr/process-pdf", factories.text_pdf(1), "a.pdf", {"task_id": task_id})
    assert first.status_code == 202 and first.json()["task_id"] == task_id
    second = upload(client, "/v1/ocr/process-pdf", factories.text_pdf(1), "a.pdf", {"task_id": task_id})
    assert second.status_code == 409


def test_unknown_and_malformed_ids_are_404(client):
    assert client.get("/v1/ocr/tasks/7b0c6a0e-4d57-4b7c-9a55-2f0b5c3f0d11").status_code == 404
    assert client.get("/v1/ocr/tasks/not-a-uuid").status_code == 404


def test_list_shows_own_tasks_only_newest_first_with_filters(client):
    first = upload(client, "/v1/ocr/process", factories.text_image(), "a.png").json()["task_id"]
    second = upload(client, "/v1/ocr/process-pdf", factories.text_pdf(1), "b.pdf").json()["task_id"]
    other = APIClient()
    upload(other, "/v1/ocr/process", factories.text_image(), "c.png")
    listing = client.get("/v1/ocr/tasks").json()
    assert [t["task_id"] for t in listing["results"]] == [second, first]
    assert listing["count"] == 2
    assert [t["task_id"] for t in client.get("/v1/ocr/tasks?task_type=ocr").json()["results"]] == [first]
    assert client.get("/v1/ocr/tasks?status=completed").json()["count"] == 0
    assert client.get("/v1/ocr/tasks?status=bogus").status_code == 400
    assert APIClient().get("/v1/ocr/tasks").json()["count"] == 0  # no session, no tasks


def test_users_see_only_their_tasks(client):
    alice = User.objects.create_user("alice", password="x")
    bob = User.objects.create_user("bob", password="x")
    client.force_authenticate(alice)
    task_id = upload(client, "/v1/ocr/process", factories.text_image(), "a.png").json()["task_id"]
    assert OCRTask.objects.get(pk=task_id).owner == alice
    other = APIClient()
    other.force_authenticate(bob)
    assert other.get(f"/v1/ocr/tasks/{task_id}").status_code == 404
    assert APIClient().get(f"/v1/ocr/tasks/{task_id}").status_code == 404
    assert client.get(f"/v1/ocr/tasks/{task_id}").status_code == 200
    assert [t["task_id"] for t in client.get("/v1/ocr/tasks").json()["results"]] == [task_id]


def test_token_authentication(client):
    from rest_framework.authtoken.models import Token

    alice = User.objects.create_user("alice", password="x")
    token = Token.objects.create(user=alice)
    response = upload(
        client, "/v1/ocr/process", factories.text_image(), "a.png", HTTP_AUTHORIZATION=f"Token {token.key}"
    )
    assert response.status_code == 202
    assert OCRTask.objects.get(pk=response.json()["task_id"]).owner == alice


def test_anonymous_refused_when_not_allowed(client, settings):
    settings.OCR_ALLOW_ANONYMOUS = False
    response = upload(client, "/v1/ocr/process", factories.text_image(), "a.png")
    assert response.status_code == 401
    assert client.get("/v1/ocr/tasks").status_code == 401


def test_submit_rate_limit(client, settings):
    settings.RATE_LIMIT_REQUESTS = "3/m"
    statuses = [upload(client, "/v1/ocr/process", factories.text_image(), "a.png").status_code for _ in range(4)]
    assert statuses == [202, 202, 202, 429]


def test_info_endpoints(client):
    info = client.get("/v1/ocr/service-info").json()
    assert "eng" in info["languages"] and info["tesseract_version"].startswith("5")
    params = client.get("/v1/ocr/parameters").json()["parameters"]
    assert params["threshold"] == {"type": "'auto' or integer", "min": 0, "max": 1024, "default": "auto"}
    assert params["outputs"]["default"] == ["text"] and params["rotate"]["choices"] == ["none", "auto"]
    health = client.get("/v1/ocr/health")
    assert health.status_code == 200
    body = health.json()
    assert body["database"]["ok"] and body["redis"]["ok"] and body["tesseract"]["ok"]


def test_oversized_pdf_is_413(client, settings):
    settings.OCR_MAX_PDF_BYTES = 1000
    response = upload(client, "/v1/ocr/process-pdf", factories.text_pdf(3), "big.pdf")
    assert response.status_code == 413 and "limit of 1000 bytes" in response.json()["detail"]
    assert OCRTask.objects.count() == 0


@pytest.mark.parametrize("fmt,name", [("JPEG", "a.jpg"), ("BMP", "a.bmp"), ("TIFF", "a.tiff"), ("WEBP", "a.webp")])
def test_every_image_type_is_accepted(client, no_worker, fmt, name):
    response = upload(client, "/v1/ocr/process", factories.text_image(format=fmt), name)
    assert response.status_code == 202, response.content
    # judged by content, not by the name
    response = upload(client, "/v1/ocr/process", factories.text_image(format=fmt), "no-extension")
    assert response.status_code == 202


def test_max_concurrent_tasks_is_503_with_retry_after(client, settings, no_worker):
    settings.MAX_CONCURRENT_TASKS = 2
    statuses = [upload(client, "/v1/ocr/process", factories.text_image(), "a.png").status_code for _ in range(3)]
    assert statuses == [202, 202, 503]
    busy = upload(client, "/v1/ocr/process", factories.text_image(), "a.png")
    assert busy.status_code == 503 and int(busy["Retry-After"]) >= 1 and "busy" in busy.json()["detail"]
    assert OCRTask.objects.count() == 2


def test_task_list_is_paginated(client, no_worker):
    ids = [upload(client, "/v1/ocr/process", factories.text_image(), "a.png").json()["task_id"] for _ in range(23)]
    first = client.get("/v1/ocr/tasks").json()
    assert first["count"] == 23 and len(first["results"]) == 20 and first["next"]
    second = client.get("/v1/ocr/tasks?page=2").json()
    assert len(second["results"]) == 3 and second["previous"]
    seen = [t["task_id"] for t in first["results"] + second["results"]]
    assert seen == list(reversed(ids))
    assert client.get("/v1/ocr/tasks?page=9").status_code == 404


def test_default_cancel_rate_is_20_per_minute_per_ip_for_anonymous_callers(no_worker):
    tasks = [factories.submit_task() for _ in range(22)]
    here = APIClient(REMOTE_ADDR="198.51.100.7")
    statuses = [here.post(f"/v1/ocr/tasks/{task.pk}/cancel").status_code for task in tasks[:21]]
    assert statuses == [200] * 20 + [429]
    elsewhere = APIClient(REMOTE_ADDR="198.51.100.8")  # another address has its own budget
    assert elsewhere.post(f"/v1/ocr/tasks/{tasks[21].pk}/cancel").status_code == 200
    # X-Forwarded-For is not believed (OCR_TRUSTED_PROXIES=0): no way around the limit
    spoofed = here.post(f"/v1/ocr/tasks/{tasks[20].pk}/cancel", HTTP_X_FORWARDED_FOR="192.0.2.1")
    assert spoofed.status_code == 429
