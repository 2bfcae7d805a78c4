"""The staff operator feed (ws/ocr/events/, GET /v1/ocr/events) through a live daphne and real
workers: cancels and ends of every user's tasks as they happen, staff only, resumable."""

from __future__ import annotations

import threading
import time

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from rest_framework.authtoken.models import Token

from ocr import services
from tests import factories
from tests.support import SSEClient, WebSocketClient, http_request, post_file, post_json, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def token_for(username: str, *, staff: bool) -> str:
    user = User.objects.create_user(username, password="secret-pw", is_staff=staff)
    return Token.objects.create(user=user).key


class Reader:
    """Collects a feed (an SSE or WebSocket message iterator) in a thread."""

    def __init__(self, messages) -> None:
        self.items: list[dict] = []
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(messages,), daemon=True).start()

    def _run(self, messages) -> None:
        try:
            for _, item in messages:
                self.items.append(item)
        except (OSError, AttributeError, ValueError):
            pass  # closed by the test
        finally:
            self.done.set()

    def about(self, task_id) -> list[dict]:
        return [item for item in self.items if item["task_id"] == str(task_id)]


def sse_feed(base_url: str, key: str, **headers) -> tuple[SSEClient, Reader]:
    client = SSEClient(base_url, "/v1/ocr/events", timeout=60, headers={"Authorization": f"Token {key}", **headers})
    return client, Reader(client.events())


def ws_feed(base_url: str, key: str, query: str = "") -> tuple[WebSocketClient, Reader]:
    client = WebSocketClient(base_url, f"/ws/ocr/events/?token={key}{query}", timeout=60)
    return client, Reader(client.messages())


def test_feed_delivers_rest_cancels_and_worker_ends_to_staff_websocket_and_sse(live_daphne, cluster):
    key = token_for("feed-operator", staff=True)
    sse, from_sse = sse_feed(live_daphne, key)
    ws, from_ws = ws_feed(live_daphne, key)
    readers = {"sse": from_sse, "ws": from_ws}

    status, slow = post_file(live_daphne, "/v1/ocr/process-pdf", factories.slow_pdf(3), {"dpi": 300})
    assert status == 202
    wait_for(lambda: http_request(live_daphne, "GET", f"/v1/ocr/tasks/{slow['task_id']}")[1]["status"] == "processing")
    status, _ = post_json(live_daphne, f"/v1/ocr/tasks/{slow['task_id']}/cancel", {"reason": "operator feed test"})
    assert status == 200
    for name, reader in readers.items():
        wait_for(lambda reader=reader: reader.about(slow["task_id"]), timeout=30)
        (item,) = reader.about(slow["task_id"])
        assert item["type"] == "cancelled" and item["status"] == "cancelled", name
        assert item["reason"] == "operator feed test" and item["cancelled_by"] == "user", name
        assert item["task_type"] == "pdf" and item["total_pages"] == 3 and item["owner"] is None, name
        assert item["worker_node"] and item["processed_pages"] < 3, name

    # a task a worker finishes, then a cancel that comes too late: both are told
    status, done = post_file(live_daphne, "/v1/ocr/process-pdf", factories.text_pdf(1))
    wait_for(lambda: all(reader.about(done["task_id"]) for reader in readers.values()), timeout=60)
    assert post_json(live_daphne, f"/v1/ocr/tasks/{done['task_id']}/cancel", {"reason": "too late"})[0] == 400
    wait_for(lambda: all(len(reader.about(done["task_id"])) == 2 for reader in readers.values()), timeout=30)
    for name, reader in readers.items():
        finished, refused = reader.about(done["task_id"])
        assert finished["type"] == "completed" and finished["processed_pages"] == 1, name
        assert refused["type"] == "cancel_refused" and refused["outcome"] == "already_completed", name
        assert refused["reason"] == "too late" and refused["status"] == "completed", name
        ids = [item["id"] for item in reader.items]
        assert ids == sorted(set(ids)), name  # in order, no duplicate
    sse.close()
    ws.close()


def test_feed_refuses_anyone_but_staff(live_daphne):
    """Refused even though OCR_ALLOW_ANONYMOUS is on (the live daphne's default)."""
    user_key = token_for("feed-user", staff=False)
    staff_key = token_for("feed-staff", staff=True)
    assert http_request(live_daphne, "GET", "/v1/ocr/events")[0] == 401
    assert http_request(live_daphne, "GET", "/v1/ocr/events", headers={"Authorization": "Token nope"})[0] == 401
    status, body = http_request(live_daphne, "GET", "/v1/ocr/events", headers={"Authorization": f"Token {user_key}"})
    assert status == 403 and "staff" in body["detail"]
    for path in ("/ws/ocr/events/", f"/ws/ocr/events/?token={user_key}", "/ws/ocr/events/?token=nope"):
        with pytest.raises(RuntimeError, match=" 403 "):
            WebSocketClient(live_daphne, path, timeout=20)
    # staff, but from a page of another site (a visitor's session must not be usable there)
    with pytest.raises(RuntimeError, match=" 403 "):
        WebSocketClient(live_daphne, f"/ws/ocr/events/?token={staff_key}", timeout=20, origin="http://evil.example")
    ws = WebSocketClient(live_daphne, f"/ws/ocr/events/?token={staff_key}", timeout=20)  # and staff may
    ws.close()


