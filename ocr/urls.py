"""API routes of API.md sections 1, 2 and 4."""

from django.urls import path

from . import views
from .models import TaskType

SUBMIT = [
    ("process", TaskType.OCR, False),
    ("process-with-llm", TaskType.LLM, False),
    ("process-pdf", TaskType.PDF, False),
    ("process-pdf-with-llm", TaskType.PDF_LLM, False),
    ("process-pdf-stream", TaskType.PDF, True),
    ("process-pdf-with-llm-stream", TaskType.PDF_LLM, True),
]
TYPED_PREFIXES = [("llm-tasks", TaskType.LLM), ("pdf-tasks", TaskType.PDF), ("pdf-llm-tasks", TaskType.PDF_LLM)]

urlpatterns = [
    path("health", views.health, name="health"),
    path("service-info", views.service_info, name="service-info"),
    path("parameters", views.parameters, name="parameters"),
    path("metrics", views.metrics_json, name="metrics"),
    path("tasks", views.TaskListView.as_view(), name="task-list"),
    path("tasks/cleanup", views.CleanupView.as_view(), name="task-cleanup"),
    path("tasks/<str:task_id>", views.TaskDetailView.as_view(), name="task-detail"),
    path("tasks/<str:task_id>/cancel", views.CancelView.as_view(), name="task-cancel"),
    path("stream/<str:task_id>", views.stream_events, name="stream"),
    path("stream/<str:task_id>/cancel", views.CancelView.as_view(streaming_only=True), name="stream-cancel"),
]
for slug, task_type, streaming in SUBMIT:
    urlpatterns.append(
        path(slug, views.SubmitView.as_view(task_type=task_type, streaming=streaming), name=f"submit-{slug}")
    )
    if not streaming:
        urlpatterns.append(path(f"{slug}-sync", views.make_sync_view(task_type), name=f"submit-{slug}-sync"))
for prefix, task_type in TYPED_PREFIXES:
    urlpatterns += [
        path(f"{prefix}/<str:task_id>", views.TaskDetailView.as_view(task_type=task_type), name=f"{prefix}-detail"),
        path(f"{prefix}/<str:task_id>/cancel", views.CancelView.as_view(task_type=task_type), name=f"{prefix}-cancel"),
    ]
