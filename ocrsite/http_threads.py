"""Threads kept between HTTP requests for their sync code (views, middleware, ORM calls).

Django's ASGI handler gives every request a new thread for its sync code
(`ThreadSensitiveContext`), and Django's database connections belong to a thread: so every
request opened a new database connection (a new PostgreSQL backend, or a new SQLite
connection with its functions and pragmas) and dropped it at the end. Measured with 4 clients
GETting one task through daphne: about 10 ms of daphne CPU per GET, a third of it in
connecting; PostgreSQL saw one new session per request.

`ThreadLeases` lends each HTTP request one of up to `size` single-thread executors for its whole
life (asgiref runs the request's thread-sensitive code there), so the thread and its database
connection (CONN_MAX_AGE, CONN_HEALTH_CHECKS) serve request after request. A lease is exclusive:
a slow view (a bulk cancel, a large upload) delays no other request. When every thread is lent,
or for the streams that stay open for minutes while mostly waiting on Redis (they would hold a
thread doing nothing), a request runs on a thread of its own, whose database connection is
closed when the request ends. (Django alone would leave it open for CONN_MAX_AGE on a thread
that is gone, until the garbage collector finds it: 50 clients through two daphne processes
ran PostgreSQL out of connections, "too many clients already", and a third of the answers were
500s; benchmarks/api_load.py.)
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.db import connections

logger = logging.getLogger(__name__)

# Requests that stay open while they wait: the SSE streams and the `-sync` submits.
LONG_LIVED = re.compile(r"^/v1/ocr/(stream/[^/]+|events|[a-z-]+-sync)/?$")


class ThreadLeases:
    def __init__(self, app, size: int) -> None:
        self.app = app
        self.size = size
        self.created = 0
        self.free: list[ThreadPoolExecutor] = []  # touched only on the event loop's thread

    async def __call__(self, scope, receive, send) -> None:
        executor = self._lease() if scope["type"] == "http" and not LONG_LIVED.match(scope["path"]) else None
        if executor is None:
            return await self._on_a_thread_of_its_own(scope, receive, send)
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.app(scope, receive, send)
        finally:
            self.free.append(executor)

    async def _on_a_thread_of_its_own(self, scope, receive, send) -> None:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-once")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.app(scope, receive, send)
        finally:
            try:
                await asyncio.get_running_loop().run_in_executor(executor, connections.close_all)
            finally:
                executor.shutdown(wait=False)

    def _lease(self) -> ThreadPoolExecutor | None:
        if self.free:
            return self.free.pop()
        if self.created >= self.size:
            return None
        self.created += 1
        logger.debug("http thread %d of %d started", self.created, self.size)
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"http-{self.created}")
