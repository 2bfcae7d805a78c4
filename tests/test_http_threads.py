"""HTTP requests through the project's ASGI application (ocrsite/asgi.py) keep their threads and
database connections between requests (ocrsite/http_threads.py), and the middleware chain runs
sync in one hop (ocrsite/settings.py, MIDDLEWARE)."""

import asyncio
import inspect
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.signals import request_finished, request_started
from django.db.backends.signals import connection_created
from django.urls import reverse

from ocr.models import PageSource
from ocrsite import http_threads
from ocrsite.asgi import application
from ocrsite.http_threads import LONG_LIVED, QUICK, ThreadLeases
from tests import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_worker")]


SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"testserver")],
    "client": ("127.0.0.1", 50000),
    "server": ("testserver", 80),
}


def scope_for(path: str) -> dict:
    return {**SCOPE, "path": path, "raw_path": path.encode()}


async def get(app, path: str) -> tuple[int, bytes]:
    communicator = ApplicationCommunicator(app, scope_for(path))
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=10)
    body = b""
    while True:
        message = await communicator.receive_output(timeout=10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(timeout=5)
    return start["status"], body


def connections_opened_by(
    app, path: str, requests: int, wrappers: list | None = None, *, at_once: bool = False
) -> list[int]:
    """The threads that opened a database connection while `requests` GETs (one after the
    other, or `at_once`) went through `app`, each answered 200 (and their connections' Django
    wrappers in `wrappers`)."""
    opened: list[int] = []

    def count(sender, connection, **kwargs):
        opened.append(threading.get_ident())
        if wrappers is not None:
            wrappers.append(connection)

    connection_created.connect(count)
    try:

        async def run():
            if at_once:
                answers = await asyncio.gather(*(get(app, path) for _ in range(requests)))
            else:
                answers = [await get(app, path) for _ in range(requests)]
            assert [status for status, _ in answers] == [200] * requests, answers

        asyncio.run(run())
    finally:
        connection_created.disconnect(count)
    return opened


def test_requests_share_a_kept_thread_and_its_database_connection():
    task = factories.submit_task(pages=1)
    path = f"/v1/ocr/tasks/{task.pk}"
    opened = connections_opened_by(application, path, requests=10)
    assert len(opened) <= 1, f"{len(opened)} database connections opened for 10 requests"


def test_without_leases_every_request_opens_a_connection():
    """The measurement above can fail: Django alone opens one connection per request."""
    task = factories.submit_task(pages=1)
    path = f"/v1/ocr/tasks/{task.pk}"
    wrappers: list = []
    opened = connections_opened_by(ThreadLeases(application.application_mapping["http"].app, size=0), path, 5, wrappers)
    assert len(opened) == 5
    # ... and closes it at the end: left open on a thread that is gone, 50 clients ran
    # PostgreSQL out of connections (persistent connections, CONN_MAX_AGE).
    assert [wrapper.connection for wrapper in wrappers] == [None] * 5


def test_requests_beyond_the_kept_threads_wait_for_one_in_turn():
    """No extra thread, no extra connection: with 50 clients, requests that found every thread
    lent each opened a connection (and a thread) of their own, and cost 60% more CPU."""
    task = factories.submit_task(pages=1)
    path = f"/v1/ocr/tasks/{task.pk}"
    leases = ThreadLeases(application.application_mapping["http"].app, size=1)
    opened = connections_opened_by(leases, path, requests=6, at_once=True)
    assert len(opened) <= 1 and leases.created == 1 and not leases.waiting


def test_a_request_dropped_while_waiting_loses_no_thread():
    async def run() -> None:
        leases = ThreadLeases(app=None, size=1)
        held = await leases._next_free()
        dropped = asyncio.ensure_future(leases._next_free())
        served = asyncio.ensure_future(leases._next_free())
        await asyncio.sleep(0)
        dropped.cancel()  # the client went away while waiting
        await asyncio.sleep(0)
        leases._give_back(held)
        assert await asyncio.wait_for(served, 1) is held  # the next in line gets it
        leases._give_back(held)
        assert leases.free == [held] and not leases.waiting

    asyncio.run(run())


def test_quick_requests_pass_the_others_and_keep_threads_of_their_own():
    """Ten PDF downloads at once took every thread of a process: a task's GET waited 0.5-1.2 s
    behind them (150 ms with the quick lane; /tmp scratch run, see the #11 note)."""

    async def run() -> None:
        leases = ThreadLeases(app=None, size=2)  # one thread for the others, one kept for quick ones
        download = await leases._next_free(quick=False)
        upload = asyncio.ensure_future(leases._next_free(quick=False))
        get = await asyncio.wait_for(leases._next_free(quick=True), 1)  # the kept thread, at once
        cancel = asyncio.ensure_future(leases._next_free(quick=True))
        await asyncio.sleep(0)
        assert not upload.done() and not cancel.done()
        leases._give_back(download, quick=False)  # the cancel goes first, though it came later
        assert await asyncio.wait_for(cancel, 1) is download and not upload.done()
        leases._give_back(get, quick=True)  # no quick request waits: the upload's turn
        assert await asyncio.wait_for(upload, 1) is get
        second_upload = asyncio.ensure_future(leases._next_free(quick=False))
        poll = asyncio.ensure_future(leases._next_free(quick=True))
        await asyncio.sleep(0)
        leases._give_back(download, quick=True)
        assert await asyncio.wait_for(poll, 1) is download
        leases._give_back(download, quick=True)
        await asyncio.sleep(0)
        assert not second_upload.done(), "the thread kept for quick requests was lent to another"
        assert leases.others_held == 1 and leases.free == [download]
        second_upload.cancel()

    asyncio.run(run())


def test_the_others_cannot_starve(monkeypatch):
    monkeypatch.setattr(http_threads, "OTHERS_WAIT_MAX", 0.0)

    async def run() -> None:
        leases = ThreadLeases(app=None, size=2)
        held = await leases._next_free(quick=True), await leases._next_free(quick=True)
        upload = asyncio.ensure_future(leases._next_free(quick=False))
        get = asyncio.ensure_future(leases._next_free(quick=True))
        await asyncio.sleep(0.01)
        leases._give_back(held[0], quick=True)  # the upload waited too long: it goes first
        assert await asyncio.wait_for(upload, 1) is held[0] and not get.done()
        leases._give_back(held[1], quick=True)
        assert await asyncio.wait_for(get, 1) is held[1]

    asyncio.run(run())


@pytest.mark.parametrize(
    ("path", "quick"),
    [
        ("/v1/ocr/tasks/0b7c1a52-6a8e-4bf3-9a1e-6d0f1c3b2a10", True),
        ("/v1/ocr/pdf-llm-tasks/0b7c1a52-6a8e-4bf3-9a1e-6d0f1c3b2a10", True),
        ("/v1/ocr/tasks/0b7c1a526a8e4bf39a1e6d0f1c3b2a10/cancel", True),
        ("/v1/ocr/stream/0b7c1a52-6a8e-4bf3-9a1e-6d0f1c3b2a10/cancel", True),
        ("/v1/ocr/health", True),
        ("/admin/ocr/ocrtask/0b7c1a52-6a8e-4bf3-9a1e-6d0f1c3b2a10/cancel/", True),
        ("/v1/ocr/tasks/cancel", False),  # bulk cancel: up to hundreds of tasks
        ("/v1/ocr/tasks/cleanup", False),
        ("/v1/ocr/tasks", False),
        ("/v1/ocr/tasks/0b7c1a52-6a8e-4bf3-9a1e-6d0f1c3b2a10/download", False),
        ("/v1/ocr/process-pdf", False),
        ("/v1/ocr/batches/0b7c1a52-6a8e-4bf3-9a1e-6d0f1c3b2a10/cancel", False),
    ],
)
def test_which_requests_take_the_quick_lane(path, quick):
    assert bool(QUICK.match(path)) is quick


def test_a_busy_thread_is_not_lent_twice():
    leases = ThreadLeases(app=None, size=2)
    first, second = leases._lease(), leases._lease()
    assert first is not second and leases._lease() is None  # both lent: a request waits for one
    leases.free.append(first)
    assert leases._lease() is first


def test_the_middleware_and_the_view_run_sync_in_one_hop(monkeypatch):
    """A Django middleware run async hops to a thread and back twice per request; a sync chain
    under Django's own ASGI handler hopped back to the event loop at its end (AsyncToSync) and
    to the thread again for the view: a fifth of a GET's CPU. Now the request's thread runs the
    chain and the view in one call (CSRF stands for the middleware: it has a process_view)."""
    from ocr.api.tasks import TaskDetailView

    handler = application.application_mapping["http"].app
    csrf = next(
        method.__self__ for method in handler._view_middleware if type(method.__self__).__name__ == "CsrfViewMiddleware"
    )
    assert not asyncio.iscoroutinefunction(csrf), "CsrfViewMiddleware runs async: a sync middleware sits outside it"

    stacks: list[list[str]] = []
    original = TaskDetailView.get

    def get_recording_its_callers(self, request, task_id):
        stacks.append([f"{frame.filename}:{frame.function}" for frame in inspect.stack(context=0)])
        return original(self, request, task_id)

    monkeypatch.setattr(TaskDetailView, "get", get_recording_its_callers)
    task = factories.submit_task(pages=1)
    status, _ = asyncio.run(get(application, f"/v1/ocr/tasks/{task.pk}"))
    assert status == 200 and len(stacks) == 1
    hops = [frame for frame in stacks[0] if frame.endswith("asgiref/current_thread_executor.py:run_until_future")]
    assert not hops, "the view ran through AsyncToSync: the request went back to the event loop before it"


def test_a_request_is_one_call_on_its_thread_closed_before_its_answer_leaves(monkeypatch):
    """request_started, the middleware chain, the view and request_finished run in one call on
    the request's kept thread (Django's own handler hopped to it three times: the first signal,
    the chain and view, the close), and an answer held in memory is closed before it is sent."""
    submitted = []  # the calls sent to a kept thread
    original_submit = ThreadPoolExecutor.submit

    def counting_submit(self, fn, /, *args, **kwargs):
        if self._thread_name_prefix.startswith("http-"):
            submitted.append(fn)
        return original_submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(ThreadPoolExecutor, "submit", counting_submit)
    signalled: list[tuple[str, str]] = []

    def on_started(**kwargs):
        signalled.append(("started", threading.current_thread().name))

    def on_finished(**kwargs):
        signalled.append(("finished", threading.current_thread().name))

    task = factories.submit_task(pages=1)
    path = f"/v1/ocr/tasks/{task.pk}"
    request_started.connect(on_started)
    request_finished.connect(on_finished)
    try:

        async def run() -> list[tuple[str, str]]:
            communicator = ApplicationCommunicator(application, scope_for(path))
            await communicator.send_input({"type": "http.request", "body": b""})
            start = await communicator.receive_output(timeout=10)
            assert start["status"] == 200
            signalled_when_sent = list(signalled)
            await communicator.receive_output(timeout=10)
            await communicator.wait(timeout=5)
            return signalled_when_sent

        signalled_when_sent = asyncio.run(run())
    finally:
        request_started.disconnect(on_started)
        request_finished.disconnect(on_finished)
    assert len(submitted) == 1, f"{len(submitted)} calls on the request's thread"
    [(_, thread)] = {(name, thread) for name, thread in signalled if name == "started"}
    assert thread.startswith("http-")
    assert signalled_when_sent == [("started", thread), ("finished", thread)]


@pytest.mark.parametrize(
    ("name", "kwargs", "long_lived"),
    [
        ("stream", {"task_id": "x"}, True),
        ("operator-events", {}, True),
        ("submit-process-pdf-sync", {}, True),
        ("task-detail", {"task_id": "x"}, False),
        ("task-cancel", {"task_id": "x"}, False),
        ("stream-cancel", {"task_id": "x"}, False),
        ("task-download", {"task_id": "x"}, False),
        ("submit-process-pdf", {}, False),
    ],
)
def test_only_requests_that_wait_go_without_a_lease(name, kwargs, long_lived):
    assert bool(LONG_LIVED.match(reverse(name, kwargs=kwargs))) is long_lived


def test_task_json_unchanged_through_the_asgi_application():
    task = factories.submit_task(pages=1)
    status, body = asyncio.run(get(application, f"/v1/ocr/tasks/{task.pk}"))
    assert status == 200 and json.loads(body)["task_id"] == str(task.pk)


def database_connections_of(pid: int) -> int:
    """Open connections of process `pid` to the test database: its sockets to PostgreSQL's
    port, or its descriptors of the SQLite file (one per connection)."""
    from django.db import connection

    targets: set[str] = set()
    if connection.vendor == "postgresql":
        port = f"{int(connection.settings_dict['PORT'] or 5432):04X}"
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as handle:
                for line in list(handle)[1:]:
                    fields = line.split()
                    if fields[2].endswith(f":{port}") and fields[3] == "01":  # remote port, ESTABLISHED
                        targets.add(f"socket:[{fields[9]}]")
    else:
        targets.add(str(connection.settings_dict["NAME"]))
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                count += 1
        except OSError:
            pass
    return count


def test_open_streams_hold_no_database_connection(tmp_path):
    """Each SSE stream held a connection for its whole life (a hundred clients would take
    PostgreSQL's hundred); now its thread closes it after each burst of database reads."""
    from tests.conftest import start_daphne
    from tests.support import SSEClient, stop_process, wait_for

    task = factories.submit_task(streaming=True, pages=2, start=True)
    proc, url = start_daphne(tmp_path, OCR_HTTP_THREADS="1")
    streams = []
    try:
        for _ in range(6):
            stream = SSEClient(url, f"/v1/ocr/stream/{task.pk}", timeout=20)
            events = stream.events()
            assert next(events)[1]["seq"] == 1  # replayed from the database
            streams.append(stream)
        time.sleep(0.3)  # the streams now wait on Redis
        held = database_connections_of(proc.pid)
        assert held <= 1, f"{held} database connections held by daphne for 6 open streams"
        factories.record_page(task_id=task.pk, page_number=1, text="p1", source=PageSource.OCR, processing_time=0.1)
        for stream in streams:  # a live event still arrives on every stream
            assert wait_for(lambda s=stream: next(s.events())[1]["type"] == "page_completed", timeout=10)
    finally:
        for stream in streams:
            stream.close()
        stop_process(proc)
