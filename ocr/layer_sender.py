"""Sends to the Channels layer from sync code: on daphne's loop in a request, else on one event
loop kept per process (workers, sweeper, management commands).

`run` waits for the send; `post` does not wait in a request: the send starts on daphne's loop
and the response goes out meanwhile (a cancel's response no longer waits for the publish of its
event, a few Redis round trips, more on a busy machine). The sends `post`ed from one process go
out one after another, in the order they were posted.

`async_to_sync` outside an event loop makes a new loop per call, and channels-redis a new Redis
connection per loop: about 2.4 ms per send, against about 0.2 ms on a kept loop (NOTES.md). A
worker sends an event per page and per status change, on the path a page event takes to the
streams. Inside a request's thread under daphne, `async_to_sync` already runs the send on
daphne's own loop and connections, and it still does.

`post_redis` sends one Redis command the same way in a request (a cancel's wake-up on commit and
its metric: two round trips its answer waited for, about 1 ms each on a loaded machine).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable

from asgiref.sync import SyncToAsync, async_to_sync

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_kept: tuple[int, asyncio.AbstractEventLoop] | None = None
# The last send `post`ed on each request loop (touched only on that loop's thread).
_last_posted: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task] = weakref.WeakKeyDictionary()
_redis_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict] = weakref.WeakKeyDictionary()


def run(send: Callable[[], Awaitable[None]], timeout: float = 10.0) -> None:
    """Run `send()` to its end (at most `timeout` s on the kept loop); its errors are raised."""
    if _in_a_request_of_this_process():
        async_to_sync(send)()
        return
    future = asyncio.run_coroutine_threadsafe(send(), _loop())
    try:
        future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise


def post(send: Callable[[], Awaitable[None]], what: str, timeout: float = 10.0) -> None:
    """Send without waiting for it in a request (after the sends posted before it), else as
    `run`; an error (or more than `timeout` s) is logged, never raised: `what` names the send."""
    if not _in_a_request_of_this_process():
        try:
            run(send, timeout)
        except Exception:
            logger.warning("%s could not be published", what, exc_info=True)
        return
    loop = SyncToAsync.threadlocal.main_event_loop
    loop.call_soon_threadsafe(_start_after_the_last, loop, send, what, timeout)


def post_redis(*command, what: str) -> bool:
    """In a request of this process: send `command` (e.g. "PUBLISH", channel, message) on
    daphne's loop as `post` does, and True. Elsewhere False: the caller sends it itself."""
    if not _in_a_request_of_this_process():
        return False
    post(lambda: _loop_redis().execute_command(*command), what)
    return True


def _loop_redis():
    """The running loop's client for REDIS_URL (an asyncio client's connections belong to a loop)."""
    import redis.asyncio
    from django.conf import settings

    clients = _redis_clients.setdefault(asyncio.get_running_loop(), {})
    if settings.REDIS_URL not in clients:
        clients[settings.REDIS_URL] = redis.asyncio.Redis.from_url(
            settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1
        )
    return clients[settings.REDIS_URL]


def _start_after_the_last(loop: asyncio.AbstractEventLoop, send, what: str, timeout: float) -> None:
    previous = _last_posted.get(loop)

    async def in_turn() -> None:
        if previous is not None:
            await asyncio.wait({previous})  # its end, whatever it was (its error is logged)
        try:
            await asyncio.wait_for(send(), timeout)
        except Exception:
            logger.warning("%s could not be published", what, exc_info=True)

    _last_posted[loop] = loop.create_task(in_turn())  # the next one holds this one: none is lost


def _in_a_request_of_this_process() -> bool:
    """asgiref marks the threads it runs sync code in for an event loop (daphne's requests).
    The mark stays on a thread after that loop is gone (a finished `async_to_sync` call leaves
    it): only a loop still running counts."""
    local = SyncToAsync.threadlocal
    loop = getattr(local, "main_event_loop", None)
    return loop is not None and getattr(local, "main_event_loop_pid", None) == os.getpid() and loop.is_running()


def _loop() -> asyncio.AbstractEventLoop:
    """This process's kept loop, started on first use (a forked worker starts its own)."""
    global _kept
    with _lock:
        if _kept is None or _kept[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="channel-layer-sender", daemon=True).start()
            _kept = (os.getpid(), loop)
            logger.debug("process %d: channel layer sends on a kept event loop", os.getpid())
        return _kept[1]