def cancel_new_task(reason: str):
    task = factories.submit_task()
    services.task_cancel(task=task, reason=reason)
    return task


def test_feed_resumes_from_its_cursor_without_gap_or_duplicate(live_daphne, no_worker):
    key = token_for("feed-resume", staff=True)
    first = [cancel_new_task(f"first {n}") for n in range(3)]
    sse, reader = sse_feed(live_daphne, key)  # no cursor: the newest items, then live
    wait_for(lambda: all(reader.about(task.pk) for task in first), timeout=30)
    sse.close()
    cursor = reader.about(first[1].pk)[0]["id"]

    later = [cancel_new_task(f"later {n}") for n in range(3)]  # while nobody listens
    wanted = [first[2], *later]
    sse, by_header = sse_feed(live_daphne, key, **{"Last-Event-ID": str(cursor)})
    ws, by_query = ws_feed(live_daphne, key, f"&after={cursor}")
    wait_for(lambda: len(by_header.items) >= 4 and len(by_query.items) >= 4, timeout=30)
    live = cancel_new_task("live")  # and then live, after the replay
    wanted.append(live)
    wait_for(lambda: len(by_header.items) >= 5 and len(by_query.items) >= 5, timeout=30)
    for reader in (by_header, by_query):
        assert [item["task_id"] for item in reader.items] == [str(task.pk) for task in wanted]
        ids = [item["id"] for item in reader.items]
        assert ids == list(range(cursor + 1, cursor + 6))  # nothing skipped, nothing twice
        assert [item["reason"] for item in reader.items] == ["first 2", "later 0", "later 1", "later 2", "live"]
    sse.close()
    ws.close()


class Rollback(Exception):
    pass


def cancel_in_slow_transaction(task, holding: threading.Event, release: threading.Event, commit: bool) -> None:
    """Cancel `task` in a transaction that stays open until `release` (its feed id taken early)."""
    try:
        with transaction.atomic():
            services.task_cancel(task=task, reason="slow transaction")
            holding.set()
            release.wait(60)
            if not commit:
                raise Rollback
    except Rollback:
        pass
    finally:
        connection.close()


@pytest.mark.parametrize("commit", [True, False], ids=["commits-late", "rolls-back"])
def test_feed_never_steps_over_an_id_still_in_flight(live_daphne, no_worker, commit):
    """PostgreSQL hands out ids at insert, so id N+1 can commit before id N: the reader waits
    for N (or, once the item after the hole is OCR_FEED_GAP_SECONDS old, takes it for a rollback)."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's IMMEDIATE transactions commit one at a time, in id order")
    key = token_for("feed-gap", staff=True)
    cancel_new_task("seed")  # a reader's cursor starts from the newest item there is
    sse, reader = sse_feed(live_daphne, key)
    slow, quick = factories.submit_task(), factories.submit_task()
    holding, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=cancel_in_slow_transaction, args=(slow, holding, release, commit))
    holder.start()
    assert holding.wait(30)
    services.task_cancel(task=quick, reason="quick")  # a later id, committed first
    time.sleep(1.5)
    assert not reader.about(quick.pk), "delivered past an id whose transaction is still open"
    released_at = time.monotonic()
    release.set()
    holder.join()
    wait_for(lambda: reader.about(quick.pk), timeout=40)
    if commit:
        assert [item["task_id"] for item in reader.items[-2:]] == [str(slow.pk), str(quick.pk)]
    else:
        assert not reader.about(slow.pk)
        assert time.monotonic() - released_at > 5  # waited for the hole (OCR_FEED_GAP_SECONDS 10)
    sse.close()


async def test_the_feed_lives_through_reads_of_the_database_that_fail(monkeypatch):
    """As a task's stream (tests/test_streams.py): failed reads neither end nor silence it."""
    import asyncio
    import contextlib
    import uuid

    from asgiref.sync import sync_to_async
    from django.db import OperationalError

    from ocr import feed, streams
    from ocr.models import OperatorEvent

    def stored_item() -> int:
        return OperatorEvent.objects.create(type="cancelled", task_id=uuid.uuid4(), payload={"type": "cancelled"}).pk

    first = await sync_to_async(stored_item)()
    failures = [OperationalError("the database system is shutting down")] * 3
    stored = feed._stored_after

    async def stored_after(cursor):
        if failures:
            raise failures.pop()
        return await stored(cursor)

    monkeypatch.setattr(feed, "_stored_after", stored_after)
    monkeypatch.setattr(streams, "DATABASE_RETRY_SECONDS", 0.3)

    async def read() -> list:
        got = []
        async with contextlib.aclosing(feed.follow(first - 1, keepalive=0.1, resync=30)) as items:
            async for item in items:
                got.append(item)
                if item is not None:
                    return got
        return got

    got = await asyncio.wait_for(read(), timeout=10)
    assert not failures and None in got and got[-1]["id"] == first
