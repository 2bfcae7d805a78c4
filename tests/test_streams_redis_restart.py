"""Open streams survive a Redis restart: a daphne on a Redis of its own, restarted mid-stream.

Redis keeps nothing on disk here, so a restart forgets every group: a stream that only waited
for pushes would go quiet for ever. `ocr.streams.follow` re-joins and reads the stored events.
The broker kept by ocr.queue reconnects too.
"""

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
import uuid

import pytest
from channels.layers import channel_layers, get_channel_layer

from ocr.progress import group_name
from ocr.streams import Membership
from tests import factories
from tests.conftest import ROOT, service_env
from tests.support import SSEClient, WebSocketClient, free_port, port_open, stop_process, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_worker")]


@pytest.fixture
def daphne_on(private_redis, tmp_path):
    port = free_port()
    env = {**service_env(), "REDIS_URL": private_redis.url, "OCR_STREAM_RESYNC_SECONDS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "ocrsite.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=open(tmp_path / "daphne.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for(lambda: port_open(port), timeout=30)
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


@pytest.fixture
def layer_on(private_redis, settings):
    """This process publishes its events through the private Redis too (the service's layer)."""
    layer = settings.CHANNEL_LAYERS["default"]
    hosts = [{"address": private_redis.url, "socket_timeout": None}]
    settings.CHANNEL_LAYERS = {"default": {**layer, "CONFIG": {**layer["CONFIG"], "hosts": hosts}}}
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def collect(stream, into: list, done: threading.Event) -> None:
    try:
        for _, event in stream:
            into.append(event)
    finally:
        done.set()


def test_open_streams_get_every_event_after_a_redis_restart(private_redis, daphne_on, layer_on):
    task = factories.submit_task(streaming=True, pages=4, start=True)
    factories.record_page(task_id=task.pk, page_number=1)
    sse = SSEClient(daphne_on, f"/v1/ocr/stream/{task.pk}", timeout=30)
    ws = WebSocketClient(daphne_on, f"/ws/ocr/tasks/{task.pk}/", timeout=30)
    streams = {"sse": ([], threading.Event()), "ws": ([], threading.Event())}
    for name, source in (("sse", sse.events()), ("ws", ws.messages())):
        threading.Thread(target=collect, args=(source, *streams[name]), daemon=True).start()
    wait_for(lambda: all(len(events) >= 3 for events, _ in streams.values()), timeout=10)

    private_redis.stop()  # every group and pooled connection is gone
    private_redis.start()
    for page in (2, 3, 4):
        time.sleep(0.2)
        factories.record_page(task_id=task.pk, page_number=page)
    from ocr import services

    services.task_finish(task_id=task.pk)
    for name, (events, done) in streams.items():
        assert done.wait(20), f"{name} went quiet after the restart: {[e['seq'] for e in events]}"
        assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6, 7], name
        assert events[-1]["type"] == "completed"
    assert ws.close_code == 1000

    # a new handshake after the restart works (group_add on a fresh connection), and replays
    again = WebSocketClient(daphne_on, f"/ws/ocr/tasks/{task.pk}/?after=5", timeout=30)
    assert [json.dumps(e["seq"]) for _, e in again.messages()] == ["6", "7"]


def test_operator_feed_survives_a_redis_restart(private_redis, daphne_on, layer_on):
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    from ocr import services
    from ocr.models import OperatorEvent

    key = Token.objects.create(user=User.objects.create_user("feed-restart", is_staff=True)).key
    services.task_cancel(task=factories.submit_task(), reason="seed")  # the cursor: ids go on from it
    cursor = OperatorEvent.objects.order_by("-pk").values_list("pk", flat=True).first()
    sse = SSEClient(daphne_on, f"/v1/ocr/events?after={cursor}", timeout=30, headers={"Authorization": f"Token {key}"})
    ws = WebSocketClient(daphne_on, f"/ws/ocr/events/?token={key}&after={cursor}", timeout=30)
    feeds = {"sse": [], "ws": []}
    for name, source in (("sse", sse.events()), ("ws", ws.messages())):
        threading.Thread(target=collect_until_closed, args=(source, feeds[name]), daemon=True).start()
    tasks = [factories.submit_task() for _ in range(3)]
    services.task_cancel(task=tasks[0], reason="before the restart")
    wait_for(lambda: all(len(items) == 1 for items in feeds.values()), timeout=20)

    private_redis.stop()  # the feed group and every pooled connection are gone
    private_redis.start()
    for task in tasks[1:]:
        time.sleep(0.2)
        services.task_cancel(task=task, reason="after the restart")
    for name, items in feeds.items():
        wait_for(lambda items=items: len(items) >= 3, timeout=20)
        assert [item["task_id"] for item in items] == [str(task.pk) for task in tasks], name
        assert [item["id"] for item in items] == list(range(cursor + 1, cursor + 4)), name
    sse.close()
    ws.close()


def collect_until_closed(stream, into: list) -> None:
    try:
        for _, item in stream:
            into.append(item)
    except (OSError, AttributeError, ValueError):
        pass  # closed by the test


def test_jobs_go_through_one_kept_redis_connection_that_survives_a_restart(private_redis, monkeypatch):
    """django-q2 opened a new Redis connection for each job queued (a connect and a handshake per
    submit); ocr.queue keeps one broker per process, whose pool reconnects after a restart."""

    import redis
    from django_q.conf import Conf

    from ocr import queue

    monkeypatch.setattr(Conf, "REDIS", private_redis.url)
    queue.broker.cache_clear()
    try:

        def connections_received() -> int:
            with redis.Redis.from_url(private_redis.url) as client:
                return client.info("stats")["total_connections_received"]

        before = connections_received()
        for _ in range(5):
            queue.enqueue(uuid.uuid4())
        assert queue.queue_depth() == 5
        assert connections_received() == before + 2  # the broker's one, and the count's own

        private_redis.stop()  # every pooled connection is gone with it
        private_redis.start()
        queue.enqueue(uuid.uuid4())
        assert queue.queue_depth() == 1
    finally:
        queue.broker.cache_clear()


async def test_a_stream_opened_while_redis_is_down_leaks_nothing_and_joins_once_it_is_back(private_redis, layer_on):
    """channels-redis's pub/sub layer records a new channel before it subscribes it, and kept the
    record when the subscribe failed: one more per re-join attempt of each stream opened while
    Redis was down (every OCR_STREAM_RESYNC_SECONDS), for the life of the web process."""
    layer = get_channel_layer()
    membership = Membership(group_name(uuid.uuid4()), "test stream")
    private_redis.stop()
    for _ in range(3):
        assert not await membership.join()
    assert layer.channels == {} and layer.groups == {}

    private_redis.start()
    assert await membership.join()
    try:
        await layer.group_send(membership.group, {"type": "task.event", "event": {"seq": 1}})
        message = await membership.receive(5)
        assert message is not None and message["event"] == {"seq": 1}
    finally:
        await membership.leave()
    assert layer.channels == {} and layer.groups == {}


async def test_the_layer_logs_a_lost_redis_once_a_minute_not_every_second(private_redis, layer_on, caplog):
    """channels-redis's receiving task logs a traceback every second while Redis is down (an hour's
    outage: 3600 per web process); ocr.channel_layer.QuietRepeats lets one through a minute."""
    membership = Membership(group_name(uuid.uuid4()), "test stream")
    assert await membership.join()
    private_redis.stop()
    with caplog.at_level(logging.ERROR, logger="channels_redis.pubsub"):
        await asyncio.sleep(3.5)
    private_redis.start()
    await membership.leave()
    lost = [record for record in caplog.records if record.name == "channels_redis.pubsub"]
    assert len(lost) <= 1, [record.getMessage() for record in lost]  # none: one went out < 60 s ago
