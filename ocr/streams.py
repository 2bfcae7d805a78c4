"""Following a task: the one loop behind SSE, the WebSocket consumer and the sync wait.

`follow(task_id, after)` yields the task's events with seq > `after`, in order, without gap or
duplicate, and returns after the terminal one. Events are stored (TaskEvent) before they are
pushed through the Channels layer, so the database is the truth and the layer only makes
delivery prompt:

- the group is joined before the stored events are replayed, so nothing falls between;
- a pushed event that is not the next seq (a gap, a duplicate) sends the loop to the database;
- after `resync` seconds without a push, the group is joined again and the database read:
  a Redis restart (which forgets groups), a dead pooled connection or a dropped push costs at
  most that delay, never a silent stream;
- with `keepalive`, `None` is yielded after that many seconds without an event;
- a read of the database that fails (a restart, a failover) is made again every
  DATABASE_RETRY_SECONDS, the stream meanwhile alive (keep-alives, pushed events in order): it
  used to end the stream, and an SSE response whose generator raised stayed open, silent, until
  the client gave up (60 s in `make chaos`'s PostgreSQL restart; a browser's EventSource never).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from . import selectors
from .models import TERMINAL_EVENTS, TERMINAL_STATUSES, OCRTask
from .progress import TaskEventPayload, group_name

logger = logging.getLogger(__name__)

DATABASE_RETRY_SECONDS = 1.0


class Membership:
    """This stream's channel in a group (a task's, or the operator feed's), re-joined after any
    failure of the layer; `label` names the stream in log lines ("task <id>")."""

    def __init__(self, group: str, label: str) -> None:
        self.label = label
        self.layer = get_channel_layer()
        self.group = group
        self.channel: str | None = None
        self.joined = False
        # The layer's read of the next message, kept across `receive` timeouts: the pub/sub
        # layer drops a channel whose read is cancelled (and what arrives for it meanwhile).
        self.reading: asyncio.Future | None = None

    async def join(self) -> bool:
        if self.layer is None:
            return False
        try:
            if self.channel is None:
                self.channel = await self.layer.new_channel()
            await self.layer.group_add(self.group, self.channel)
            if not self.joined:
                logger.debug("%s: stream joined %s", self.label, self.group)
            self.joined = True
        except Exception as exc:
            if self.joined:
                logger.warning("%s: channel layer lost (%s); following from the database", self.label, exc)
            self.joined = False
        return self.joined

    async def receive(self, timeout: float) -> dict | None:
        """The next pushed message, or None after `timeout` s (or at once when not joined)."""
        if not self.joined:
            await asyncio.sleep(timeout)
            return None
        if self.reading is None:
            self.reading = asyncio.ensure_future(self.layer.receive(self.channel))
        done, _ = await asyncio.wait({self.reading}, timeout=timeout)
        if not done:
            return None
        reading, self.reading = self.reading, None
        try:
            return reading.result()
        except Exception as exc:  # Redis went away under a blocking read
            logger.warning("%s: channel layer read failed (%s); following from the database", self.label, exc)
            self.joined = False
            return None

    async def leave(self) -> None:
        """Out of the group, and the channel forgotten (ocr.channel_layer); shielded, so that a
        stream cancelled meanwhile (its client gone) cannot cut the cleanup short."""
        if self.layer is None or self.channel is None:
            return
        await asyncio.shield(self._leave())

    async def _leave(self) -> None:
        try:
            await self.layer.group_discard(self.group, self.channel)
        except Exception:
            logger.debug("%s: group_discard failed", self.label, exc_info=True)
        if self.reading is not None:
            self.reading.cancel()
            await asyncio.gather(self.reading, return_exceptions=True)
            self.reading = None
        delete_channel = getattr(self.layer, "delete_channel", None)  # ocr.channel_layer
        if delete_channel is not None:
            try:
                await delete_channel(self.channel)
            except Exception:
                logger.debug("%s: delete_channel failed", self.label, exc_info=True)


class DatabaseRetry:
    """When a stream reads the database again after a read that failed (a restart, a failover):
    DATABASE_RETRY_SECONDS later, the stream meanwhile alive; said once per outage."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.at = 0.0  # 0: the last read succeeded

    def due(self) -> bool:
        return time.monotonic() >= self.at

    def failed(self, exc: Exception) -> None:
        if not self.at:
            logger.warning("%s: stream cannot read the database (%s); trying again", self.label, exc)
        self.at = time.monotonic() + DATABASE_RETRY_SECONDS

    def succeeded(self) -> None:
        self.at = 0.0


@database_sync_to_async
def _stored_after(task_id: uuid.UUID, seq: int) -> tuple[list[TaskEventPayload], bool]:
    """The stored events after `seq`, and whether the stream is over without them (the task is
    terminal and its last event, the terminal one, is at or before `seq`: already seen)."""
    events = selectors.events_after(task_id=task_id, seq=seq)
    if events:
        return events, False
    row = OCRTask.objects.filter(pk=task_id).values_list("status", "event_seq").first()
    return [], row is None or (row[0] in TERMINAL_STATUSES and row[1] <= seq)


async def follow(
    task_id: uuid.UUID,
    after: int = 0,
    *,
    keepalive: float | None = None,
    resync: float | None = None,
) -> AsyncIterator[TaskEventPayload | None]:
    """Every event of the task after seq `after`, then live ones, until (and with) the terminal
    one; `None` for a keep-alive when `keepalive` seconds passed without an event."""
    resync = resync or settings.OCR_STREAM_RESYNC_SECONDS
    membership = Membership(group_name(task_id), f"task {task_id}")
    await membership.join()
    last_seq = after
    read_database = True
    last_frame = last_sync = time.monotonic()  # keep-alive clock; resync clock
    retry = DatabaseRetry(membership.label)
    try:
        while True:
            if read_database and retry.due():
                try:
                    events, over = await _stored_after(task_id, last_seq)
                except DatabaseError as exc:  # a restart or failover: read again soon, live meanwhile
                    retry.failed(exc)
                    events, over = None, False
                if over:
                    return  # asked for events after the terminal one: nothing will come
                for event in events or ():
                    last_seq = event["seq"]
                    last_frame = time.monotonic()
                    yield event
                    if event["type"] in TERMINAL_EVENTS:
                        return
                if events is not None:
                    read_database = False
                    retry.succeeded()
                    last_sync = time.monotonic()
            wake_at = min(last_sync + resync, retry.at) if read_database else last_sync + resync
            if keepalive is not None:
                wake_at = min(wake_at, last_frame + keepalive)
            message = await membership.receive(max(0.0, wake_at - time.monotonic()))
            now = time.monotonic()
            if message is None:
                if keepalive is not None and now - last_frame >= keepalive:
                    last_frame = now
                    yield None
                if now - last_sync >= resync or not membership.joined:
                    await membership.join()  # idempotent; brings the group back after a Redis restart
                    read_database = True
                continue
            event = message.get("event") or {}
            if event.get("seq") != last_seq + 1:  # a gap: read it; a duplicate: drop it
                read_database = read_database or event.get("seq", 0) > last_seq
                continue
            last_seq = event["seq"]
            last_frame = last_sync = now
            yield event
            if event["type"] in TERMINAL_EVENTS:
                return
    finally:
        await membership.leave()
