"""LLM refinement (issue 6) against a fake OpenAI-compatible server that streams slowly and
records when its client hung up (tests/llm_server.py): the client and its guard in-process,
then `llm` and `pdf_llm` tasks end to end through real qcluster workers and real tesseract.
The real local model is tests/test_llm_real.py (`make test-llm`)."""

from __future__ import annotations

import base64
import io
import json
import random
import threading
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from ocr import engine, llm, refine
from ocr.models import OCRPage, OCRTask, TaskEvent
from tests import factories, support
from tests.conftest import LLM_TEST_PORT, service_env
from tests.llm_server import MODEL_ID, FakeLLMServer
from tests.support import tesseract_pids, wait_for

PAGE_TEXT = "Page 1 of the sample document.\nThe quick brown fox jumps over the lazy dog."
CANCEL_BUDGET_S = 0.1  # the fake server must see its connection closed this soon after the cancel's 200


@pytest.fixture(scope="module")
def fake_server():
    server = FakeLLMServer(port=LLM_TEST_PORT).start()
    yield server
    server.stop()


@pytest.fixture
def fake(fake_server):
    fake_server.reset()
    return fake_server


def config(fake: FakeLLMServer, **overrides) -> llm.LLMConfig:
    return llm.LLMConfig(base_url=fake.url, retry_backoff=0.01, **overrides)


