"""Domain errors, and the one place where they (and DRF's own errors) become HTTP answers."""

from __future__ import annotations

import logging
import sys

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)

DATABASE_RETRY_AFTER = 2  # seconds: a restart, a failover, or connections all taken


class DomainError(Exception):
    status_code = 400

    def __init__(self, detail: str, **extra) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}

    def body(self) -> dict:
        return {"detail": self.detail, **self.extra}


class InvalidInput(DomainError):
    status_code = 400


class TaskNotFound(DomainError):
    status_code = 404

    def __init__(self, task_id: object = None) -> None:
        super().__init__(f"Task {task_id} not found" if task_id else "Task not found")


class TaskConflict(DomainError):
    status_code = 409


class PayloadTooLarge(DomainError):
    status_code = 413


class UnsupportedMediaType(DomainError):
    status_code = 415


class TaskNotCancellable(DomainError):
    """The task already reached completed or failed."""

    status_code = 400

    def __init__(self, task_id: object, status: str) -> None:
        super().__init__(f"Task {task_id} is already {status}", status=status)


class BatchNotCancellable(DomainError):
    """Every task of the batch had already finished (and the batch was not cancelled)."""

    status_code = 400

    def __init__(self, batch_id: object, status: str) -> None:
        super().__init__(f"Batch {batch_id} is already {status}", status=status)


class BatchNotFound(DomainError):
    status_code = 404

    def __init__(self, batch_id: object = None) -> None:
        super().__init__(f"Batch {batch_id} not found")


class InputGone(DomainError):
    """The task's input file was deleted (retention): it cannot be run again."""

    status_code = 410


class ServiceUnavailable(DomainError):
    """The service cannot take this now (LLM not configured, too busy); 503, `Retry-After` when known."""

    status_code = 503

    def __init__(self, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        if retry_after is not None:
            self.headers = {"Retry-After": str(retry_after)}


def _as_response_parts(exc: Exception) -> tuple[dict, int, dict] | None:
    if isinstance(exc, DomainError):
        return exc.body(), exc.status_code, exc.headers
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        return {"detail": str(exc.detail)}, 401, {}
    if isinstance(exc, drf_exceptions.Throttled):
        headers = {"Retry-After": str(max(1, int(exc.wait or 1)))}
        return {"detail": str(exc.detail)}, 429, headers
    return None


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's handler, extended with the domain errors; validation errors name their field."""
    parts = _as_response_parts(exc)
    if parts is not None:
        body, status, headers = parts
        return Response(body, status=status, headers=headers)
    return drf_exception_handler(exc, context)


def bad_request(request, exception):
    """Django's own 400s (a multipart body with too many files or fields, a suspicious request),
    answered in JSON on the API like every other error there (ocrsite/urls.py handler400)."""
    if not request.path.startswith("/v1/"):
        return defaults.bad_request(request, exception)
    detail = str(exception) if isinstance(exception, RequestDataTooBig | TooManyFieldsSent | TooManyFilesSent) else ""
    return JsonResponse({"detail": detail or "Bad request"}, status=400)


def server_error(request):
    """Django's own 500s (ocrsite/urls.py handler500), for errors nothing else answered. A
    database that cannot be reached (restarting, failing over, out of connections: "too many
    clients already") is not the request's fault nor a bug: 503 with `Retry-After`, and the
    request can be sent again. JSON on the API; Django's page elsewhere."""
    exc = sys.exc_info()[1]
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("%s %s: database unavailable (503): %s", request.method, request.path, exc)
        unavailable = ServiceUnavailable("The database cannot be reached; retry shortly", DATABASE_RETRY_AFTER)
        if request.path.startswith("/v1/"):
            return error_json(unavailable)
        return HttpResponse(f"Service unavailable: {unavailable.detail}.", status=503, headers=unavailable.headers)
    if request.path.startswith("/v1/"):
        return JsonResponse({"detail": "Internal server error"}, status=500)
    return defaults.server_error(request)


def error_json(exc: Exception) -> JsonResponse | None:
    """The same answer for views outside DRF (the async views); None for an unexpected error."""
    parts = _as_response_parts(exc)
    if parts is None:
        if isinstance(exc, drf_exceptions.APIException):
            parts = {"detail": str(exc.detail)}, exc.status_code, {}
        else:
            return None
    body, status, headers = parts
    response = JsonResponse(body, status=status)
    for name, value in headers.items():
        response[name] = value
    return response
