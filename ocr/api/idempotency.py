"""The `Idempotency-Key` header on submit endpoints (API.md section 8): who the caller is, what
makes two submits the same (a sha256 of the path, the `request` part and the file bytes), and the
wrapper that replays a first answer with `Idempotent-Replayed: true`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from django.core.serializers.json import DjangoJSONEncoder
from rest_framework.request import Request
from rest_framework.response import Response

from .. import idempotency
from ..exceptions import InvalidInput
from ..models import IdempotencyRecord
from .common import client_ip

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255


def idempotency_key(request) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise InvalidInput(f"{HEADER}: must be 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return key


def caller_of(request) -> str:
    """A user by id; an anonymous caller by IP address (not by session: a first anonymous submit
    is what creates the session, so its retry would look like another caller)."""
    if request.user.is_authenticated:
        return f"user:{request.user.pk}"
    return f"ip:{client_ip(request)}"


def fingerprint(request: Request) -> str:
    digest = hashlib.sha256(request.path.encode())
    raw = request.data.get("request")
    if hasattr(raw, "read"):
        digest.update(raw.read())
        raw.seek(0)
    else:
        digest.update(b"\0" + (raw or "").encode())
    for upload in request.FILES.getlist("file"):
        digest.update(b"\0file\0")
        for chunk in upload.chunks():
            digest.update(chunk)
        upload.seek(0)
    return digest.hexdigest()


def replay(record: IdempotencyRecord) -> Response:
    response = Response(record.body, status=record.status_code)
    response[REPLAYED_HEADER] = "true"
    return response


def idempotent(request: Request, respond: Callable[[], tuple[int, dict]]) -> Response:
    """`respond()` once per (caller, key): the first answer is stored, later calls replay it."""
    key = idempotency_key(request)
    if key is None:
        status, body = respond()
        return Response(body, status=status)
    caller = caller_of(request)
    record = idempotency.idempotency_claim(caller=caller, key=key, fingerprint=fingerprint(request))
    if record.status_code is not None:
        return replay(record)
    try:
        status, body = respond()
    except BaseException:
        idempotency.idempotency_release(record)
        raise
    body = json.loads(json.dumps(body, cls=DjangoJSONEncoder))
    idempotency.idempotency_store(record, status_code=status, body=body)
    return Response(body, status=status)
