"""WebSocket consumer through Channels' communicator and the real Redis channel layer."""

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from ocr import services
from ocr.models import OCRTask, PageSource
from ocr.routing import websocket_urlpatterns
from tests import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_worker")]

ORIGIN = [(b"origin", b"http://testserver")]


def make_task(owner=None):
    return factories.submit_task(owner=owner, pages=3)


def record(task, page):
    factories.record_page(
        task_id=task.pk, page_number=page, text=f"text {page}", source=PageSource.OCR, processing_time=0.1
    )


def connect_to(task_id, after=None, user=None, headers=ORIGIN):
    path = f"/ws/ocr/tasks/{task_id}/" + (f"?after={after}" if after is not None else "")
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path, headers=headers)
    communicator.scope["user"] = user or AnonymousUser()
    return communicator


async def receive_all(communicator, count):
    return [await communicator.receive_json_from(timeout=5) for _ in range(count)]


async def test_replay_then_close_after_terminal():
    task = await sync_to_async(make_task)()
    await sync_to_async(services.task_start)(task_id=task.pk, total_pages=3)
    await sync_to_async(record)(task, 1)
    await sync_to_async(services.task_cancel)(task=task, reason="enough")
    communicator = connect_to(task.pk)
    connected, _ = await communicator.connect()
    assert connected
    events = await receive_all(communicator, 4)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e["type"] for e in events] == ["status", "status", "page_completed", "cancelled"]
    assert events[2]["latest_page_result"]["extracted_text"] == "text 1"
    assert events[3]["cancellation_reason"] == "enough" and events[3]["processed_pages"] == 1
    assert (await communicator.receive_output(timeout=5))["code"] == 1000


async def test_after_skips_seen_events_and_live_events_follow_without_gap():
    task = await sync_to_async(make_task)()
    await sync_to_async(services.task_start)(task_id=task.pk, total_pages=3)
    await sync_to_async(record)(task, 1)
    communicator = connect_to(task.pk, after=2)
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from(timeout=5))["seq"] == 3
    assert await communicator.receive_nothing(timeout=0.2)
    await sync_to_async(record)(task, 2)
    live = await communicator.receive_json_from(timeout=5)
    assert live["seq"] == 4 and live["type"] == "page_completed" and live["processed_pages"] == 2
    # reconnect in the middle: events stored while away come first, no gap, no duplicate
    await communicator.disconnect()
    await sync_to_async(record)(task, 3)
    await sync_to_async(services.task_finish)(task_id=task.pk)
    again = connect_to(task.pk, after=4)
    assert (await again.connect())[0]
    events = await receive_all(again, 2)
    assert [(e["seq"], e["type"]) for e in events] == [(5, "page_completed"), (6, "completed")]
    assert (await again.receive_output(timeout=5))["code"] == 1000


async def test_cancel_over_the_socket():
    task = await sync_to_async(make_task)()
    communicator = connect_to(task.pk)
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from(timeout=5))["type"] == "status"
    await communicator.send_json_to({"action": "cancel", "reason": "from the socket"})
    answer = await communicator.receive_json_from(timeout=5)
    assert answer["type"] == "cancel_result" and answer["status"] == "cancelled"
    assert answer["message"] == "PDF task successfully cancelled"
    assert answer["cancellation_reason"] == "from the socket"
    event = await communicator.receive_json_from(timeout=5)
    assert event["type"] == "cancelled" and event["cancelled_by"] == "websocket"
    assert (await communicator.receive_output(timeout=5))["code"] == 1000


