"""The Python client (client/, `ocrsite_client`) and its command line against a live daphne and
real workers: submit, wait, events over WebSocket and SSE (resumed after a dropped connection),
cancel, the cancel-on-exit block, typed errors, and Ctrl-C in `ocr-client`."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from ocrsite_client import EARLY_EXIT_REASON, AsyncClient, BadRequest, Client, NotFound

from tests import factories
from tests.support import tesseract_pids, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
SLOW = {"dpi": 600, "text_layer": "ocr"}  # keeps tesseract busy for seconds per page
TERMINAL = {"completed", "failed", "cancelled"}


def assert_gapless(events: list[dict], after: int = 0) -> None:
    assert [e["seq"] for e in events] == list(range(after + 1, after + 1 + len(events)))
    assert [e["type"] in TERMINAL for e in events].count(True) == 1 and events[-1]["type"] in TERMINAL


def test_sync_client_submits_waits_replays_events_and_raises_typed_errors(live_daphne, cluster):
    with Client(live_daphne) as client:
        submitted = client.submit(factories.text_pdf(3), filename="three.pdf")
        assert submitted["status"] == "pending" and submitted["task_type"] == "pdf"
        task = client.wait(submitted["task_id"], timeout=60)
        assert task["status"] == "completed"
        assert [p["page_number"] for p in task["result"]["results"]] == [1, 2, 3]
        assert "Page 2 of the sample document." in task["result"]["results"][1]["extracted_text"]

        over_ws = list(client.events(task["task_id"], transport="websocket"))
        assert_gapless(over_ws)
        assert over_ws[-1]["type"] == "completed"
        assert [e["seq"] for e in client.events(task["task_id"], transport="sse")] == [e["seq"] for e in over_ws]
        assert list(client.events(task["task_id"], after=2)) == over_ws[2:]
        with Client(live_daphne, idle_check=0.5) as late:  # after the terminal seq: nothing, and it ends
            for transport in ("websocket", "sse"):
                assert list(late.events(task["task_id"], after=over_ws[-1]["seq"], transport=transport)) == []

        synced = client.submit(factories.text_image("Hello client world"), mode="sync")
        assert synced["status"] == "completed" and "client" in synced["result"]["extracted_text"].lower()

        with pytest.raises(NotFound) as missing:
            client.get(str(uuid.uuid4()))
        assert missing.value.status_code == 404 and isinstance(missing.value.detail, str)
        with pytest.raises(BadRequest) as finished:
            client.cancel(task["task_id"], reason="too late")
        assert finished.value.status_code == 400
        assert finished.value.detail == f"Task {task['task_id']} is already completed"
        with pytest.raises(BadRequest) as invalid:
            client.submit(factories.text_pdf(1), request={"dpi": 5000})
        assert "dpi" in json.dumps(invalid.value.detail)
        with pytest.raises(ValueError):
            client.submit(factories.text_image(), mode="stream")  # streaming takes PDFs only


async def test_async_client_follows_live_events_and_cancels_mid_page(live_daphne, cluster):
    async with AsyncClient(live_daphne) as client:
        task = await client.submit(factories.slow_pdf(3), mode="stream", request=SLOW)
        assert task["streaming"] is True and task["ws_url"]
        events, answer = [], None
        async for event in client.events(task["task_id"]):
            events.append(event)
            if answer is None and event["status"] == "processing":
                wait_for(tesseract_pids, timeout=60)  # mid-page
                answer = await client.cancel(task["task_id"], reason="async client test")
        assert answer["status"] == "cancelled" and answer["cancellation_reason"] == "async client test"
        assert_gapless(events)
        assert events[-1]["type"] == "cancelled" and events[-1]["cancellation_reason"] == "async client test"
        wait_for(lambda: not tesseract_pids(), timeout=5)
        final = await client.wait(task["task_id"], timeout=10)
        assert final["status"] == "cancelled"
        replay = [e async for e in client.events(task["task_id"], after=1, transport="sse")]
        assert replay == events[1:]


class DroppingProxy:
    """A TCP proxy in front of daphne whose open connections the test can cut at once."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.accepted += 1
            self.open += [downstream, upstream]
            for source, target in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drop(self) -> None:
        for sock in self.open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.open = []

    def close(self) -> None:
        self.listener.close()
        self.drop()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_events_resume_after_a_dropped_connection_without_gap_or_duplicate(live_daphne, cluster, transport):
    proxy = DroppingProxy(int(live_daphne.rsplit(":", 1)[1]))
    try:
        with Client(live_daphne) as control, Client(f"http://127.0.0.1:{proxy.port}") as client:
            task = control.submit(factories.slow_pdf(4), request=SLOW)  # the cancel always lands mid-task
            events: list[dict] = []
            for event in client.events(task["task_id"], transport=transport):
                events.append(event)
                if len(events) == 1:
                    proxy.drop()  # mid-stream: the client must reconnect after seq 1
                if event["type"] == "page_completed":
                    control.cancel(task["task_id"], reason="resume test")
            assert proxy.accepted >= 2
            assert_gapless(events)
            assert events[-1]["type"] == "cancelled"
            assert [e["seq"] for e in events] == [e["seq"] for e in control.events(task["task_id"])]
    finally:
        proxy.close()
    wait_for(lambda: not tesseract_pids(), timeout=5)


