"""The browser UI: an upload page and a live task page (plain JS, no CDN)."""

from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie


@ensure_csrf_cookie
def index(request):
    return render(request, "ocr/index.html")


@ensure_csrf_cookie
def task_page(request, task_id):
    return render(request, "ocr/task.html", {"task_id": task_id})