async def test_bad_frames_get_error_frames_not_a_crash():
    task = await sync_to_async(make_task)()
    communicator = connect_to(task.pk)
    assert (await communicator.connect())[0]
    await communicator.receive_json_from(timeout=5)
    await communicator.send_to(text_data="not json")
    assert (await communicator.receive_json_from(timeout=5))["type"] == "error"
    await communicator.send_json_to({"action": "dance"})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "error"
    await communicator.send_json_to({"action": "cancel", "reason": 5})
    answer = await communicator.receive_json_from(timeout=5)
    assert answer["type"] == "cancel_result" and answer["status_code"] == 400
    await communicator.send_json_to({"action": "cancel"})
    answer = await communicator.receive_json_from(timeout=5)
    assert answer["cancellation_reason"] == "User requested cancellation"
    await communicator.disconnect()


async def test_permissions_and_unknown_tasks():
    alice = await sync_to_async(User.objects.create_user)("alice")
    bob = await sync_to_async(User.objects.create_user)("bob")
    task = await sync_to_async(make_task)(owner=alice)
    for user in (bob, None):
        communicator = connect_to(task.pk, user=user)
        connected, code = await communicator.connect()
        assert not connected and code == 4404
    communicator = connect_to(task.pk, user=alice)
    assert (await communicator.connect())[0]
    await communicator.disconnect()
    communicator = connect_to("not-a-uuid")
    assert (await communicator.connect()) == (False, 4404)


async def test_anonymous_refused_when_not_allowed(settings):
    settings.OCR_ALLOW_ANONYMOUS = False
    task = await sync_to_async(make_task)()
    assert (await connect_to(task.pk).connect()) == (False, 4403)


async def test_quiet_socket_survives_the_layer_read_timeout():
    """Quiet for longer than channels-redis's 5 s blocking read: the next event still arrives."""
    task = await sync_to_async(make_task)()
    communicator = connect_to(task.pk)
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from(timeout=5))["seq"] == 1
    assert await communicator.receive_nothing(timeout=6)
    await sync_to_async(services.task_cancel)(task=task, reason="late")
    assert (await communicator.receive_json_from(timeout=5))["type"] == "cancelled"
    assert (await communicator.receive_output(timeout=5))["code"] == 1000


# --- The application's own stack (ocrsite.asgi): origins and token authentication -------------


def through_app(task_id, headers, query=""):
    from ocrsite.asgi import application

    return WebsocketCommunicator(application, f"/ws/ocr/tasks/{task_id}/{query}", headers=headers)


HOST = (b"host", b"ocr.example:8000")


async def test_cross_site_origin_refused_whatever_allowed_hosts(settings):
    settings.ALLOWED_HOSTS = ["*"]
    task = await sync_to_async(make_task)()
    evil = through_app(task.pk, [HOST, (b"origin", b"http://evil.example")])
    assert (await evil.connect())[0] is False
    own = through_app(task.pk, [HOST, (b"origin", b"http://ocr.example:8000")])
    assert (await own.connect())[0]
    await own.disconnect()
    settings.OCR_TRUSTED_ORIGINS = ["https://app.example"]
    trusted = through_app(task.pk, [HOST, (b"origin", b"https://app.example")])
    assert (await trusted.connect())[0]
    await trusted.disconnect()


async def test_token_in_header_or_query_opens_the_owners_task(settings):
    from rest_framework.authtoken.models import Token

    settings.OCR_ALLOW_ANONYMOUS = False
    alice = await sync_to_async(User.objects.create_user)("alice")
    token = await sync_to_async(Token.objects.create)(user=alice)
    task = await sync_to_async(make_task)(owner=alice)
    by_header = through_app(task.pk, [HOST, (b"authorization", f"Token {token.key}".encode())])
    assert (await by_header.connect())[0]
    assert (await by_header.receive_json_from(timeout=5))["seq"] == 1
    await by_header.disconnect()
    by_query = through_app(task.pk, [HOST], query=f"?token={token.key}")
    assert (await by_query.connect())[0]
    await by_query.disconnect()
    # no token, no Origin, anonymous off: refused; a wrong token: refused
    assert (await through_app(task.pk, [HOST]).connect())[0] is False
    assert (await through_app(task.pk, [HOST, (b"authorization", b"Token nope")]).connect())[0] is False
    # a token with a foreign Origin is still a cross-site page
    evil = through_app(task.pk, [HOST, (b"origin", b"http://evil.example")], query=f"?token={token.key}")
    assert (await evil.connect())[0] is False


