"""ocr.streams.Membership on the service's channel layer (Redis pub/sub): a push still arrives
after reads that timed out, as a stream waits between events (keep-alives, resyncs), and a
stream that ends leaves nothing behind in the web process or in Redis; ocr.streams.follow
through reads of the database that fail."""

import asyncio
import contextlib
import uuid

import pytest
import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import OperationalError

from ocr import selectors, streams
from ocr.progress import group_name
from ocr.streams import Membership


async def test_a_push_after_timed_out_reads_arrives_without_a_rejoin():
    group = group_name(uuid.uuid4())
    membership = Membership(group, "test stream")
    assert await membership.join()
    try:
        for _ in range(3):  # quiet: each read times out, as between a stream's events
            assert await membership.receive(0.05) is None
        assert membership.joined
        await get_channel_layer().group_send(group, {"type": "task.event", "event": {"seq": 1}})
        # The pub/sub layer drops a channel whose read is cancelled, and what arrives for it
        # meanwhile: the one read kept across timeouts gets the push.
        message = await membership.receive(5)
        assert message is not None and message["event"] == {"seq": 1}
    finally:
        await membership.leave()
    assert membership.reading is None


async def test_leave_ends_the_read_and_the_subscription():
    group = group_name(uuid.uuid4())
    membership = Membership(group, "test stream")
    assert await membership.join()
    assert await membership.receive(0.05) is None
    reading = membership.reading
    await membership.leave()
    assert reading.cancelled() and membership.reading is None
    await asyncio.sleep(0)  # nothing left pending on the loop for this stream


async def test_a_stream_that_ends_on_a_message_it_read_leaves_nothing_behind():
    """The pub/sub layer forgets a channel only when a read of it is cancelled: a stream that
    ended on its terminal event, read and returned, kept its queue in the web process and its
    subscription in Redis for the life of the process (one per stream ever served)."""
    layer = get_channel_layer()
    group = group_name(uuid.uuid4())
    membership = Membership(group, "test stream")
    assert await membership.join()
    await layer.group_send(group, {"type": "task.event", "event": {"seq": 1, "type": "completed"}})
    assert (await membership.receive(5))["event"]["seq"] == 1
    assert membership.reading is None  # nothing left to cancel
    await membership.leave()
    assert membership.channel not in layer.channels and not layer.groups
    subscribed = redis.Redis.from_url(settings.REDIS_URL).pubsub_channels(f"{membership.channel}*")
    assert subscribed == []


def test_quiet_repeats_lets_one_record_through_per_period_with_the_count_of_the_others():
    import logging
    import time

    from ocr.channel_layer import QuietRepeats

    quiet = QuietRepeats(seconds=0.2)

    def record() -> logging.LogRecord:
        return logging.LogRecord("channels_redis.pubsub", logging.ERROR, __file__, 1, "lost %s", ("redis",), None)

    assert [quiet.filter(record()) for _ in range(4)] == [True, False, False, False]
    time.sleep(0.25)
    after = record()
    assert quiet.filter(after) and after.getMessage().startswith("lost redis (3 more in the last")


def _a_completed_task_with_its_events():
    from ocr.models import OCRTask, TaskEvent

    task = OCRTask.objects.create(task_type="pdf", status="completed", event_seq=2)
    for seq, type in ((1, "status"), (2, "completed")):
        TaskEvent.objects.create(task=task, seq=seq, type=type, payload={"seq": seq, "type": type})
    return task.pk


@pytest.mark.django_db(transaction=True)
async def test_a_stream_lives_through_reads_of_the_database_that_fail(monkeypatch):
    """A read of the stored events that fails (the server restarting) neither ends the stream nor
    silences it: keep-alives go on, and the events come once the database answers again."""
    task_id = await database_sync_to_async(_a_completed_task_with_its_events)()
    failures = [OperationalError("the database system is shutting down")] * 3
    stored = selectors.events_after

    def events_after(**kwargs):
        if failures:
            raise failures.pop()
        return stored(**kwargs)

    monkeypatch.setattr(streams.selectors, "events_after", events_after)
    monkeypatch.setattr(streams, "DATABASE_RETRY_SECONDS", 0.3)

    async def read() -> list:
        got = []
        async with contextlib.aclosing(streams.follow(task_id, keepalive=0.1, resync=30)) as events:
            async for event in events:
                got.append(event)
        return got

    got = await asyncio.wait_for(read(), timeout=10)
    assert not failures and None in got  # kept alive while the reads failed
    assert [event for event in got if event is not None] == [
        {"seq": 1, "type": "status"},
        {"seq": 2, "type": "completed"},
    ]
