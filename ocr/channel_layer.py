"""channels-redis's pub/sub channel layer (settings.CHANNEL_LAYERS), with three fixes:

- The layer forgets a channel (its queue, and its subscription in Redis) only when a read of it
  is cancelled, and a stream that ended on a message it had read (its terminal event, most often)
  left both for the life of the web process. `delete_channel` forgets one; streams.Membership
  calls it when it leaves.
- `new_channel` records the channel before it subscribes it, and a failed subscribe left the record
  for the process's life: a stream opened while Redis was down leaked one per re-join attempt
  (every OCR_STREAM_RESYNC_SECONDS). Here a channel that could not be subscribed is forgotten.
- The layer's receiving task logs "Unexpected exception in receive task" with a traceback every
  second while Redis is down: `QuietRepeats` lets one through per minute, with the count of the
  others."""

from __future__ import annotations

import logging
import time
import uuid

from channels_redis.pubsub import RedisPubSubChannelLayer


class PubSubChannelLayer(RedisPubSubChannelLayer):
    async def new_channel(self, prefix: str = "specific.") -> str:
        layer = self._get_layer()  # this event loop's layer, as the library's own proxy does
        channel = f"{layer.prefix}{prefix}{uuid.uuid4().hex}"
        try:
            await layer._subscribe_to_channel(channel)
        except BaseException:
            layer.channels.pop(channel, None)
            raise
        return channel

    async def delete_channel(self, channel: str) -> None:
        """Forget a channel from `new_channel` and unsubscribe it (the library's comments name a
        future `delete_channel` for this); a read of it still pending gets no more messages."""
        layer = self._get_layer()
        if layer.channels.pop(channel, None) is not None:
            await layer._get_shard(channel).unsubscribe(channel)


class QuietRepeats(logging.Filter):
    """A logging filter: a record whose message was logged less than `seconds` ago is dropped and
    counted; the next one let through says how many were dropped."""

    def __init__(self, seconds: float = 60.0) -> None:
        super().__init__()
        self.seconds = seconds
        self.last: dict[str, tuple[float, int]] = {}  # message -> (let through at, dropped since)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        now = time.monotonic()
        at, dropped = self.last.get(message, (None, 0))
        if at is not None and now - at < self.seconds:
            self.last[message] = (at, dropped + 1)
            return False
        self.last[message] = (now, 0)
        if dropped:
            record.msg = f"{message} ({dropped} more in the last {now - at:.0f} s)"
            record.args = None
        return True