def refine_in_thread(fake: FakeLLMServer, prompt: str, text: str = PAGE_TEXT):
    """Start refine_page in a thread; returns (scope, outcome dict, thread)."""
    scope, outcome = engine.CancelScope(), {}

    def run():
        try:
            outcome["page"] = refine.refine_page(text, source="ocr", config=config(fake), scope=scope, prompt=prompt)
        except engine.Cancelled:
            outcome["cancelled_at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return scope, outcome, thread


# --- The guard -----------------------------------------------------------------------------------


def test_levenshtein_matches_the_textbook_algorithm():
    rng = random.Random(6)
    for _ in range(500):
        a = "".join(rng.choice("ab c\n") for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice("abd ") for _ in range(rng.randint(0, 40)))
        assert refine.levenshtein(a, b) == support.levenshtein(a, b)
    page = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz  \n") for _ in range(9000))
    assert 3 <= refine.levenshtein(page, page[:4000] + "xyz" + page[4100:]) <= 100  # speed: benchmarks


@pytest.mark.parametrize(
    "answer,finish,reason",
    [
        (PAGE_TEXT.replace("sample", "SAMPLE"), "stop", None),
        ("", "stop", "empty answer"),
        (PAGE_TEXT[:30], "length", "truncated"),
        ("Here is a summary: a fox and a dog.", "stop", "too different"),
        (PAGE_TEXT + "\n" + PAGE_TEXT, "stop", "too different"),
        ("```\n" + PAGE_TEXT + "\n```", "stop", None),
    ],
)
def test_judge_accepts_corrections_and_refuses_the_rest(answer, finish, reason):
    found, _ = refine.judge(PAGE_TEXT, refine.clean_answer(answer), finish, max_change=0.5)
    assert (found is None) if reason is None else (reason in found)


def test_judge_threshold_is_the_change_rate():
    noisy = PAGE_TEXT.replace("o", "0").replace("e", "c")  # about 20% of the characters misread
    reason, change = refine.judge(noisy, PAGE_TEXT, "stop", max_change=0.5)
    assert reason is None and 0.1 < change < 0.3
    reason, _ = refine.judge(noisy, PAGE_TEXT, "stop", max_change=0.1)
    assert "characters changed, limit 10%" in reason


# --- The client ----------------------------------------------------------------------------------


def test_refine_streams_the_answer_and_reports_model_prompt_and_time(fake):
    page = refine.refine_page(PAGE_TEXT, source="ocr", config=config(fake), scope=engine.CancelScope())
    assert page.source == "llm" and page.error is None
    assert page.text == PAGE_TEXT.replace("sample", "SAMPLE")
    assert page.extra["model_used"] == MODEL_ID  # no model configured: the first one the server lists
    assert page.extra["prompt_used"] == refine.DEFAULT_PROMPT and page.extra["llm_processing_time"] > 0
    request = fake.streams[-1].request
    assert request["stream"] is True and request["temperature"] == 0.0 and request["model"] == MODEL_ID
    assert request["messages"] == [
        {"role": "system", "content": refine.DEFAULT_PROMPT},
        {"role": "user", "content": PAGE_TEXT},
    ]
    assert request["max_tokens"] == len(PAGE_TEXT) + 256


def test_cancel_closes_the_stream_at_once(fake):
    scope, outcome, thread = refine_in_thread(fake, "[fake:slow]")
    wait_for(lambda: fake.active() and fake.active()[0].sent, timeout=5, interval=0.005)
    stream = fake.active()[0]
    cancelled = time.monotonic()
    scope.cancel()
    thread.join(5)
    assert "cancelled_at" in outcome and "page" not in outcome
    wait_for(lambda: stream.disconnected_at, timeout=1, interval=0.001)
    raised_ms = (outcome["cancelled_at"] - cancelled) * 1000
    closed_ms = (stream.disconnected_at - cancelled) * 1000
    print(f"cancel: client raised after {raised_ms:.1f} ms, server saw the close after {closed_ms:.1f} ms")
    assert closed_ms < 50 and raised_ms < 50
    assert len(stream.sent) < 10  # stopped mid-answer


def test_cancel_while_the_server_has_not_answered_yet(fake):
    """A long prompt: no response headers yet, the socket is closed all the same."""
    scope, outcome, thread = refine_in_thread(fake, "[fake:stall]")
    wait_for(lambda: fake.active(), timeout=5, interval=0.005)
    time.sleep(0.2)
    stream = fake.active()[0]
    cancelled = time.monotonic()
    scope.cancel()
    thread.join(5)
    assert "cancelled_at" in outcome
    wait_for(lambda: stream.disconnected_at, timeout=2, interval=0.001)  # at once; the latency: benchmarks
    assert stream.disconnected_at >= cancelled


def test_cancel_before_the_request_sends_nothing(fake):
    scope = engine.CancelScope()
    scope.cancel()
    with pytest.raises(engine.Cancelled):
        refine.refine_page(PAGE_TEXT, source="ocr", config=config(fake, model="m"), scope=scope)
    assert fake.streams == []


def test_vision_sends_the_page_image_as_a_png_data_url(fake):
    image = Image.open(io.BytesIO(factories.text_image("A sample page", size=(3000, 800))))
    page = refine.refine_page(
        "A sample page", source="ocr", config=config(fake, vision=True), scope=engine.CancelScope(), image=image
    )
    assert page.source == "llm" and page.text == "A SAMPLE page"
    system, user = fake.streams[-1].request["messages"]
    assert "page image is attached" in system["content"] and page.extra["prompt_used"] == system["content"]
    text_part, image_part = user["content"]
    assert text_part == {"type": "text", "text": "A sample page"}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "PNG" and max(sent.size) == 1600  # scaled down to OCR_LLM vision_max_side


def test_retries_are_bounded_and_failures_fall_back(fake):
    page = refine.refine_page(
        PAGE_TEXT, source="ocr", config=config(fake, model="m"), scope=engine.CancelScope(), prompt="[fake:flaky]"
    )
    assert page.source == "llm" and [s.status for s in fake.streams] == [503, 503, 200]
    fake.reset()
    page = refine.refine_page(
        PAGE_TEXT, source="ocr", config=config(fake, model="m"), scope=engine.CancelScope(), prompt="[fake:error]"
    )
    assert page.source == "ocr" and page.text == PAGE_TEXT and len(fake.streams) == 1  # a 400 is not retried
    assert page.error == "LLM refinement failed, OCR text kept: LLM server answered 400: model not found"
    unreachable = llm.LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, retry_backoff=0.01)
    page = refine.refine_page(PAGE_TEXT, source="text_layer", config=unreachable, scope=engine.CancelScope())
    assert page.source == "text_layer" and page.text == PAGE_TEXT
    assert "unreachable" in page.error and "after 2 attempts" in page.error


