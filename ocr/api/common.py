"""What several API modules need of a request: DRF's view of a plain Django request (for the
async views), who the caller is, and which task a path names."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.exceptions import NotAuthenticated
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request

from .. import selectors
from ..kinds import Kind
from ..models import OCRTask


def drf_request(request: HttpRequest) -> Request:
    """DRF's request (its authentication and multipart parsing) around a plain Django one."""
    return Request(
        request,
        parsers=[MultiPartParser(), FormParser()],
        authenticators=[TokenAuthentication(), SessionAuthentication()],
    )


def refuse_method(request: HttpRequest, allowed: tuple[str, ...]) -> JsonResponse | None:
    """The async views' answer to a method they do not take, as DRF's views give it: 405 with `Allow`."""
    if request.method in allowed:
        return None
    response = JsonResponse({"detail": f'Method "{request.method}" not allowed.'}, status=405)
    response["Allow"] = ", ".join(allowed)
    return response


def require_access(request: Request) -> None:
    """Anonymous callers are refused (401) unless OCR_ALLOW_ANONYMOUS (ocr.permissions for APIViews)."""
    if not settings.OCR_ALLOW_ANONYMOUS and not request.user.is_authenticated:
        raise NotAuthenticated()


def visible_task(request: Request, task_id: str, *, kind: Kind | None = None, streaming_only: bool = False) -> OCRTask:
    """The task a path names, if this caller may see it there (its kind, streaming); else
    TaskNotFound (404), whether the id is unknown, malformed or someone else's."""
    return selectors.task_get_for(
        user=request.user, task_id=task_id, task_type=kind.slug if kind else None, streaming_only=streaming_only
    )


def client_ip(request) -> str:
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def session_key(request) -> str:
    """Anonymous tasks are listed for the browser session that made them."""
    if request.user.is_authenticated:
        return ""
    session = request.session
    if not session.session_key:
        session.save()
    return session.session_key or ""