def test_task_block_cancels_its_task_when_an_exception_leaves_it(live_daphne, cluster):
    with Client(live_daphne) as client:
        with pytest.raises(RuntimeError, match="caller failed"):
            with client.task(factories.slow_pdf(2), request=SLOW) as handle:
                wait_for(tesseract_pids, timeout=60)
                raise RuntimeError("caller failed")
        task = client.get(handle.id)
        assert task["status"] == "cancelled" and task["cancellation_reason"] == EARLY_EXIT_REASON
        wait_for(lambda: not tesseract_pids(), timeout=5)

        # a block that saw its task to the end leaves it completed
        with client.task(factories.text_pdf(1)) as done:
            assert [e["type"] for e in done.events()][-1] == "completed"
        assert client.get(done.id)["status"] == "completed"


async def test_async_task_block_cancels_on_break(live_daphne, cluster):
    async with AsyncClient(live_daphne) as client:
        async with client.task(factories.slow_pdf(2), request=SLOW, cancel_reason="enough") as handle:
            async for event in handle.events():
                if event["status"] == "processing":
                    break
        task = await client.wait(handle.id, timeout=10)
        assert task["status"] == "cancelled" and task["cancellation_reason"] == "enough"
    wait_for(lambda: not tesseract_pids(), timeout=5)


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "client"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ocrsite_client", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_prints_pages_and_exits_zero(live_daphne, cluster, tmp_path):
    document = tmp_path / "two.pdf"
    document.write_bytes(factories.text_pdf(2))
    proc = cli(str(document), "--url", live_daphne)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err.splitlines()[0].startswith("task: ")
    assert out.index("Page 1 of the sample document.") < out.index("Page 2 of the sample document.")
    assert "100.0%  2/2 pages  completed" in err  # the progress bar (one line per event off a terminal)
    assert "completed" in err.splitlines()[-1]

    image = tmp_path / "note.png"
    image.write_bytes(factories.text_image("Hello output folder"))
    proc = cli(str(document), str(image), "--url", live_daphne, "-o", str(tmp_path / "out"), "--quiet")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out == "" and [line for line in err.splitlines() if line.startswith("task: ")] == err.splitlines()[::2]
    pages = (tmp_path / "out" / "two.txt").read_text().split("\f")
    assert len(pages) == 2 and "Page 2 of the sample document." in pages[1]
    assert "output folder" in (tmp_path / "out" / "note.txt").read_text()

    proc = cli(str(image), "--url", live_daphne, "--output-format", "json", "--quiet")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    task = json.loads(out)
    assert task["status"] == "completed" and "output folder" in task["result"]["extracted_text"]


def test_cli_ctrl_c_cancels_its_task_and_exits_130(live_daphne, cluster, tmp_path):
    document = tmp_path / "slow.pdf"
    document.write_bytes(factories.slow_pdf(3))
    proc = cli(str(document), "--url", live_daphne, "--request", json.dumps(SLOW))
    try:
        first = proc.stderr.readline().strip()
        assert first.startswith("task: "), first
        task_id = first.removeprefix("task: ")
        assert proc.stdout.readline().strip()  # the first page's text: its event arrived
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    with Client(live_daphne) as client:
        task = client.get(task_id)
    assert task["status"] == "cancelled" and task["cancellation_reason"] == "Client interrupted"
    assert task["progress"]["processed_pages"] >= 1 and len(task["result"]["results"]) >= 1
    wait_for(lambda: not tesseract_pids(), timeout=5)


def test_token_from_the_environment_owns_the_task_and_its_events(live_daphne, cluster, monkeypatch, caplog):
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=User.objects.create_user("client-alice")).key
    monkeypatch.setenv("OCR_URL", live_daphne)
    monkeypatch.setenv("OCR_TOKEN", token)
    with Client() as alice, Client(live_daphne, token="") as anonymous:
        assert alice.token == token and anonymous.token is None
        task = alice.submit(factories.text_pdf(1))
        with pytest.raises(NotFound):
            anonymous.get(task["task_id"])  # a user's task is only theirs
        # the WebSocket authenticates the token too (no fallback to SSE needed)
        caplog.set_level(logging.INFO, logger="ocrsite_client")
        events = list(alice.events(task["task_id"]))
        assert_gapless(events)
        assert events[-1]["type"] == "completed"
        assert "following over SSE" not in caplog.text


def test_cli_deadline_and_bad_arguments(live_daphne, cluster, tmp_path):
    document = tmp_path / "slow.pdf"
    document.write_bytes(factories.slow_pdf(2))
    proc = cli(str(document), "--url", live_daphne, "--deadline", "1", "--request", json.dumps(SLOW))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "cancelled (Deadline of 1 s exceeded)" in err
    wait_for(lambda: not tesseract_pids(), timeout=5)

    proc = cli(str(document), "--url", live_daphne, "--request", "[1, 2]")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--request must be a JSON object" in err

    proc = cli(str(document), "--url", live_daphne, "--request", '{"dpi": 5000}')
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "400" in err and "dpi" in err


@pytest.fixture
def fake_llm():
    from tests.conftest import LLM_TEST_PORT
    from tests.llm_server import FakeLLMServer

    server = FakeLLMServer(port=LLM_TEST_PORT).start()  # where daphne and the workers look for it
    yield server
    server.stop()


def test_llm_submits_through_the_client_and_the_cli(live_daphne, cluster, fake_llm, tmp_path):
    with Client(live_daphne) as client:
        task = client.submit(factories.text_pdf(2), llm=True, mode="stream")
        assert task["task_type"] == "pdf_llm" and task["streaming"] is True
        final = client.wait(task["task_id"], timeout=60)
        assert final["status"] == "completed"
        assert [page["source"] for page in final["result"]["results"]] == ["llm", "llm"]
        assert "SAMPLE document" in final["result"]["results"][0]["extracted_text"]

    image = tmp_path / "note.png"
    image.write_bytes(factories.text_image("A sample of text"))
    proc = cli(str(image), "--url", live_daphne, "--llm")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "SAMPLE" in out
