"""The asyncio client: `AsyncClient` and the `AsyncTaskHandle` that `AsyncClient.task()` yields.
Same methods and semantics as `ocrsite_client.sync`, awaited."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, cast

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from . import _common as common
from .errors import APIError, StreamError, WaitTimeout, error_from_response
from .types import Batch, BulkCancelResult, CancelResult, Event, Task

logger = logging.getLogger(__name__)


class _NoWebSocket(Exception):
    """The WebSocket handshake was refused: follow the task over SSE instead."""


class AsyncClient:
    """An asyncio client for one ocrsite server (`url`/`token` default to `OCR_URL`/`OCR_TOKEN`).
    Use `async with AsyncClient() as client:` or await `aclose()`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        stream_read_timeout: float = 60.0,
        reconnect_attempts: int = 5,
        idle_check: float = 15.0,
    ) -> None:
        self.base_url, self.token = common.resolve(url, token)
        self.timeout = timeout
        self.stream_read_timeout = stream_read_timeout
        self.reconnect_attempts = reconnect_attempts
        # a stream silent this long asks whether its task is over (its terminal seq <= `after`)
        self.idle_check = idle_check
        self._headers = common.auth_headers(self.token)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content, dict(response.headers))
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._call(method, path, **kwargs)).json()

    async def submit(
        self,
        file: common.FileInput,
        *,
        request: dict[str, Any] | None = None,
        llm: bool = False,
        mode: common.Mode = "async",
        filename: str | None = None,
        idempotency_key: str | None = None,
        priority: str | None = None,
        deadline_seconds: int | None = None,
    ) -> Task:
        name, data = common.read_file(file, filename)
        path = common.submit_path(pdf=common.looks_like_pdf(data), llm=llm, mode=mode)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        fields = common.request_part(request, priority=priority, deadline_seconds=deadline_seconds)
        timeout = None if mode == "sync" else self.timeout
        task = await self._json(
            "POST", path, files={"file": (name, data)}, data=fields, headers=headers, timeout=timeout
        )
        logger.debug("task %s: submitted %s to %s", task.get("task_id"), name, path)
        return cast(Task, task)

    async def get(self, task_id: str) -> Task:
        return cast(Task, await self._json("GET", common.task_path(task_id)))

    async def list_tasks(
        self, *, status: str | None = None, task_type: str | None = None, page: int | None = None
    ) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "task_type": task_type, "page": page}.items() if v}
        return cast(dict[str, Any], await self._json("GET", "/v1/ocr/tasks", params=params))

    async def wait(self, task_id: str, *, timeout: float | None = None, max_interval: float = 1.0) -> Task:
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.1
        while True:
            task = await self.get(task_id)
            if task["status"] in common.TERMINAL:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"task {task_id} still {task['status']} after {timeout} s")
            pause = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause)
            interval = min(interval * 1.5, max_interval)

    @contextlib.asynccontextmanager
    async def task(
        self, file: common.FileInput, *, cancel_reason: str = common.EARLY_EXIT_REASON, **submit_kwargs: Any
    ) -> AsyncIterator[AsyncTaskHandle]:
        """Submit, and cancel the task if the block exits before it was seen terminal."""
        handle = AsyncTaskHandle(self, await self.submit(file, **submit_kwargs))
        try:
            yield handle
        finally:
            if not handle.done:
                await handle.cancel_quietly(cancel_reason)

    async def events(
        self, task_id: str, *, after: int = 0, transport: common.Transport = "auto"
    ) -> AsyncIterator[Event]:
        """Every event after seq `after`, ending with the terminal one (see `Client.events`)."""
        last, failures = after, 0
        use_ws = transport != "sse"
        while True:
            source = self._ws_events(task_id, last) if use_ws else self._sse_events(task_id, last)
            received = 0
            try:
                async with contextlib.aclosing(source):
                    async for event in source:
                        failures, received = 0, received + 1
                        if event["seq"] <= last:
                            continue
                        last = event["seq"]
                        yield event
                        if event["type"] in common.TERMINAL:
                            return
                if not received and await self._over(task_id):
                    return  # nothing after `after`: the caller already had the terminal event
                reason = "stream ended before the terminal event"
            except _NoWebSocket as exc:
                if transport == "websocket":
                    raise StreamError(f"task {task_id}: WebSocket refused: {exc}") from exc
                logger.info("task %s: WebSocket refused (%s), following over SSE", task_id, exc)
                use_ws = False
                continue
            except (ConnectionClosed, OSError, httpx.TransportError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            failures += 1
            if failures > self.reconnect_attempts:
                raise StreamError(f"task {task_id}: events lost after {failures} attempts ({reason})")
            logger.info("task %s: reconnecting after seq %s (%s)", task_id, last, reason)
            await asyncio.sleep(common.reconnect_delay(failures))

    async def _over(self, task_id: str) -> bool:
        return (await self.get(task_id))["status"] in common.TERMINAL

    async def _ws_events(self, task_id: str, after: int) -> AsyncGenerator[Event, None]:
        try:
            socket = await ws_connect(
                common.ws_url(self.base_url, task_id, after),
                origin=self.base_url,  # type: ignore[arg-type]
                additional_headers=self._headers,
                open_timeout=self.timeout,
            )
        except InvalidHandshake as exc:
            raise _NoWebSocket(str(exc)) from exc
        async with socket:
            while True:
                try:
                    message = json.loads(await asyncio.wait_for(socket.recv(), self.idle_check))
                except TimeoutError:
                    if await self._over(task_id):
                        return
                    continue
                except ConnectionClosed as exc:
                    if exc.rcvd is not None and exc.rcvd.code == 1000:
                        return
                    raise
                if common.is_event(message):
                    yield cast(Event, message)

    async def _sse_events(self, task_id: str, after: int) -> AsyncGenerator[Event, None]:
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": str(after)} if after else {})}
        timeout = httpx.Timeout(self.timeout, read=self.stream_read_timeout)
        async with self._http.stream("GET", f"/v1/ocr/stream/{task_id}", headers=headers, timeout=timeout) as response:
            if response.status_code >= 400:
                await response.aread()
                raise error_from_response(response.status_code, response.content, dict(response.headers))
            parser, last_event = common.SSEParser(), time.monotonic()
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    last_event = time.monotonic()
                    yield cast(Event, event)
                elif time.monotonic() - last_event > self.idle_check:
                    if await self._over(task_id):
                        return
                    last_event = time.monotonic()

    async def cancel(self, task_id: str, reason: str | None = None) -> CancelResult:
        path = common.task_path(task_id, "/cancel")
        return cast(CancelResult, await self._json("POST", path, json=common.cancel_body(reason)))

    async def bulk_cancel(
        self,
        task_ids: Sequence[str] | None = None,
        *,
        filter: dict[str, Any] | None = None,
        reason: str | None = None,
        dry_run: bool = False,
    ) -> BulkCancelResult:
        if (task_ids is None) == (filter is None):
            raise ValueError("give either task_ids or filter")
        body: dict[str, Any] = {"task_ids": list(task_ids)} if task_ids is not None else {"filter": filter}
        body.update(common.cancel_body(reason))
        if dry_run:
            body["dry_run"] = True
        return cast(BulkCancelResult, await self._json("POST", "/v1/ocr/tasks/cancel", json=body))

    async def submit_batch(
        self,
        files: Sequence[common.FileInput],
        *,
        request: dict[str, Any] | None = None,
        llm: bool = False,
        idempotency_key: str | None = None,
    ) -> Batch:
        uploads = [("file", common.read_file(file)) for file in files]
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        fields = common.request_part(request, llm=True if llm else None)
        return cast(Batch, await self._json("POST", "/v1/ocr/batches", files=uploads, data=fields, headers=headers))

    async def get_batch(self, batch_id: str) -> Batch:
        return cast(Batch, await self._json("GET", f"/v1/ocr/batches/{batch_id}"))

    async def cancel_batch(self, batch_id: str, reason: str | None = None) -> BulkCancelResult:
        path = f"/v1/ocr/batches/{batch_id}/cancel"
        return cast(BulkCancelResult, await self._json("POST", path, json=common.cancel_body(reason)))

    async def resume(self, task_id: str) -> Task:
        return cast(Task, await self._json("POST", common.task_path(task_id, "/resume")))

    async def download(self, task_id: str, format: str = "text") -> common.Download:
        response = await self._call("GET", common.task_path(task_id, "/download"), params={"format": format})
        return common.Download(
            response.content, response.headers.get("content-type", ""), response.headers.get("ocr-pages")
        )

    async def health(self) -> dict[str, Any]:
        return cast(dict[str, Any], (await self._http.get("/v1/ocr/health")).json())

    async def parameters(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self._json("GET", "/v1/ocr/parameters"))


class AsyncTaskHandle:
    """One submitted task: its last known representation (`data`) and awaitable shortcuts."""

    def __init__(self, client: AsyncClient, data: Task) -> None:
        self.client = client
        self.data = data

    @property
    def id(self) -> str:
        return self.data["task_id"]

    @property
    def status(self) -> str:
        return self.data["status"]

    @property
    def done(self) -> bool:
        return self.status in common.TERMINAL

    async def refresh(self) -> Task:
        self.data = await self.client.get(self.id)
        return self.data

    async def wait(self, timeout: float | None = None) -> Task:
        self.data = await self.client.wait(self.id, timeout=timeout)
        return self.data

    async def events(self, *, after: int = 0, transport: common.Transport = "auto") -> AsyncIterator[Event]:
        async for event in self.client.events(self.id, after=after, transport=transport):
            if event["type"] in common.TERMINAL:
                self.data["status"] = event["status"]
            yield event

    async def cancel(self, reason: str | None = None) -> CancelResult:
        answer = await self.client.cancel(self.id, reason)
        self.data["status"] = "cancelled"
        return answer

    async def cancel_quietly(self, reason: str) -> None:
        try:
            await self.cancel(reason)
            logger.info("task %s: cancelled on leaving its block", self.id)
        except APIError as exc:
            if exc.status_code not in (400, 404):
                raise
            logger.info("task %s: not cancelled on leaving its block: %s", self.id, exc)

    async def download(self, format: str = "text") -> common.Download:
        return await self.client.download(self.id, format)
