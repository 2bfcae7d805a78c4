"""Several nodes on one database and one Redis (API.md section 12): web nodes (daphne only) and a
worker node (qcluster and sweeper only), each started by `make run`'s script with OCR_ROLE. A
cancel answered by one web node stops the work on the worker node, and a WebSocket on the other
web node sees the `cancelled` event."""

import os
import signal
import subprocess

import pytest

from ocr.models import OCRTask
from tests import factories
from tests.conftest import ROOT, service_env
from tests.support import (
    WebSocketClient,
    free_port,
    http_request,
    port_open,
    post_file,
    post_json,
    tesseract_pids,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True)]


class Node:
    def __init__(self, role: str, name: str, tmp_path, env: dict | None = None) -> None:
        self.port = free_port()
        self.slot_dir = str(tmp_path / f"slots-{name}")
        env = {
            **service_env(),
            # a queue of their own: the session's test cluster must not take their jobs
            "OCR_QUEUE_NAME": f"{service_env()['OCR_QUEUE_NAME']}nodes",
            "OCR_ROLE": role,
            "OCR_NODE_NAME": name,
            "OCR_SLOT_DIR": self.slot_dir,
            "PORT": str(self.port),
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            ["bash", "scripts/run.sh"],
            cwd=ROOT,
            env=env,
            stdout=open(tmp_path / f"{name}.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)


@pytest.fixture
def nodes(tmp_path):
    started = {
        "web-a": Node("web", "web-a", tmp_path),
        "web-c": Node("web", "web-c", tmp_path),
        "worker-b": Node("worker", "worker-b", tmp_path),
    }
    try:
        for name in ("web-a", "web-c"):
            wait_for(lambda name=name: port_open(started[name].port), timeout=60)
        yield started
    finally:
        for node in started.values():
            node.stop()


def test_cancel_on_one_web_node_stops_the_worker_node_and_reaches_the_other(nodes):
    web_a, web_c, worker = nodes["web-a"], nodes["web-c"], nodes["worker-b"]
    assert not port_open(worker.port)  # a worker node serves no HTTP
    status, body = post_file(web_a.url, "/v1/ocr/process-pdf", factories.slow_pdf(3), {"dpi": 600, "text_layer": "ocr"})
    assert status == 202, body
    task_id = body["task_id"]
    wait_for(lambda: tesseract_pids(worker.slot_dir), timeout=60)
    watcher = WebSocketClient(web_c.url, f"/ws/ocr/tasks/{task_id}/", timeout=30)
    status, answer = post_json(web_a.url, f"/v1/ocr/tasks/{task_id}/cancel", {"reason": "node A says stop"})
    assert status == 200 and answer["status"] == "cancelled"
    wait_for(lambda: not tesseract_pids(worker.slot_dir), timeout=2, interval=0.005)
    events = [event for _, event in watcher.messages()]
    assert events[-1]["type"] == "cancelled" and events[-1]["cancellation_reason"] == "node A says stop"
    assert watcher.close_code == 1000
    status, task = post_json(web_c.url, f"/v1/ocr/tasks/{task_id}/cancel")  # idempotent, from the other node
    assert status == 200 and task["message"] == "Task was already cancelled"
    assert OCRTask.objects.get(pk=task_id).worker_host == "worker-b"
    status, body = http_request(web_c.url, "GET", f"/v1/ocr/tasks/{task_id}")
    assert body["worker_node"] == "worker-b"
    assert os.path.isdir(worker.slot_dir)
