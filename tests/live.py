"""Plain-socket HTTP helpers for tests against a live daphne (standard library only)."""

from __future__ import annotations

import http.client
import json
import uuid
from urllib.parse import urlparse


def multipart(fields: dict) -> tuple[bytes, str]:
    """Encode {name: str | (filename, bytes)} as multipart/form-data."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, data = value
            head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            head += "Content-Type: application/octet-stream\r\n\r\n"
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"\r\n\r\n', value.encode()
        parts.append(f"--{boundary}\r\n".encode() + head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def connection(base_url: str, timeout: float = 120) -> http.client.HTTPConnection:
    url = urlparse(base_url)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)


def post_file(base_url: str, path: str, data: bytes, request: dict | None = None, name: str = "doc.pdf"):
    """POST a file and wait for the answer: (status, JSON body)."""
    fields = {"file": (name, data)}
    if request is not None:
        fields["request"] = json.dumps(request)
    body, content_type = multipart(fields)
    conn = connection(base_url)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, json.loads(payload)


def post_json(base_url: str, path: str, payload: dict | None = None):
    conn = connection(base_url, timeout=30)
    conn.request("POST", path, body=json.dumps(payload or {}), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data)
