"""Exceptions: an answer with a 4xx/5xx status becomes an `APIError` (a subclass per status)
carrying the status code and the JSON `detail`."""

from __future__ import annotations

import json
from typing import Any


class OCRClientError(Exception):
    """Anything this client raises on purpose."""


class APIError(OCRClientError):
    """The server answered with an error status. `detail` is the JSON `detail` field (or the whole
    JSON body when it has none, e.g. a field-by-field validation answer)."""

    status_code: int

    def __init__(self, status_code: int, detail: Any, body: Any = None, headers: dict[str, str] | None = None):
        self.status_code = status_code
        self.detail = detail
        self.body = body
        self.headers = dict(headers or {})
        super().__init__(f"{status_code}: {detail}")

    @property
    def retry_after(self) -> float | None:
        """Seconds from the `Retry-After` header (429, 503), when there is one."""
        value = {k.lower(): v for k, v in self.headers.items()}.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class BadRequest(APIError):
    """400: invalid input, or a task already finished (cancel)."""


class AuthenticationError(APIError):
    """401 or 403."""


class NotFound(APIError):
    """404: unknown task, wrong kind for a typed path, or someone else's task."""


class Conflict(APIError):
    """409: a `task_id` or `Idempotency-Key` already used otherwise, a download format not asked for."""


class Gone(APIError):
    """410: the input file is gone (retention)."""


class PayloadTooLarge(APIError):
    """413."""


class UnsupportedMediaType(APIError):
    """415."""


class RateLimited(APIError):
    """429: see `retry_after`."""


class ServiceUnavailable(APIError):
    """503: queue full, LLM not configured, ... see `retry_after`."""


class StreamError(OCRClientError):
    """Events could not be followed (the connection kept failing)."""


class WaitTimeout(OCRClientError, TimeoutError):
    """`wait()` gave up before the task was terminal."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_from_response(status_code: int, content: bytes, headers: dict[str, str]) -> APIError:
    try:
        body: Any = json.loads(content)
    except ValueError:
        body = content.decode(errors="replace")[:2000]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return _BY_STATUS.get(status_code, APIError)(status_code, detail, body, headers)
