"""ocr.streams.Membership on the service's channel layer (Redis pub/sub): a push still arrives
after reads that timed out, as a stream waits between events (keep-alives, resyncs)."""

import asyncio
import uuid

from channels.layers import get_channel_layer

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
