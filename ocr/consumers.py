"""WebSocket: a task's events (ocr.streams.follow) as JSON frames and the cancel action; the staff
operator feed (ocr.feed.follow)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from rest_framework.exceptions import Throttled

from . import feed, selectors, services, streams
from .api import throttles
from .api.serializers import cancel_body, cancel_reason
from .exceptions import DomainError
from .models import CancelledBy
from .permissions import is_operator

logger = logging.getLogger(__name__)

# Close code when a stream fails on the server (the database lost, say): the client reconnects
# with ?after=<last seq>. Not 1011: daphne's WebSocket library (autobahn) only sends 1000 or
# 3000-4999 from the server, and raised on 1011, so the socket stayed open and went silent.
STREAM_FAILED = 4500


def _cancel(task_id, user, content: dict, client: str, caller) -> dict:
    """The REST cancel's answer, its rate limit (OCR_CANCEL_RATE, shared with the cancel
    endpoints) included; `caller`: throttles.websocket_caller."""
    throttles.enforce(caller, throttles.CANCEL_SCOPE)
    reason = cancel_reason({"reason": content.get("reason")})
    task = selectors.task_get_for(user=user, task_id=task_id)
    outcome = services.task_cancel(
        task=task, reason=reason, cancelled_by=CancelledBy.WEBSOCKET, user=user, client=client
    )
    return cancel_body(outcome.task, newly_cancelled=outcome.newly_cancelled)


def _after(scope, default: int | None = 0) -> int | None:
    query = parse_qs(scope.get("query_string", b"").decode())
    try:
        return max(0, int(query["after"][0]))
    except (KeyError, ValueError):
        return default


class _FollowingConsumer(AsyncJsonWebsocketConsumer):
    """A socket fed by one follower task. Events come through a follow() that owns its channel
    and outlives a lost layer; the consumer subscribes to no layer (a layer error would end it)."""

    channel_layer_alias = None
    follower: asyncio.Task | None = None

    async def disconnect(self, code: int) -> None:
        if self.follower is not None:
            self.follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.follower


class TaskEventsConsumer(_FollowingConsumer):
    """ws/ocr/tasks/{id}/?after=SEQ: the task's events, then close (1000); the cancel action."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not settings.OCR_ALLOW_ANONYMOUS and not (user and user.is_authenticated):
            await self.close(code=4403)
            return
        try:
            task_id = selectors.parse_task_id(self.scope["url_route"]["kwargs"]["task_id"])
            task = await database_sync_to_async(selectors.task_get_for)(user=user, task_id=task_id)
        except DomainError:
            await self.close(code=4404)
            return
        self.task_id = task.pk
        # held by a cancel until its answer is sent, so the answer precedes the `cancelled` event
        self.send_lock = asyncio.Lock()
        await self.accept()
        self.follower = asyncio.create_task(self.forward(_after(self.scope)))

    async def forward(self, after: int) -> None:
        """Send every event after `after`, then close (1000) after the terminal one."""
        try:
            async with contextlib.aclosing(streams.follow(self.task_id, after)) as events:
                async for event in events:
                    async with self.send_lock:
                        await self.send_json(event)
            await self.close(code=1000)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("task %s: WebSocket stream failed", self.task_id)
            await self.close(code=STREAM_FAILED)

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        try:
            content = json.loads(text_data or (bytes_data or b"").decode())
        except (ValueError, UnicodeDecodeError):
            await self.send_json({"type": "error", "detail": "Message must be JSON"})
            return
        if not isinstance(content, dict) or content.get("action") != "cancel":
            await self.send_json(
                {"type": "error", "detail": 'Unknown message; send {"action": "cancel", "reason": "..."}'}
            )
            return
        client = f"websocket:{(self.scope.get('client') or ['?'])[0]}"
        async with self.send_lock:
            try:
                caller = throttles.websocket_caller(self.scope)
                body = await database_sync_to_async(_cancel)(
                    self.task_id, self.scope.get("user"), content, client, caller
                )
            except DomainError as exc:
                await self.send_json({"type": "cancel_result", "status_code": exc.status_code, **exc.body()})
                return
            except Throttled as exc:
                answer = {
                    "type": "cancel_result",
                    "status_code": 429,
                    "detail": str(exc.detail),
                    "retry_after": exc.wait,
                }
                await self.send_json(answer)
                return
            await self.send_json({"type": "cancel_result", "status_code": 200, **body})


class OperatorFeedConsumer(_FollowingConsumer):
    """ws/ocr/events/?after=ID: every task's terminal event and refused cancel, for staff only
    (others: the handshake is refused, 403). Items after `after` (none: the newest few), then
    live ones, until the client leaves; it sends nothing but errors in answer to messages."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not is_operator(user):
            logger.info("operator feed: WebSocket refused to %s", getattr(user, "username", None) or "anonymous")
            await self.close(code=4403)
            return
        await self.accept()
        self.follower = asyncio.create_task(self.forward(_after(self.scope, default=None)))

    async def forward(self, after: int | None) -> None:
        try:
            async with contextlib.aclosing(feed.follow(after)) as items:
                async for item in items:
                    await self.send_json(item)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("operator feed: WebSocket stream failed")
            await self.close(code=STREAM_FAILED)

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        await self.send_json({"type": "error", "detail": "The operator feed takes no messages"})