def test_a_page_without_text_is_not_sent(fake):
    page = refine.refine_page("  \n", source="ocr", config=config(fake, model="m"), scope=engine.CancelScope())
    assert page.text == "  \n" and page.source == "ocr" and "OCR found no text" in page.error
    assert fake.streams == []


# --- API: configuration, health ------------------------------------------------------------------


def upload(client, path: str, data: bytes, name: str, request: dict | None = None):
    body = {"file": SimpleUploadedFile(name, data)}
    if request is not None:
        body["request"] = json.dumps(request)
    return client.post(path, body, format="multipart")


@pytest.mark.django_db
def test_llm_kinds_need_a_base_url(settings, fake):
    client = APIClient()
    settings.OCR_LLM_BASE_URL = ""
    for path, data, name in [
        ("/v1/ocr/process-with-llm", factories.text_image(), "a.png"),
        ("/v1/ocr/process-pdf-with-llm", factories.text_pdf(1), "a.pdf"),
        ("/v1/ocr/process-pdf-with-llm-stream", factories.text_pdf(1), "a.pdf"),
    ]:
        response = upload(client, path, data, name)
        assert response.status_code == 503 and "set OCR_LLM_BASE_URL" in response.json()["detail"]
    settings.OCR_LLM_BASE_URL = fake.url
    response = upload(
        client, "/v1/ocr/process-with-llm", factories.text_image(), "a.png", {"prompt": "p", "model": "m"}
    )
    assert response.status_code == 202 and response.json()["task_type"] == "llm"
    assert OCRTask.objects.get(pk=response.json()["task_id"]).params["model"] == "m"


@pytest.mark.django_db
def test_health_and_service_info_report_the_llm(settings, fake):
    client = APIClient()
    settings.OCR_LLM_BASE_URL = ""
    assert client.get("/v1/ocr/service-info").json()["llm"]["configured"] is False
    assert client.get("/v1/ocr/health").json()["llm"]["ok"] is True  # not configured is not a fault
    settings.OCR_LLM_BASE_URL = fake.url
    info = client.get("/v1/ocr/service-info").json()
    assert info["llm_configured"] is True and info["llm"]["reachable"] is True
    assert info["llm"]["models"] == [MODEL_ID] and info["llm"]["vision"] is False
    health = client.get("/v1/ocr/health").json()
    assert health["llm"]["ok"] is True and health["llm"]["reachable"] is True
    settings.OCR_LLM_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens there
    health = client.get("/v1/ocr/health")
    assert health.status_code == 200 and health.json()["llm"]["reachable"] is False
    assert health.json()["status"] != "ok" and "unreachable" in health.json()["llm"]["detail"]


# --- Through real workers --------------------------------------------------------------------------


@pytest.fixture
def api(cluster, fake, settings):
    assert service_env()["OCR_LLM_BASE_URL"] == fake.url  # the workers talk to the fake server
    settings.OCR_LLM_BASE_URL = fake.url  # and the API here accepts LLM tasks
    return APIClient()


def submit(api, path: str, data: bytes, request: dict | None = None, name: str = "doc.pdf") -> str:
    response = upload(api, path, data, name, request)
    assert response.status_code == 202, response.content
    return response.json()["task_id"]


def wait_status(task_id: str, statuses, timeout: float = 60) -> OCRTask:
    wait_for(lambda: OCRTask.objects.values_list("status", flat=True).get(pk=task_id) in statuses, timeout=timeout)
    return OCRTask.objects.get(pk=task_id)


def events_of(task_id: str) -> list[dict]:
    return list(TaskEvent.objects.filter(task_id=task_id).order_by("seq").values_list("payload", flat=True))


