"""The ASGI entry point under a real daphne (ocrsite.daphne_requests): no multipart parse by Twisted,
and a body larger than any accepted request refused with a 413 as soon as its size is known,
without being stored."""

import json
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from ocrsite import daphne_requests
from tests.conftest import start_daphne
from tests.support import connection, multipart, stop_process

# Small limits, so that bodies past them are quick to send: about 1.1 MB accepted in all.
LIMITS = {"OCR_MAX_PDF_BYTES": "600000", "OCR_MAX_IMAGE_BYTES": "500000"}
LIMIT = 600000 + 5 * 1024 * 1024 + daphne_requests.MULTIPART_ALLOWANCE  # + DATA_UPLOAD_MAX_MEMORY_SIZE (5 MB)


def test_importing_the_application_adjusts_daphne():
    from daphne import http_protocol

    import ocrsite.asgi  # noqa: F401  (applies the patches)

    # Twisted's own multipart parse blocked every stream for ~250 ms per 9.5 MB upload
    assert getattr(http_protocol.WebRequest, "_ocrsite_patched", False)


FROZEN_PROBE = """
import gc
import ocrsite.asgi
from ocr.api.tasks import TaskDetailView
from ocr.consumers import TaskEventsConsumer
tracked = {id(o) for generation in (0, 1, 2) for o in gc.get_objects(generation)}
print(gc.get_freeze_count(), id(TaskDetailView) in tracked, id(TaskEventsConsumer) in tracked)
"""


def test_start_up_objects_are_left_out_of_garbage_collections():
    """A web process freezes what it loaded at start-up, views and URL tables included (the
    view modules are first imported by the URL tables: frozen only if those are built first)."""
    probe = subprocess.run([sys.executable, "-c", FROZEN_PROBE], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    frozen, view_collected, consumer_collected = probe.stdout.split()
    assert int(frozen) > 50_000 and view_collected == "False" and consumer_collected == "False", probe.stdout


@pytest.fixture(scope="module")
def small_daphne(django_db_setup, tmp_path_factory):
    proc, url = start_daphne(tmp_path_factory.mktemp("daphne-limits"), **LIMITS)
    yield url
    stop_process(proc)


def raw_post(base_url: str, headers: str) -> socket.socket:
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(f"POST /v1/ocr/process-pdf HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode())
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_declared_oversized_body_gets_413_before_it_is_sent(small_daphne):
    """Answered from the headers alone: not one byte of the 400 MB is sent (before: Twisted spooled
    the whole body to disk, Django copied it, and the 413 came 3.7 s later)."""
    sock = raw_post(small_daphne, f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {400 << 20}\r\n")
    status, body = read_answer(sock)
    sock.close()
    assert status == 413 and f"limit of {LIMIT} bytes" in body["detail"]
    assert "OCR_MAX_PDF_BYTES=600000" in body["detail"]


def test_curl_style_expect_100_continue_gets_413_and_no_continue(small_daphne):
    sock = raw_post(small_daphne, f"Content-Length: {LIMIT + 1}\r\nExpect: 100-continue\r\n")
    status, _ = read_answer(sock)
    rest = sock.recv(65536)
    sock.close()
    assert status == 413 and b"100 Continue" not in rest


def test_a_client_that_sends_its_whole_body_first_reads_the_413(small_daphne):
    """Like `requests` or http.client: the body is sent before the answer is read. The service
    reads and drops the rest (for LINGER_SECONDS), so the client gets the 413, not a reset."""
    body, content_type = multipart({"file": ("big.pdf", b"%PDF-1.4\n" + b"0" * (LIMIT + 1000))})
    conn = connection(small_daphne, timeout=30)
    conn.request("POST", "/v1/ocr/process-pdf", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    assert response.status == 413 and "exceeds the limit" in json.loads(response.read())["detail"]
    conn.close()


def test_a_chunked_body_is_refused_once_it_passes_the_limit(small_daphne):
    sock = raw_post(small_daphne, "Content-Type: multipart/form-data; boundary=x\r\nTransfer-Encoding: chunked\r\n")
    chunk = b"0" * 65536
    sent = 0
    answer = b""
    while sent < 4 * LIMIT and not answer:  # socket buffers take several MB before the answer is seen
        sock.settimeout(10)
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sent += len(chunk)
        sock.settimeout(0.0)
        try:
            answer = sock.recv(65536)
        except BlockingIOError:
            pass
    sock.settimeout(10)
    if not answer:
        answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"of more than" in answer and sent < 4 * LIMIT


def test_a_body_within_the_limit_reaches_the_view(small_daphne):
    """The view's own checks still answer (a file over OCR_MAX_PDF_BYTES, within the body limit)."""
    body, content_type = multipart({"file": ("doc.pdf", b"%PDF-1.4\n" + b"0" * 700000)})
    conn = connection(small_daphne)
    conn.request("POST", "/v1/ocr/process-pdf", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    assert response.status == 413 and "limit of 600000 bytes" in json.loads(response.read())["detail"]
    conn.close()
