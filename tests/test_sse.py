"""Server-sent events through a live daphne: replay after Last-Event-ID, live, end on terminal."""

import json
import threading
import time

import pytest

from ocr import services
from ocr.models import PageSource
from tests import factories
from tests.support import connection

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_worker")]


def make_processing_task():
    return factories.submit_task(streaming=True, pages=3, start=True)


def record(task, page):
    factories.record_page(
        task_id=task.pk, page_number=page, text=f"p{page}", source=PageSource.OCR, processing_time=0.1
    )


def read_events(response) -> list[dict]:
    """Read SSE frames until the server ends the stream."""
    events, frame = [], {}
    while True:
        line = response.readline()
        if not line:
            return events
        line = line.decode().rstrip("\n")
        if line.startswith("id: "):
            frame["id"] = int(line[4:])
        elif line.startswith("data: "):
            frame["data"] = json.loads(line[6:])
        elif line == "" and "data" in frame:
            assert frame["id"] == frame["data"]["seq"]
            events.append(frame["data"])
            frame = {}


def test_sse_resumes_after_last_event_id_then_follows_live_until_terminal(live_daphne):
    task = make_processing_task()
    record(task, 1)  # events 1 status(pending), 2 status(processing), 3 page 1
    conn = connection(live_daphne, timeout=20)
    conn.request("GET", f"/v1/ocr/stream/{task.pk}", headers={"Last-Event-ID": "2"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")

    def work():
        time.sleep(0.3)
        record(task, 2)
        time.sleep(0.1)
        services.task_cancel(task=task, reason="sse test")

    worker = threading.Thread(target=work)
    worker.start()
    events = read_events(response)
    worker.join()
    assert [(e["seq"], e["type"]) for e in events] == [(3, "page_completed"), (4, "page_completed"), (5, "cancelled")]
    assert events[-1]["cancellation_reason"] == "sse test" and events[-1]["processed_pages"] == 2


def test_sse_of_a_finished_task_replays_everything_and_ends(live_daphne):
    task = make_processing_task()
    record(task, 1)
    services.task_finish(task_id=task.pk)
    conn = connection(live_daphne, timeout=20)
    conn.request("GET", f"/v1/ocr/stream/{task.pk}")
    events = read_events(conn.getresponse())
    assert [e["seq"] for e in events] == [1, 2, 3, 4] and events[-1]["type"] == "completed"


def test_sse_unknown_task_is_404(live_daphne):
    conn = connection(live_daphne, timeout=20)
    conn.request("GET", "/v1/ocr/stream/7b0c6a0e-4d57-4b7c-9a55-2f0b5c3f0d11")
    assert conn.getresponse().status == 404


@pytest.mark.parametrize(
    ("query", "headers"),
    [("?after=-1", {}), ("?after=x", {}), ("", {"Last-Event-ID": "-1"}), ("?after=-5", {"Last-Event-ID": "2"})],
)
def test_a_bad_resume_position_is_a_400_even_beside_a_good_one(live_daphne, query, headers):
    task = make_processing_task()
    conn = connection(live_daphne, timeout=20)
    conn.request("GET", f"/v1/ocr/stream/{task.pk}{query}", headers=headers)
    response = conn.getresponse()
    assert response.status == 400 and b"whole number" in response.read()


def test_quiet_stream_gets_keep_alives_and_survives_redis_read_timeouts(live_daphne):
    """Quiet for longer than channels-redis's 5 s blocking read (the daphne under test sends a
    keep-alive every 6 s), then a live event still arrives and the stream ends."""
    # a pending task: no worker heartbeat is expected of it, so the reaper leaves it alone
    task = factories.submit_task(streaming=True)
    conn = connection(live_daphne, timeout=30)
    conn.request("GET", f"/v1/ocr/stream/{task.pk}", headers={"Last-Event-ID": "1"})
    response = conn.getresponse()
    keep_alives = 0
    started = time.monotonic()
    while time.monotonic() - started < 6.5 and not keep_alives:
        line = response.readline()
        keep_alives += line.startswith(b": keep-alive")
    services.task_cancel(task=task, reason="after a quiet spell")
    events = read_events(response)
    assert keep_alives == 1
    assert [e["type"] for e in events] == ["cancelled"]
