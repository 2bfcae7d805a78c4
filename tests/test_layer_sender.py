"""Sends to the Channels layer from sync code (ocr/layer_sender.py)."""

import asyncio
import os
import threading

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from ocr import layer_sender


def record_loop(into: list):
    async def send() -> None:
        into.append((asyncio.get_running_loop(), threading.get_ident()))

    return send


def test_sync_callers_outside_a_loop_share_one_kept_loop():
    seen: list = []
    for _ in range(3):
        layer_sender.run(record_loop(seen))
    caller = threading.get_ident()
    other: list = []
    thread = threading.Thread(target=lambda: layer_sender.run(record_loop(other)))
    thread.start()
    thread.join()
    loops = {loop for loop, _ in seen + other}
    assert len(loops) == 1, "a new event loop (and Redis connection) per send"
    assert all(ident != caller for _, ident in seen)


def test_in_a_request_the_send_runs_on_the_request_loop():
    seen: list = []

    async def request() -> asyncio.AbstractEventLoop:
        await sync_to_async(layer_sender.run)(record_loop(seen))
        return asyncio.get_running_loop()

    request_loop = asyncio.run(request())
    assert seen[0][0] is request_loop


def test_a_thread_marked_by_a_finished_loop_uses_the_kept_loop():
    """asgiref leaves its mark on a thread after the loop it ran for has stopped."""

    async def leave_a_mark() -> None:
        await sync_to_async(lambda: None)()  # runs on this (the main) thread, which asgiref marks

    async_to_sync(leave_a_mark)()
    seen: list = []
    layer_sender.run(record_loop(seen), timeout=5)
    assert seen and seen[0][0].is_running()


def test_errors_and_timeouts_reach_the_caller():
    async def fails() -> None:
        raise ConnectionError("redis gone")

    async def hangs() -> None:
        await asyncio.sleep(30)

    with pytest.raises(ConnectionError):
        layer_sender.run(fails)
    with pytest.raises(TimeoutError):
        layer_sender.run(hangs, timeout=0.2)


def test_a_forked_process_starts_its_own_loop():
    layer_sender.run(record_loop([]))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a kept loop of the parent has no thread here
        try:
            layer_sender.run(record_loop([]), timeout=5)
            os.write(write, b"ok")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok"