@pytest.mark.django_db(transaction=True)
def test_llm_image_task_completes_with_refined_text(api, fake):
    task_id = submit(api, "/v1/ocr/process-with-llm", factories.text_image("A sample of scanned text"), name="a.png")
    task = wait_status(task_id, ["completed", "failed"], timeout=30)
    assert task.status == "completed", task.error_message
    result = api.get(f"/v1/ocr/llm-tasks/{task_id}").json()["result"]
    assert result["success"] is True and "SAMPLE of scanned text" in result["extracted_text"]
    assert result["model_used"] == MODEL_ID and result["prompt_used"] == refine.DEFAULT_PROMPT
    assert result["llm_processing_time"] > 0 and result["threshold_used"] == "auto"
    assert OCRPage.objects.get(task_id=task_id).source == "llm"
    (stream,) = fake.streams
    assert "sample of scanned text" in stream.user_text  # tesseract's text went to the model


@pytest.mark.django_db(transaction=True)
def test_pdf_llm_stream_task_refines_every_page_and_events_carry_the_refined_text(api, fake):
    task_id = submit(
        api, "/v1/ocr/process-pdf-with-llm-stream", factories.image_pdf(3, dpi=200), {"dpi": 200, "model": "my-model"}
    )
    task = wait_status(task_id, ["completed", "failed"], timeout=60)
    assert task.status == "completed", task.error_message
    body = api.get(f"/v1/ocr/pdf-llm-tasks/{task_id}").json()
    assert body["streaming"] is True and body["progress"]["processed_pages"] == 3
    for number, page in enumerate(body["result"]["results"], 1):
        assert page["source"] == "llm" and page["success"] and page["error_message"] is None
        assert page["model_used"] == "my-model" and page["llm_processing_time"] > 0
        expected = "\n".join(factories.page_lines(number)).replace("sample", "SAMPLE")
        assert support.cer(expected, page["extracted_text"]) < 0.02
    completed = [e for e in events_of(task_id) if e["type"] == "page_completed"]
    assert len(completed) == 3
    for event in completed:
        assert event["latest_page_result"]["source"] == "llm"
        assert "SAMPLE document" in event["latest_page_result"]["extracted_text"]
    assert {s.request["model"] for s in fake.streams} == {"my-model"}


@pytest.mark.django_db(transaction=True)
def test_text_layer_pages_are_refined_too_and_a_wild_answer_falls_back(api, fake):
    task_id = submit(api, "/v1/ocr/process-pdf-with-llm", factories.text_pdf(3), {"prompt": "[fake:different:Page 2]"})
    task = wait_status(task_id, ["completed", "failed"], timeout=30)
    assert task.status == "completed"
    pages = task.result["results"]
    assert [p["source"] for p in pages] == ["llm", "text_layer", "llm"]
    assert all(p["success"] and p["prompt_used"] == "[fake:different:Page 2]" for p in pages)
    assert "SAMPLE" in pages[0]["extracted_text"] and pages[1]["extracted_text"].startswith("Page 2 of the sample")
    assert pages[1]["error_message"].startswith("LLM answer not used (too different from the OCR text")
    assert task.result["success"] is True and task.processed_pages == 3 and task.failed_pages == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "mode,reason",
    [
        ("empty", "LLM answer not used (empty answer); OCR text kept"),
        ("truncate", "LLM answer not used (truncated: the model hit its max_tokens limit); OCR text kept"),
        ("different", "LLM answer not used (too different from the OCR text"),
    ],
)
def test_unusable_answers_keep_the_ocr_text_with_the_reason(api, fake, mode, reason):
    image = factories.text_image("A sample of scanned text")
    task_id = submit(api, "/v1/ocr/process-with-llm", image, {"prompt": f"[fake:{mode}]"}, name="a.png")
    task = wait_status(task_id, ["completed", "failed"], timeout=30)
    assert task.status == "completed" and task.result["success"] is True
    assert "sample of scanned text" in task.result["extracted_text"]  # tesseract's, not the model's
    assert task.result["source"] == "ocr" and task.result["error_message"].startswith(reason)
    page = OCRPage.objects.get(task_id=task_id)
    assert page.source == "ocr" and page.error.startswith(reason) and page.extra["model_used"] == MODEL_ID


