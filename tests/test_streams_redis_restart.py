"""Open streams survive a Redis restart: a daphne on a Redis of its own, restarted mid-stream.

Redis keeps nothing on disk here, so a restart forgets every group: a stream that only waited
for pushes would go quiet for ever. `ocr.streams.follow` re-joins and reads the stored events.
"""

import json
import subprocess
import sys
import threading
import time

import pytest
from channels.layers import channel_layers

from tests import factories
from tests.conftest import ROOT, service_env
from tests.support import SSEClient, WebSocketClient, free_port, port_open, stop_process, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_worker")]


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: port_open(self.port), timeout=10)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def private_redis():
    redis = PrivateRedis()
    redis.start()
    yield redis
    redis.stop()


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
    """This process publishes its events through the private Redis too."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": private_redis.url, "socket_timeout": None}], "prefix": "restart"},
        }
    }
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
