"""Webhooks (API.md section 10): the address policy, submit validation, signed deliveries with
retries in seq order, refusals at delivery time, and end to end with real workers.

All webhook traffic goes to a receiver on 127.0.0.1 in this process; its path says how it answers
(`/ok/...` 200, `/flaky/...` 500 twice then 200, `/down/...` always 503, `/slow/...` 200 once
the test sets `receiver.release`)."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks import Webhook, WebhookVerificationError

from ocr import kinds, services, webhook_policy, webhooks
from ocr.models import OCRTask, WebhookDelivery
from ocr.params import TaskParams
from tests import factories
from tests.conftest import WEBHOOK_TEST_PORT, WEBHOOK_TEST_SECRET
from tests.support import tesseract_pids, wait_for

RECEIVER = f"http://127.0.0.1:{WEBHOOK_TEST_PORT}"


class Receiver:
    """Records every POST (path, headers, body, whether the signature verified)."""

    def __init__(self, port: int) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(WEBHOOK_TEST_SECRET).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver.lock:
                    seen = sum(1 for r in receiver.requests if r["path"] == self.path)
                    receiver.requests.append(
                        {"path": self.path, "headers": headers, "body": json.loads(body), "verified": verified}
                    )
                kind = self.path.split("/")[1]
                if kind == "slow":
                    receiver.release.wait(30)
                succeeds = kind in ("ok", "slow") or (kind == "flaky" and seen >= 2)
                code = 200 if succeeds else (503 if kind == "down" else 500)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def webhooks_on(settings):
    settings.OCR_WEBHOOK_ALLOWED_HOSTS = [f"127.0.0.1:{WEBHOOK_TEST_PORT}"]
    settings.OCR_WEBHOOK_SECRET = WEBHOOK_TEST_SECRET
    settings.OCR_WEBHOOK_BACKOFF_SECONDS = 0.2
    return settings


def unique_path(kind: str) -> str:
    return f"/{kind}/{uuid.uuid4().hex}"


def submit(api, path: str, data: bytes, request: dict, name: str = "doc.pdf"):
    body = {"file": SimpleUploadedFile(name, data), "request": json.dumps(request)}
    return api.post(path, body, format="multipart")


# --- The address policy (no connection is made) --------------------------------------------------


@pytest.mark.parametrize(
    "address, word",
    [
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("172.16.0.1", "private"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("fc00::1", "private"),
        ("fe80::1", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("100.64.0.1", "not a public"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_non_public_addresses_are_refused(address, word):
    reason = webhook_policy.address_refusal(address)
    assert reason and word in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:4860:4860::8888", "93.184.216.34"])
def test_public_addresses_pass(address):
    assert webhook_policy.address_refusal(address) is None


def test_allow_list_matches_host_and_port_literally():
    allow = webhook_policy.AllowList.parse("127.0.0.1:8080, Example.com ,[::1]:9000,")
    assert allow.enabled and not allow.any_public
    url = webhook_policy.parse_url
    assert webhook_policy.check_host(url("http://127.0.0.1:8080/hook"), allow)
    assert webhook_policy.check_host(url("https://example.com/x"), allow)  # host alone: any port
    assert webhook_policy.check_host(url("http://example.com:81/x"), allow)
    assert webhook_policy.check_host(url("http://[::1]:9000/"), allow)
    for refused in ("http://127.0.0.1:8081/", "http://localhost:8080/", "http://127.0.0.2:8080/", "http://[::1]/"):
        with pytest.raises(webhook_policy.CallbackRefused, match="not in OCR_WEBHOOK_ALLOWED_HOSTS"):
            webhook_policy.check_host(url(refused), allow)
    with pytest.raises(webhook_policy.CallbackRefused, match="disabled"):
        webhook_policy.check_host(url("http://example.com/"), webhook_policy.AllowList.parse(""))
    for bad in ("ftp://example.com/", "http:///path", "http://user:pw@example.com/", "http://example.com:99999/"):
        with pytest.raises(webhook_policy.CallbackRefused):
            url(bad)


def test_star_needs_every_resolved_address_public():
    star = webhook_policy.AllowList.parse("*")
    target = webhook_policy.parse_url("https://hooks.example.com/in")

    def resolving_to(*addresses):
        return lambda host, port: list(addresses)

    assert webhook_policy.checked_addresses(target, star, resolver=resolving_to("93.184.216.34")) == ["93.184.216.34"]
    for private in ("10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.169.254", "::1", "fc00::1"):
        with pytest.raises(webhook_policy.CallbackRefused, match="list it literally"):
            webhook_policy.checked_addresses(target, star, resolver=resolving_to("93.184.216.34", private))
    literal = webhook_policy.AllowList.parse("hooks.example.com, *")
    assert webhook_policy.checked_addresses(target, literal, resolver=resolving_to("10.0.0.1")) == ["10.0.0.1"]


# --- Submit validation ------------------------------------------------------------------------


@pytest.mark.django_db
def test_callback_url_refused_while_webhooks_are_off(no_worker):
    response = submit(APIClient(), "/v1/ocr/process-pdf", factories.text_pdf(1), {"callback_url": RECEIVER + "/ok/x"})
    assert response.status_code == 400
    assert "callback_url" in response.json()["detail"] and "OCR_WEBHOOK_ALLOWED_HOSTS" in response.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "request_part, message",
    [
        ({"callback_url": f"http://localhost:{WEBHOOK_TEST_PORT}/"}, "not in OCR_WEBHOOK_ALLOWED_HOSTS"),
        ({"callback_url": f"http://127.0.0.2:{WEBHOOK_TEST_PORT}/"}, "not in OCR_WEBHOOK_ALLOWED_HOSTS"),
        ({"callback_url": f"http://127.0.0.1:{WEBHOOK_TEST_PORT + 1}/"}, "not in OCR_WEBHOOK_ALLOWED_HOSTS"),
        ({"callback_url": f"ftp://127.0.0.1:{WEBHOOK_TEST_PORT}/"}, "http"),
        ({"callback_url": 5}, "valid string"),
        ({"callback_url": RECEIVER + "/", "callback_events": ["page"]}, "terminal"),
        ({"callback_url": RECEIVER + "/", "callback_events": ["every"]}, "valid choice"),
    ],
)
def test_forbidden_callbacks_are_400_naming_the_field(webhooks_on, no_worker, request_part, message):
    for path in ("/v1/ocr/process-pdf", "/v1/ocr/process"):
        data = factories.text_pdf(1) if path.endswith("pdf") else factories.text_image()
        response = submit(APIClient(), path, data, request_part)
        assert response.status_code == 400, response.content
        detail = response.json()["detail"]
        assert "request.callback_" in detail and message in detail, detail
    assert not OCRTask.objects.exists()


@pytest.mark.django_db
def test_star_refuses_loopback_and_private_hosts(webhooks_on, no_worker):
    webhooks_on.OCR_WEBHOOK_ALLOWED_HOSTS = ["*"]
    for url in (RECEIVER + "/ok/x", "http://10.0.0.1/hook", "http://[fc00::1]:8080/", "http://169.254.169.254/"):
        response = submit(APIClient(), "/v1/ocr/process-pdf", factories.text_pdf(1), {"callback_url": url})
        assert response.status_code == 400, url
        assert "request.callback_url" in response.json()["detail"] and "address" in response.json()["detail"]


@pytest.mark.django_db
def test_accepted_callback_is_stored_with_its_events(webhooks_on, no_worker):
    request = {"callback_url": RECEIVER + "/ok/x", "callback_events": ["page", "terminal"]}
    response = submit(APIClient(), "/v1/ocr/process-pdf", factories.text_pdf(1), request)
    assert response.status_code == 202, response.content
    params = OCRTask.objects.get(pk=response.json()["task_id"]).parameters
    assert params.callback_url == RECEIVER + "/ok/x" and params.callback_events == ("terminal", "page")
    response = submit(APIClient(), "/v1/ocr/process", factories.text_image(), {"callback_url": RECEIVER + "/ok/y"})
    assert OCRTask.objects.get(pk=response.json()["task_id"]).parameters.callback_events == ("terminal",)


# --- Deliveries in this process (services play the worker) --------------------------------------


def make_task(url: str, events=("terminal",), pages: int = 1) -> OCRTask:
    params = TaskParams.from_json({**factories.PARAMS, "callback_url": url, "callback_events": list(events)})
    kind = kinds.get("pdf")
    task = services.task_submit(
        kind=kind, params=params, filename="in.pdf", data=factories.text_pdf(pages), total_pages=pages
    )
    return services.task_start(task_id=task.pk, total_pages=pages)


def attempts_of(task) -> list[tuple]:
    rows = WebhookDelivery.objects.filter(task=task).order_by("seq", "attempt")
    return [(d.type, d.attempt, d.outcome, d.status_code) for d in rows]


LATER = timezone.now() + timedelta(days=1)  # `now` for deliver_due: every retry is due


@pytest.mark.django_db
def test_retries_until_delivered_with_a_stable_signed_id(webhooks_on, no_worker, receiver):
    path = unique_path("flaky")
    task = make_task(RECEIVER + path)
    services.task_cancel(task=task, reason="stop")
    assert webhooks.deliver_due(str(task.pk)) == 1
    assert attempts_of(task) == [("cancelled", 1, "retrying", 500)]
    assert webhooks.deliver_due(str(task.pk)) == 0  # its retry is not due yet
    first = WebhookDelivery.objects.get(task=task)
    assert first.next_retry_at > first.attempted_at and "HTTP 500" in first.error
    webhooks.deliver_due(str(task.pk), now=LATER)
    webhooks.deliver_due(str(task.pk), now=LATER)
    assert attempts_of(task) == [
        ("cancelled", 1, "retrying", 500),
        ("cancelled", 2, "retrying", 500),
        ("cancelled", 3, "delivered", 200),
    ]
    assert webhooks.deliver_due(str(task.pk), now=LATER) == 0  # delivered once, never again
    got = receiver.at(path)
    assert len(got) == 3 and all(r["verified"] for r in got)
    assert len({r["headers"]["webhook-id"] for r in got}) == 1
    body = got[-1]["body"]
    assert body["type"] == "cancelled" and body["cancellation_reason"] == "stop"
    assert body["task"]["task_id"] == str(task.pk) and body["task"]["status"] == "cancelled"


@pytest.mark.django_db
def test_a_tampered_signature_does_not_verify(webhooks_on, no_worker, receiver):
    from ocr import webhook_http

    headers = webhook_http.signed_headers(WEBHOOK_TEST_SECRET, "msg_1", '{"a":1}')
    assert headers["webhook-signature"].startswith("v1,")
    Webhook(WEBHOOK_TEST_SECRET).verify('{"a":1}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(WEBHOOK_TEST_SECRET).verify('{"a":2}', headers)


@pytest.mark.django_db
def test_gives_up_after_max_attempts_then_the_next_event_goes(webhooks_on, no_worker, receiver):
    webhooks_on.OCR_WEBHOOK_MAX_ATTEMPTS = 2
    path = unique_path("down")
    task = make_task(RECEIVER + path, events=("terminal", "page"), pages=2)
    factories.record_page(task_id=task.pk, page_number=1)
    factories.record_page(task_id=task.pk, page_number=2)
    for _ in range(4):
        webhooks.deliver_due(str(task.pk), now=LATER)
    assert attempts_of(task) == [
        ("page_completed", 1, "retrying", 503),
        ("page_completed", 2, "given_up", 503),
        ("page_completed", 1, "retrying", 503),
        ("page_completed", 2, "given_up", 503),
    ]
    assert [r["body"]["seq"] for r in receiver.at(path)] == sorted(r["body"]["seq"] for r in receiver.at(path))


@pytest.mark.django_db
def test_host_refused_at_delivery_time_is_recorded_not_sent(webhooks_on, no_worker, receiver):
    path = unique_path("ok")
    webhooks_on.OCR_WEBHOOK_ALLOWED_HOSTS = [f"127.0.0.1:{WEBHOOK_TEST_PORT}", f"localhost:{WEBHOOK_TEST_PORT}"]
    task = make_task(f"http://localhost:{WEBHOOK_TEST_PORT}{path}")
    services.task_cancel(task=task, reason="stop")
    # between submit and delivery the host is no longer listed literally: it resolves to loopback
    webhooks_on.OCR_WEBHOOK_ALLOWED_HOSTS = ["*"]
    webhooks.deliver_due(str(task.pk))
    delivery = WebhookDelivery.objects.get(task=task)
    assert delivery.outcome == "given_up" and delivery.status_code is None
    assert "refused" in delivery.error and "loopback" in delivery.error
    assert receiver.at(path) == []


@pytest.mark.django_db
def test_deliveries_endpoint_lists_attempts_with_task_visibility(webhooks_on, no_worker, receiver):
    owner, other = (get_user_model().objects.create_user(name, password="pw") for name in ("owner", "other"))
    path = unique_path("flaky")
    task = make_task(RECEIVER + path)
    OCRTask.objects.filter(pk=task.pk).update(owner=owner)
    services.task_cancel(task=task, reason="stop")
    webhooks.deliver_due(str(task.pk))
    api = APIClient()
    api.force_authenticate(owner)
    body = api.get(f"/v1/ocr/tasks/{task.pk}/deliveries").json()
    assert body["task_id"] == str(task.pk) and body["callback_url"] == RECEIVER + path
    [attempt] = body["deliveries"]
    assert attempt["seq"] and attempt["type"] == "cancelled" and attempt["attempt"] == 1
    assert attempt["status_code"] == 500 and attempt["next_retry_at"] and attempt["duration_ms"] >= 0
    api.force_authenticate(other)
    assert api.get(f"/v1/ocr/tasks/{task.pk}/deliveries").status_code == 404
    assert APIClient().get(f"/v1/ocr/tasks/{uuid.uuid4()}/deliveries").status_code == 404
    assert APIClient().get("/v1/ocr/tasks/nope/deliveries").status_code == 404


# --- End to end with real workers ----------------------------------------------------------------


def deliveries(task_id: str) -> list[WebhookDelivery]:
    return list(WebhookDelivery.objects.filter(task_id=task_id).order_by("seq", "attempt"))


@pytest.mark.django_db(transaction=True)
def test_worker_delivers_terminal_event_after_two_failures(webhooks_on, cluster, receiver):
    path = unique_path("flaky")
    api = APIClient()
    response = submit(api, "/v1/ocr/process", factories.text_image(), {"callback_url": RECEIVER + path}, "a.png")
    assert response.status_code == 202, response.content
    task_id = response.json()["task_id"]
    wait_for(lambda: any(d.outcome == "delivered" for d in deliveries(task_id)), timeout=60, interval=0.1)
    rows = deliveries(task_id)
    assert [(d.attempt, d.outcome, d.status_code) for d in rows] == [
        (1, "retrying", 500),
        (2, "retrying", 500),
        (3, "delivered", 200),
    ]
    got = receiver.at(path)
    assert len(got) == 3 and all(r["verified"] for r in got)
    assert got[-1]["body"]["type"] == "completed" and got[-1]["body"]["task"]["status"] == "completed"
    assert "Hello" in got[-1]["body"]["task"]["result"]["extracted_text"]
    listed = api.get(f"/v1/ocr/tasks/{task_id}/deliveries").json()["deliveries"]
    assert [d["attempt"] for d in listed] == [1, 2, 3] and listed[-1]["delivered_at"]


@pytest.mark.django_db(transaction=True)
def test_page_events_are_delivered_before_the_terminal_one(webhooks_on, cluster, receiver):
    path = unique_path("ok")
    request = {"callback_url": RECEIVER + path, "callback_events": ["terminal", "page"]}
    response = submit(APIClient(), "/v1/ocr/process-pdf", factories.text_pdf(3), request)
    task_id = response.json()["task_id"]
    wait_for(lambda: any(r["body"]["type"] == "completed" for r in receiver.at(path)), timeout=60, interval=0.1)
    types = [r["body"]["type"] for r in receiver.at(path)]
    assert types == ["page_completed"] * 3 + ["completed"]
    seqs = [r["body"]["seq"] for r in receiver.at(path)]
    assert seqs == sorted(seqs) and all(r["body"]["task_id"] == task_id for r in receiver.at(path))
    assert all(d.outcome == "delivered" for d in deliveries(task_id)) and len(deliveries(task_id)) == 4


@pytest.mark.django_db(transaction=True)
def test_cancel_delivers_the_cancelled_event(webhooks_on, cluster, receiver):
    path = unique_path("ok")
    request = {"callback_url": RECEIVER + path, "dpi": 600, "text_layer": "ocr"}
    api = APIClient()
    task_id = submit(api, "/v1/ocr/process-pdf", factories.slow_pdf(3), request).json()["task_id"]
    wait_for(
        lambda: OCRTask.objects.get(pk=task_id).status == "processing" and tesseract_pids(), timeout=60, interval=0.02
    )
    assert api.post(f"/v1/ocr/tasks/{task_id}/cancel", {"reason": "no longer needed"}, format="json").status_code == 200
    wait_for(lambda: receiver.at(path), timeout=30, interval=0.05)
    [delivery] = receiver.at(path)
    assert delivery["verified"] and delivery["body"]["type"] == "cancelled"
    assert delivery["body"]["cancellation_reason"] == "no longer needed"
    assert delivery["body"]["task"]["status"] == "cancelled"


@pytest.mark.django_db(transaction=True)
def test_stuck_receivers_never_hold_back_ocr(webhooks_on, cluster, receiver, settings):
    """More deliveries hanging than there are OCR workers: OCR still runs, and finishes while
    every one of them is still in flight (deliveries run in the sweeper's own threads)."""
    path = unique_path("slow")
    api = APIClient()
    receiver.release.clear()
    try:
        hanging = [
            submit(api, "/v1/ocr/process", factories.text_image(), {"callback_url": RECEIVER + path}, "a.png")
            for _ in range(settings.OCR_WORKERS + 1)
        ]
        assert all(response.status_code == 202 for response in hanging)
        wait_for(lambda: len(receiver.at(path)) >= settings.OCR_WORKERS, timeout=60, interval=0.05)
        task_id = submit(api, "/v1/ocr/process", factories.text_image("Not held back"), {}, "b.png").json()["task_id"]
        wait_for(lambda: OCRTask.objects.get(pk=task_id).status == "completed", timeout=60, interval=0.05)
        hanging_ids = [response.json()["task_id"] for response in hanging]
        assert not WebhookDelivery.objects.filter(task_id__in=hanging_ids).exists()  # none has returned yet
    finally:
        receiver.release.set()
    wait_for(
        lambda: WebhookDelivery.objects.filter(task_id__in=hanging_ids, outcome="delivered").count() == len(hanging),
        timeout=60,
        interval=0.1,
    )
