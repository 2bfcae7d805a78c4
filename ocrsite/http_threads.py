"""Threads kept between HTTP requests for their sync code (views, middleware, ORM calls).

Django's ASGI handler gives every request a new thread for its sync code
(`ThreadSensitiveContext`), and Django's database connections belong to a thread: so every
request opened a new database connection (a new PostgreSQL backend, or a new SQLite
connection with its functions and pragmas) and dropped it at the end. Measured with 4 clients
GETting one task through daphne: about 10 ms of daphne CPU per GET, a third of it in
connecting; PostgreSQL saw one new session per request.

`ThreadLeases` lends each HTTP request one of up to `size` single-thread executors for its whole
life (asgiref runs the request's thread-sensitive code there), so the thread and its database
connection (CONN_MAX_AGE, CONN_HEALTH_CHECKS) serve request after request. A lease is exclusive.
When every thread is lent, a request waits for the next one given back: so a web process never
holds more than `size` connections for its requests. Two lanes: the QUICK requests (a task's
GET, a cancel, the health probe) are served first, and the others (submits, downloads, bulk
cancels) hold at most `others_limit` threads, the rest being kept for the quick ones; an other
request that has waited OTHERS_WAIT_MAX goes first, so that neither lane starves. (With one
lane, ten PDF downloads at once made a task's GET wait 0.5-1.2 s, and under 50 clients a cancel
waited for the submits queued before it.) (Requests beyond the threads used to run on a thread
of their own, each opening a connection: with 50 clients on 2 cores, api_load.py, that cost 6.0
ms of service CPU per GET against 3.6 ms now (261 against 444 GETs/s), and on PostgreSQL it ran
the server out of connections, "too many clients already", because Django leaves a persistent
connection open on a thread that is gone until the garbage collector finds it: a third of the
answers were 500s.)

The streams, which stay open for minutes while mostly waiting on Redis (they would hold a
kept thread doing nothing), run on a thread of their own that closes its database connection
after each piece of sync code (a stream reads the database in short bursts: a replay, a gap):
so open streams hold no connection (each held one for its whole life: a hundred SSE clients
would have taken PostgreSQL's hundred). With `size` 0, every request runs on a thread of its
own, its connection closed when the request ends.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import connections
from django.http import FileResponse
from django.http.response import HttpResponseBase
from django.urls import set_script_prefix

logger = logging.getLogger(__name__)

# Requests that stay open while they wait: the SSE streams and the `-sync` submits.
LONG_LIVED = re.compile(r"^/v1/ocr/(stream/[^/]+|events|[a-z-]+-sync)/?$")


# Requests that never wait behind slower ones for a thread: a task's GET, a cancel (REST, stream,
# admin), the health probe.
_ID = r"[0-9a-fA-F-]{32,36}"
QUICK = re.compile(
    rf"^/(v1/ocr/([a-z-]*tasks/{_ID}(/cancel)?|stream/{_ID}/cancel|health)|admin/ocr/ocrtask/[^/]+/cancel)/?$"
)


# A request of the other lane waiting this long goes before the QUICK ones.
OTHERS_WAIT_MAX = 1.0


class ThreadLeases:
    def __init__(self, app, size: int, long_lived_app=None) -> None:
        self.app = app
        self.long_lived_app = long_lived_app or app
        self.size = size
        self.created = 0
        self.free: list[ThreadPoolExecutor] = []  # touched only on the event loop's thread
        # Other requests (submits, downloads, bulk cancels, pages) hold at most this many leases:
        # the rest are kept for the QUICK ones, which are also served first.
        self.others_limit = size - max(1, size // 4) if size > 1 else size
        self.others_held = 0
        # (turn, since) of the requests waiting, in turn: QUICK ones, others
        self.waiting: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self.waiting_others: collections.deque[tuple[asyncio.Future, float]] = collections.deque()

    async def __call__(self, scope, receive, send) -> None:
        long_lived = scope["type"] == "http" and bool(LONG_LIVED.match(scope["path"]))
        if scope["type"] != "http" or long_lived or not self.size:
            return await self._on_a_thread_of_its_own(scope, receive, send, closing_each_call=long_lived)
        quick = bool(QUICK.match(scope["path"]))
        executor = await self._next_free(quick)
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.app(scope, receive, send)
        finally:
            self._give_back(executor, quick)

    async def _next_free(self, quick: bool = True) -> ThreadPoolExecutor:
        executor = self._lease(quick)
        if executor is not None:
            return executor
        turn = asyncio.get_running_loop().create_future()
        entry = (turn, time.monotonic())
        queue = self.waiting if quick else self.waiting_others
        queue.append(entry)
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._give_back(turn.result(), quick)  # handed over as the request was dropped
            else:
                queue.remove(entry)
            raise

    def _give_back(self, executor: ThreadPoolExecutor, quick: bool = True) -> None:
        """To a waiting QUICK request first, unless another has waited OTHERS_WAIT_MAX seconds:
        quick requests come first, and the others cannot starve."""
        if not quick:
            self.others_held -= 1
        if self._others_overdue() and self._to_other(executor):
            return
        if _hand_over(self.waiting, executor) or self._to_other(executor):
            return
        self.free.append(executor)

    def _others_overdue(self) -> bool:
        return bool(self.waiting_others) and time.monotonic() - self.waiting_others[0][1] > OTHERS_WAIT_MAX

    def _to_other(self, executor: ThreadPoolExecutor) -> bool:
        if self.others_held >= self.others_limit or not _hand_over(self.waiting_others, executor):
            return False
        self.others_held += 1
        return True

    async def _on_a_thread_of_its_own(self, scope, receive, send, *, closing_each_call: bool) -> None:
        if closing_each_call:
            executor = _ClosingExecutor(max_workers=1, thread_name_prefix="http-stream")
        else:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-once")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await (self.long_lived_app if closing_each_call else self.app)(scope, receive, send)
        finally:
            try:
                await asyncio.get_running_loop().run_in_executor(executor, connections.close_all)
            finally:
                executor.shutdown(wait=False)

    def _lease(self, quick: bool = True) -> ThreadPoolExecutor | None:
        if not quick and self.others_held >= self.others_limit:
            return None
        if self.free:
            executor = self.free.pop()
        elif self.created < self.size:
            self.created += 1
            logger.debug("http thread %d of %d started", self.created, self.size)
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"http-{self.created}")
        else:
            return None
        if not quick:
            self.others_held += 1
        return executor


def _hand_over(waiting: collections.deque[tuple[asyncio.Future, float]], executor: ThreadPoolExecutor) -> bool:
    """Give `executor` to the first request still waiting in `waiting`; False if none is."""
    while waiting:
        turn, _ = waiting.popleft()
        if not turn.done():
            turn.set_result(executor)
            return True
    return False


class SyncViewsHandler(ASGIHandler):
    """Django's ASGI handler with each request's sync work done in one call on the request's
    thread: the `request_started` signal, the middleware chain and the view (sync: WhiteNoise has
    no async side) and, for an answer held in memory (all but downloads), its close (the
    `request_finished` signal) before it is sent. Django's own handler hops from the event loop
    to the thread for each of those, and for its middleware chain under ASGI back to the loop and
    again to the thread for the view: each hop wakes the thread and then the loop, both fighting
    for the GIL. Measured with 4 clients GETting a task through one daphne: 9.4 ms of daphne CPU
    per GET with all the hops, 7.6 ms with one for the chain and the view (median of 10 rounds).
    With the signals and the close in that one hop as well (and no disconnect watcher), 50
    clients GETting tasks through 2 daphne processes, alternating with the code before:
    benchmarks/api_load.py, 2 runs each, p99 300-309 ms against 371-384, service CPU per GET
    3.1-3.7 ms against 3.7-4.2; its GET phase alone, 5 runs each, p99 242-284 ms against 322-416.

    Unlike Django's handler, this one does not watch for the client leaving during the view: a
    sync view cannot be stopped anyway, and daphne drops an answer to a closed connection. Async
    views (the streams and the `-sync` submits, which stop when their client leaves) go to
    Django's own handler (ThreadLeases' `long_lived_app`)."""

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def handle(self, scope, receive, send) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        try:
            response = await sync_to_async(self._respond, thread_sensitive=True)(scope, body_file)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client left during the send (as Django's handler)
            finally:
                if response.streaming:
                    await sync_to_async(response.close, thread_sensitive=True)()
        finally:
            body_file.close()

    def _respond(self, scope, body_file) -> HttpResponseBase:
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size  # the server chunks it
        if not response.streaming:
            response.close()  # `request_finished` now: the answer is in memory, sent next
        return response


class _ClosingExecutor(ThreadPoolExecutor):
    """Closes the thread's database connections after each call it runs."""

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(_then_close, fn, args, kwargs)


def _then_close(fn, args, kwargs):
    try:
        return fn(*args, **kwargs)
    finally:
        connections.close_all()