def _cancel_during_generation(api, fake, task_id: str, path: str, expect_message: str, streams: int) -> dict:
    """Cancel while `streams` slow answers are being generated; the fake server must see each closed."""
    wait_for(lambda: len([s for s in fake.active() if s.sent]) >= streams, timeout=60, interval=0.005)
    active = fake.active()
    sent_at = time.monotonic()
    response = api.post(f"{path}{task_id}/cancel", {"reason": "mid generation"}, format="json")
    answered_at = time.monotonic()
    assert response.status_code == 200 and response.json()["message"] == expect_message
    wait_for(lambda: all(s.disconnected_at for s in active), timeout=2, interval=0.001)
    closed_after = [(s.disconnected_at - answered_at) for s in active]
    print(
        f"cancel request took {(answered_at - sent_at) * 1000:.1f} ms; streams closed "
        + ", ".join(f"{c * 1000:.1f}" for c in closed_after)
        + " ms after the 200"
    )
    assert max(closed_after) < CANCEL_BUDGET_S
    task = OCRTask.objects.get(pk=task_id)
    assert task.status == "cancelled" and task.cancellation_reason == "mid generation"
    shown = api.get(f"/v1/ocr/tasks/{task_id}").json()["result"]
    time.sleep(0.5)  # nothing may be written after the cancel, even late
    assert not OCRPage.objects.filter(task_id=task_id, created_at__gt=task.cancelled_at).exists()
    wait_for(lambda: OCRTask.objects.get(pk=task_id).work_stopped_at is not None, timeout=5)
    task = OCRTask.objects.get(pk=task_id)
    assert task.result == shown  # the partial result, stored by the stopped worker as shown before
    assert all(s.ended for s in active) and not fake.active()
    terminal = [e["type"] for e in events_of(task_id) if e["type"] in ("completed", "failed", "cancelled")]
    assert terminal == ["cancelled"]
    return {"task": task, "closed_after": closed_after}


@pytest.mark.django_db(transaction=True)
def test_cancel_during_generation_closes_the_streams_and_keeps_earlier_pages(api, fake):
    task_id = submit(
        api,
        "/v1/ocr/process-pdf-with-llm",
        factories.image_pdf(3, dpi=200),
        {"dpi": 200, "prompt": "[fake:slow:Page 2|Page 3]"},
    )
    wait_for(lambda: OCRPage.objects.filter(task_id=task_id).exists(), timeout=60)
    outcome = _cancel_during_generation(
        api, fake, task_id, "/v1/ocr/pdf-llm-tasks/", "PDF LLM task successfully cancelled", streams=2
    )
    task = outcome["task"]
    kept = task.result["results"]
    assert [p["page_number"] for p in kept] == [1] and kept[0]["source"] == "llm"
    assert "SAMPLE" in kept[0]["extracted_text"] and task.processed_pages == 1
    assert not tesseract_pids()


@pytest.mark.django_db(transaction=True)
def test_cancel_an_llm_image_task_during_generation(api, fake):
    image = factories.text_image("A sample of scanned text")
    task_id = submit(api, "/v1/ocr/process-with-llm", image, {"prompt": "[fake:slow]"}, name="a.png")
    outcome = _cancel_during_generation(
        api, fake, task_id, "/v1/ocr/llm-tasks/", "LLM task successfully cancelled", streams=1
    )
    assert outcome["task"].result is None and not OCRPage.objects.filter(task_id=task_id).exists()


@pytest.mark.django_db(transaction=True)
def test_cancel_during_tesseract_kills_it_for_pdf_llm(api, fake):
    task_id = submit(api, "/v1/ocr/process-pdf-with-llm", factories.slow_pdf(3), {"dpi": 600, "text_layer": "ocr"})
    wait_for(lambda: tesseract_pids() and OCRTask.objects.get(pk=task_id).status == "processing", timeout=60)
    time.sleep(0.2)
    response = api.post(f"/v1/ocr/tasks/{task_id}/cancel")
    assert response.status_code == 200 and response.json()["message"] == "PDF LLM task successfully cancelled"
    wait_for(lambda: not tesseract_pids(), timeout=2, interval=0.005)
    time.sleep(0.3)
    assert fake.streams == []  # the model was never asked for a cancelled page
    assert OCRTask.objects.get(pk=task_id).status == "cancelled"
