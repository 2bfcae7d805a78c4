"""WebSocket: replay stored events after `?after=SEQ`, then follow live ones; cancel action."""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from . import selectors, services
from .exceptions import DomainError, TaskNotFound
from .models import TERMINAL_EVENTS, CancelSource
from .progress import group_name

logger = logging.getLogger(__name__)


def _cancel(task_id: str, user, reason, client: str) -> dict:
    from .views import cancel_response, validate_reason

    reason = validate_reason(reason)
    task = selectors.task_get_for(user=user, task_id=task_id)
    outcome = services.task_cancel(task=task, reason=reason, by=CancelSource.WEBSOCKET, user=user, client=client)
    return cancel_response(outcome.task, newly_cancelled=outcome.newly_cancelled)


class TaskEventsConsumer(AsyncJsonWebsocketConsumer):
    last_seq = 0
    finished = False

    async def connect(self) -> None:
        self.task_id = self.scope["url_route"]["kwargs"]["task_id"]
        user = self.scope.get("user")
        if not settings.OCR_ALLOW_ANONYMOUS and not (user and user.is_authenticated):
            await self.close(code=4403)
            return
        try:
            task = await database_sync_to_async(selectors.task_get_for)(user=user, task_id=self.task_id)
        except TaskNotFound:
            await self.close(code=4404)
            return
        self.task_id = str(task.pk)
        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            self.last_seq = max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            self.last_seq = 0
        self.group = group_name(self.task_id)
        # Join the group before the replay: an event stored meanwhile arrives live, after it.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.catch_up()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def catch_up(self) -> None:
        events = await database_sync_to_async(selectors.events_after)(task_id=self.task_id, seq=self.last_seq)
        for event in events:
            if self.finished:
                return
            await self.deliver(event)

    async def deliver(self, event: dict) -> None:
        if self.finished or event["seq"] <= self.last_seq:
            return  # duplicate of a replayed event
        if event["seq"] > self.last_seq + 1:
            await self.catch_up()  # a live push overtook events we have not sent: read them
            return
        self.last_seq = event["seq"]
        await self.send_json(event)
        if event["type"] in TERMINAL_EVENTS:
            self.finished = True
            await self.close(code=1000)

    async def task_event(self, message: dict) -> None:
        await self.deliver(message["event"])

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
        try:
            body = await database_sync_to_async(_cancel)(
                self.task_id, self.scope.get("user"), content.get("reason"), client
            )
        except DomainError as exc:
            await self.send_json({"type": "cancel_result", "status_code": exc.status_code, **exc.body()})
            return
        await self.send_json({"type": "cancel_result", "status_code": 200, **body})
