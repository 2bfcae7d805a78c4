"""How daphne (Twisted) takes in a request body, adjusted for uploads; applied by ocrsite.asgi.
Nothing here runs under another ASGI server.

- No multipart parse by Twisted: daphne lets Twisted parse every multipart body with the `email`
  parser on its one event loop thread, and nothing reads the result (ASGI passes the raw body). A
  9.5 MB upload cost 250 ms of that thread and held every WebSocket and SSE event behind it (p95
  ~300 ms); without it: 45 ms, events p95 < 25 ms (benchmarks/event_latency.py --uploads 1).
- A body larger than any request the service accepts (`max_request_body()`) is refused with a 413
  as soon as its size is known, and not stored. Twisted spools a whole body to a temporary file
  before daphne hands the request to Django, and only the view knew the limits: a 400 MB upload
  was written to disk and then copied again by Django before its 413, after 3.7 s. A client may
  send that much before any authentication (the body comes first), so the disk was anybody's.
  The 413 goes out at once, `Connection: close`; what the client still sends is read and dropped
  for at most LINGER_SECONDS (so that a client that sends its body before reading the answer
  gets the 413, not a reset), then the connection is closed."""

from __future__ import annotations

import json
import logging

from django.conf import settings

logger = logging.getLogger(__name__)

LINGER_SECONDS = 2.0
MULTIPART_ALLOWANCE = 64 * 1024  # part headers and boundaries around the file and the fields


def max_request_body() -> int:
    """The largest body of any request the service can accept: the largest upload
    (OCR_MAX_PDF_BYTES, OCR_MAX_IMAGE_BYTES) with its non-file fields (DATA_UPLOAD_MAX_MEMORY_SIZE)."""
    largest_file = max(settings.OCR_MAX_PDF_BYTES, settings.OCR_MAX_IMAGE_BYTES)
    return largest_file + settings.DATA_UPLOAD_MAX_MEMORY_SIZE + MULTIPART_ALLOWANCE


def install() -> None:
    try:
        from daphne import http_protocol
    except ImportError:  # served by another ASGI server
        return
    request_class = http_protocol.WebRequest
    if getattr(request_class, "_ocrsite_patched", False):
        return
    original_init = request_class.__init__
    original_got_length = request_class.gotLength
    original_content_chunk = request_class.handleContentChunk
    original_request_received = request_class.requestReceived

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False
        self._ocrsite_received = 0
        self._ocrsite_refused = False

    def gotLength(self, length):
        self._ocrsite_limit = max_request_body()  # once per request, not per chunk
        if length is not None and length > self._ocrsite_limit:
            original_got_length(self, 0)
            _refuse(self, f"{length} bytes")
        else:
            original_got_length(self, length)

    def handleContentChunk(self, data):
        if self._ocrsite_refused:
            return
        self._ocrsite_received += len(data)
        if self._ocrsite_received > self._ocrsite_limit:  # a chunked body: no length given
            _refuse(self, f"more than {self._ocrsite_limit} bytes")
            return
        original_content_chunk(self, data)

    def requestReceived(self, command, path, version):
        if self._ocrsite_refused:
            self.channel.transport.loseConnection()  # answered: nothing goes to the application
            return
        original_request_received(self, command, path, version)

    request_class.__init__ = __init__
    request_class.gotLength = gotLength
    request_class.handleContentChunk = handleContentChunk
    request_class.requestReceived = requestReceived
    request_class._ocrsite_patched = True


def _refuse(request, size: str) -> None:
    from twisted.internet import reactor

    request._ocrsite_refused = True
    request.requestHeaders.removeHeader(b"Expect")  # no "100 Continue" for a body refused already
    limit = request._ocrsite_limit
    detail = (
        f"Request body of {size} exceeds the limit of {limit} bytes "
        f"(OCR_MAX_PDF_BYTES={settings.OCR_MAX_PDF_BYTES}, OCR_MAX_IMAGE_BYTES={settings.OCR_MAX_IMAGE_BYTES})"
    )
    body = json.dumps({"detail": detail}).encode()
    head = (
        b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    transport = request.channel.transport
    transport.write(head + body)
    reactor.callLater(LINGER_SECONDS, transport.loseConnection)
    client = request.getClientAddress()
    logger.warning("request body of %s from %s refused (limit %d bytes)", size, getattr(client, "host", client), limit)
