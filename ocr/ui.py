"""The browser UI: upload page, live task page and task list.

The pages are plain HTML; their scripts (ocr/static/ocr/*.js) talk only to the public API
(REST and the WebSocket), so the UI sees exactly what any other client sees.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie

from . import engine, outputs, selectors
from .exceptions import TaskNotFound
from .params import PARAMETER_RANGES

logger = logging.getLogger(__name__)

# The outputs a person can ask for on the upload form, as the form names them.
OUTPUT_CHOICES = [
    ("text", "Plain text"),
    ("pdf", "Searchable PDF"),
    ("words", "Words with positions (JSON)"),
    ("hocr", "hOCR"),
    ("alto", "ALTO XML"),
    ("tsv", "TSV"),
]

# Stands for the task id in URL templates that the scripts fill in.
TASK_ID_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


def _login_required(request: HttpRequest) -> HttpResponse | None:
    """Without anonymous access the API answers 401, so send the visitor to log in first."""
    if settings.OCR_ALLOW_ANONYMOUS or request.user.is_authenticated:
        return None
    return redirect_to_login(request.get_full_path(), login_url=reverse("login"))


def _languages() -> tuple[str, ...]:
    try:
        return engine.tesseract_languages()
    except Exception:  # tesseract missing: the form still works, the API names the problem
        logger.warning("could not list tesseract languages", exc_info=True)
        return ()


@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    if redirect := _login_required(request):
        return redirect
    context = {
        "nav": "upload",
        "ranges": PARAMETER_RANGES,
        "languages": _languages(),
        "output_choices": OUTPUT_CHOICES,
        "task_id_placeholder": TASK_ID_PLACEHOLDER,
    }
    return render(request, "ocr/index.html", context)


@ensure_csrf_cookie
def task_page(request: HttpRequest, task_id) -> HttpResponse:
    if redirect := _login_required(request):
        return redirect
    try:
        task = selectors.task_get_for(user=request.user, task_id=task_id)
    except TaskNotFound:
        raise Http404(f"Task {task_id} not found") from None
    requested = task.parameters.outputs
    downloads = [(name, label) for name, label in OUTPUT_CHOICES if outputs.is_available(name, requested)]
    downloads.append(("json", "Task JSON"))
    context = {
        "nav": "tasks",
        "task": task,
        "task_id": task.pk,
        "kind": task.kind.ui_label,
        "task_id_placeholder": TASK_ID_PLACEHOLDER,
        "downloads": downloads,
    }
    return render(request, "ocr/task.html", context)


@ensure_csrf_cookie
def task_list(request: HttpRequest) -> HttpResponse:
    if redirect := _login_required(request):
        return redirect
    context = {
        "nav": "tasks",
        "task_id_placeholder": TASK_ID_PLACEHOLDER,
        "page_size": settings.REST_FRAMEWORK.get("PAGE_SIZE") or 20,
    }
    return render(request, "ocr/task_list.html", context)
