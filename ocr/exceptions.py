"""Domain errors, and the one place where they become HTTP answers."""

from __future__ import annotations

from django.http import JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


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


class NotAuthenticated(DomainError):
    status_code = 401


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


class RateLimited(DomainError):
    status_code = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.headers = {"Retry-After": str(max(1, int(retry_after)))}


class ServiceUnavailable(DomainError):
    status_code = 503


def error_json(exc: DomainError) -> JsonResponse:
    """The HTTP answer for a domain error, for views outside DRF (async views)."""
    response = JsonResponse(exc.body(), status=exc.status_code)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's handler, extended with the domain errors; validation errors name their field."""
    if isinstance(exc, DomainError):
        return Response(exc.body(), status=exc.status_code, headers=exc.headers)
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        return Response({"detail": str(exc.detail)}, status=401)
    return drf_exception_handler(exc, context)
