"""API routes (API.md sections 1, 2, 4, 5), per kind from the registry."""

from django.urls import path

from ..kinds import KINDS
from . import bulk, cancel, deliveries, download, operations, streams, submit, tasks

urlpatterns = [
    path("health", operations.health, name="health"),
    path("service-info", operations.service_info, name="service-info"),
    path("parameters", operations.parameters, name="parameters"),
    path("metrics", operations.metrics_json, name="metrics"),
    path("tasks", tasks.TaskListView.as_view(), name="task-list"),
    path("tasks/cleanup", operations.CleanupView.as_view(), name="task-cleanup"),
    path("tasks/cancel", bulk.BulkCancelView.as_view(), name="task-bulk-cancel"),
    path("batches", bulk.BatchSubmitView.as_view(), name="batch-submit"),
    path("batches/<str:batch_id>", bulk.BatchDetailView.as_view(), name="batch-detail"),
    path("batches/<str:batch_id>/cancel", bulk.BatchCancelView.as_view(), name="batch-cancel"),
    path("tasks/<str:task_id>", tasks.TaskDetailView.as_view(), name="task-detail"),
    path("tasks/<str:task_id>/cancel", cancel.CancelView.as_view(), name="task-cancel"),
    path("tasks/<str:task_id>/resume", bulk.ResumeView.as_view(), name="task-resume"),
    path("tasks/<str:task_id>/download", download.DownloadView.as_view(), name="task-download"),
    path("tasks/<str:task_id>/deliveries", deliveries.DeliveryListView.as_view(), name="task-deliveries"),
    path("stream/<str:task_id>", streams.stream_events, name="stream"),
    path("events", streams.operator_events, name="operator-events"),
    path("stream/<str:task_id>/cancel", cancel.CancelView.as_view(streaming_only=True), name="stream-cancel"),
]
for kind in KINDS.values():
    slug = kind.submit_slug
    urlpatterns += [
        path(slug, submit.SubmitView.as_view(kind=kind), name=f"submit-{slug}"),
        path(f"{slug}-sync", submit.make_sync_view(kind), name=f"submit-{slug}-sync"),
    ]
    if kind.streamable:
        urlpatterns.append(
            path(f"{slug}-stream", submit.SubmitView.as_view(kind=kind, streaming=True), name=f"submit-{slug}-stream")
        )
    if kind.typed_prefix:
        urlpatterns += [
            path(f"{kind.typed_prefix}/<str:task_id>", tasks.TaskDetailView.as_view(kind=kind)),
            path(f"{kind.typed_prefix}/<str:task_id>/cancel", cancel.CancelView.as_view(kind=kind)),
            path(f"{kind.typed_prefix}/<str:task_id>/resume", bulk.ResumeView.as_view(kind=kind)),
            path(f"{kind.typed_prefix}/<str:task_id>/download", download.DownloadView.as_view(kind=kind)),
        ]