async def test_scripts_without_origin_allowed_when_anonymous_access_is_on():
    task = await sync_to_async(make_task)()
    script = through_app(task.pk, [HOST])
    assert (await script.connect())[0]
    assert (await script.receive_json_from(timeout=5))["seq"] == 1
    await script.disconnect()


async def test_asking_for_events_after_the_terminal_one_closes_at_once():
    task = await sync_to_async(make_task)()
    await sync_to_async(services.task_cancel)(task=task, reason="done")  # events 1 and 2 (cancelled)
    communicator = connect_to(task.pk, after=2)
    assert (await communicator.connect())[0]
    assert (await communicator.receive_output(timeout=5))["code"] == 1000


async def test_a_stream_that_fails_on_the_server_is_closed_with_a_code_daphne_can_send(monkeypatch):
    """A follower that fails (the database lost, say) closes the socket so that the client
    reconnects with ?after=; with 1011, daphne's autobahn refused to send the close frame and the
    socket stayed open and silent (seen in `make chaos`, PostgreSQL restarted)."""
    from autobahn.websocket.protocol import WebSocketServerProtocol

    from ocr import consumers, streams

    async def failing_follow(task_id, after=0, **kwargs):
        raise RuntimeError("the database is gone")
        yield  # an async generator, as streams.follow

    task = await sync_to_async(make_task)()
    monkeypatch.setattr(streams, "follow", failing_follow)
    communicator = connect_to(task.pk)
    connected, _ = await communicator.connect()
    assert connected
    code = (await communicator.receive_output(timeout=5))["code"]
    assert code == consumers.STREAM_FAILED
    # what daphne does with it: autobahn's sendClose, which validates the code before sending
    sent = {}
    protocol = WebSocketServerProtocol()
    protocol.state = protocol.STATE_OPEN
    protocol.sendCloseFrame = lambda **frame: sent.update(frame)
    protocol.sendClose(code=code)
    assert sent["code"] == code


async def test_the_cancel_action_shares_the_cancel_rate_limit_with_the_endpoints(settings):
    """API.md section 4: OCR_CANCEL_RATE per client, all cancels together; the socket's answer is
    the REST one (429). Before, the socket's cancels were not counted at all."""
    from rest_framework.test import APIClient

    settings.OCR_CANCEL_RATE = "2/m"
    tasks = [await sync_to_async(make_task)() for _ in range(3)]
    rest = APIClient(REMOTE_ADDR="198.51.100.9")
    for task in tasks[:2]:
        response = await sync_to_async(rest.post)(f"/v1/ocr/tasks/{task.pk}/cancel", {}, format="json")
        assert response.status_code == 200
    communicator = connect_to(tasks[2].pk)
    communicator.scope["client"] = ["198.51.100.9", 40000]  # the same caller
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from(timeout=5))["type"] == "status"
    await communicator.send_json_to({"action": "cancel", "reason": "third"})
    answer = await communicator.receive_json_from(timeout=5)
    assert answer["type"] == "cancel_result" and answer["status_code"] == 429
    assert answer["retry_after"] >= 1 and "throttled" in answer["detail"]
    assert (await sync_to_async(lambda: OCRTask.objects.get(pk=tasks[2].pk).status)()) == "pending"
    # another address has its own budget
    other = connect_to(tasks[2].pk)
    other.scope["client"] = ["198.51.100.10", 40000]
    assert (await other.connect())[0]
    await other.receive_json_from(timeout=5)
    await other.send_json_to({"action": "cancel"})
    assert (await other.receive_json_from(timeout=5))["status_code"] == 200
    await communicator.disconnect()
    await other.disconnect()
