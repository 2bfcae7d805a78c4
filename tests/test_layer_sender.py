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


def test_in_a_request_post_returns_at_once_and_the_sends_go_out_in_order():
    """A cancel's response does not wait for the publish of its event; a slow first send does
    not let a later one overtake it."""
    sent: list[int] = []
    release = threading.Event()

    def sender(number: int, slow: bool = False):
        async def send() -> None:
            if slow:
                await asyncio.get_running_loop().run_in_executor(None, release.wait, 5)
            sent.append(number)

        return send

    def view() -> list[int]:
        layer_sender.post(sender(1, slow=True), "send 1")
        layer_sender.post(sender(2), "send 2")
        return list(sent)

    async def request() -> list[int]:
        seen_by_the_view = await sync_to_async(view)()
        await asyncio.sleep(0.05)  # the loop is free: a send not held by the one before would go now
        before_release = list(sent)
        release.set()
        for _ in range(100):
            if len(sent) == 2:
                break
            await asyncio.sleep(0.01)
        return seen_by_the_view, before_release

    seen_by_the_view, before_release = asyncio.run(request())
    assert seen_by_the_view == [] and before_release == []
    assert sent == [1, 2]


def test_post_logs_errors_and_timeouts_instead_of_raising(caplog):
    async def fails() -> None:
        raise ConnectionError("redis gone")

    async def hangs() -> None:
        await asyncio.sleep(30)

    layer_sender.post(fails, "task x: event 3")  # outside a request: waits, logs

    async def request() -> None:
        await sync_to_async(layer_sender.post)(hangs, "task y: event 4", 0.1)
        await sync_to_async(layer_sender.post)(fails, "task z: event 5")
        await asyncio.sleep(0.5)

    asyncio.run(request())
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [f"task {n} could not be published" for n in ("x: event 3", "y: event 4", "z: event 5")]
