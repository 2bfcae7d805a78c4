"""Operators' view: tasks with filters and search, pages and events inline, and cancelling."""

from __future__ import annotations

import json
import logging

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import escape
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe

from . import bulk, metrics, progress
from .api.serializers import MAX_REASON_LENGTH, CancelInputSerializer
from .models import ACTIVE_STATUSES, CancelAudit, CancelledBy, OCRPage, OCRTask, TaskEvent, WebhookDelivery

logger = logging.getLogger(__name__)


def histogram_rows(hist: dict) -> list[tuple[str, int]]:
    """Cumulative buckets as per-bucket counts, labelled '≤ bound'."""
    rows, previous = [], 0
    for bound, cumulative in hist["buckets"].items():
        rows.append((f"≤ {bound}", cumulative - previous))
        previous = cumulative
    rows.append(("more", hist["count"] - previous))
    return rows


def bars(rows: list[tuple[str, int]], width: int = 420, row_height: int = 22) -> str:
    """A horizontal bar chart as inline SVG (escaped labels, no JavaScript)."""
    top = max([n for _, n in rows] + [1])
    label_width = 170
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {width} {max(1, len(rows)) * row_height}" '
        'role="img" class="ocr-chart">'
    ]
    for i, (label, n) in enumerate(rows):
        y = i * row_height
        length = (width - label_width - 50) * n / top
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="12">{escape(str(label))[:28]}</text>'
            f'<rect x="{label_width}" y="{y + 4}" width="{length:.1f}" height="{row_height - 8}" fill="#417690"/>'
            f'<text x="{label_width + length + 4:.1f}" y="{y + 15}" font-size="12">{n}</text>'
        )
    if not rows:
        parts.append('<text x="0" y="15" font-size="12">no data</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


class CancelReasonForm(forms.Form):
    reason = forms.CharField(max_length=MAX_REASON_LENGTH, required=False, widget=forms.Textarea(attrs={"rows": 3}))

    def clean_reason(self) -> str:
        """The same rules as a REST or WebSocket cancel (one serializer for all three)."""
        serializer = CancelInputSerializer(data={"reason": self.cleaned_data.get("reason")})
        if not serializer.is_valid():
            raise forms.ValidationError(serializer.errors["reason"])
        return serializer.validated_data.get("reason") or ""


def may_cancel(request, task: OCRTask | None = None) -> bool:
    user = request.user
    if user.has_perm("ocr.cancel_any_task"):
        return True
    return task is not None and task.owner_id == user.pk


def cancel_tasks(request, tasks, reason: str) -> tuple[int, int]:
    """Cancel through the bulk service (one services.task_cancel per task); returns (cancelled,
    already finished or cancelled)."""
    ids = [str(task.pk) for task in tasks]
    cancelled = finished = 0
    for start in range(0, len(ids), bulk.MAX_BULK_CANCEL):
        result = bulk.tasks_cancel_many(
            tasks=OCRTask.objects.all(),
            task_ids=ids[start : start + bulk.MAX_BULK_CANCEL],
            reason=reason,
            cancelled_by=CancelledBy.ADMIN,
            user=request.user,
            client="admin",
        )
        cancelled += len(result.cancelled)
        finished += len(result.already_finished) + len(result.already_cancelled)
    return cancelled, finished


class OCRPageInline(admin.TabularInline):
    model = OCRPage
    extra = 0
    can_delete = False
    fields = ["page_number", "success", "source", "processing_time", "error", "text"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class TaskEventInline(admin.TabularInline):
    model = TaskEvent
    extra = 0
    can_delete = False
    fields = ["seq", "type", "created_at", "payload"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(OCRTask)
class OCRTaskAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "task_type",
        "streaming",
        "status",
        "owner",
        "created_at",
        "processed_pages",
        "total_pages",
        "cancelled_by",
    ]
    list_filter = ["status", "task_type", "streaming", "cancelled_by", "created_at"]
    search_fields = ["id", "cancellation_reason", "input_name", "error_message"]
    date_hierarchy = "created_at"
    # the result as clients read it (progress.result_of), in the model's field order
    readonly_fields = fields = ["shown_result" if f.name == "result" else f.name for f in OCRTask._meta.fields]
    inlines = [OCRPageInline, TaskEventInline]
    actions = ["cancel_selected"]
    change_form_template = "admin/ocr/ocrtask/change_form.html"
    change_list_template = "admin/ocr/ocrtask/change_list.html"

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="result")
    def shown_result(self, task: OCRTask) -> str | None:
        """A cancel's partial result too before its stopped worker stores it."""
        result = progress.result_of(task)
        return None if result is None else json.dumps(result, ensure_ascii=False)

    @admin.action(description="Cancel selected tasks")
    def cancel_selected(self, request, queryset):
        if not request.user.has_perm("ocr.cancel_any_task"):
            self.message_user(
                request, "You need the permission 'Can see and cancel any user's OCR task'.", messages.ERROR
            )
            return None
        form = CancelReasonForm(request.POST if "confirm" in request.POST else None)
        if "confirm" in request.POST and form.is_valid():
            cancelled, finished = cancel_tasks(request, queryset, form.cleaned_data["reason"])
            self.message_user(request, f"{cancelled} cancelled, {finished} already finished", messages.SUCCESS)
            return None
        return TemplateResponse(
            request,
            "admin/ocr/ocrtask/cancel_confirmation.html",
            {
                **self.admin_site.each_context(request),
                "tasks": queryset,
                "form": form,
                "opts": self.model._meta,
                "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                "title": "Cancel tasks",
            },
        )

    def get_urls(self):
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard), name="ocr_dashboard"),
            path("<path:object_id>/cancel/", self.admin_site.admin_view(self.cancel_one), name="ocr_ocrtask_cancel"),
            *super().get_urls(),
        ]

    def dashboard(self, request):
        """Figures over a window, charts as server-drawn SVG, running tasks with cancel buttons."""
        if not request.user.is_staff:
            raise PermissionDenied
        try:
            window = max(1, min(int(request.GET.get("window", 60)), 60 * 24 * 90))
        except ValueError:
            window = 60
        data = metrics.snapshot(window)
        rate, finished = metrics.recent_cancellation_rate(settings.OCR_CANCEL_ALERT_MINUTES)
        alert = finished >= settings.OCR_CANCEL_ALERT_MIN_TASKS and rate > settings.OCR_CANCEL_ALERT_RATE
        if alert:
            logger.warning(
                "cancellation rate %.0f%% over the last %d min (%d tasks) exceeds OCR_CANCEL_ALERT_RATE %.0f%%",
                rate * 100,
                settings.OCR_CANCEL_ALERT_MINUTES,
                finished,
                settings.OCR_CANCEL_ALERT_RATE * 100,
            )
        charts = [
            ("Cancellation reasons (top 10)", bars([(r["reason"], r["count"]) for r in data["cancellation_reasons"]])),
            ("Time from start to cancel (s)", bars(histogram_rows(data["time_to_cancel_seconds"]))),
            ("Cancel latency, accepted to work stopped (s)", bars(histogram_rows(data["cancel_latency_seconds"]))),
            ("OCR time per page (s)", bars(histogram_rows(data["ocr_page_seconds"]))),
            ("Tasks by kind", bars([(kind, n) for kind, n in data["tasks"]["submitted"].items()])),
        ]
        running = OCRTask.objects.filter(status__in=ACTIVE_STATUSES).order_by("created_at")[:200]
        return TemplateResponse(
            request,
            "admin/ocr/dashboard.html",
            {
                **self.admin_site.each_context(request),
                "title": "OCR dashboard",
                "data": data,
                "window": window,
                "windows": [15, 60, 360, 1440, 10080],
                "charts": charts,
                "running": running,
                "alert": alert,
                "alert_rate": rate,
                "alert_minutes": settings.OCR_CANCEL_ALERT_MINUTES,
                "alert_threshold": settings.OCR_CANCEL_ALERT_RATE,
                "may_cancel_any": request.user.has_perm("ocr.cancel_any_task"),
                "opts": self.model._meta,
            },
        )

    def cancel_one(self, request, object_id: str):
        task = get_object_or_404(OCRTask, pk=object_id)
        if not may_cancel(request, task):
            raise PermissionDenied
        form = CancelReasonForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            cancelled, _ = cancel_tasks(request, [task], form.cleaned_data["reason"])
            self.message_user(request, "Task cancelled" if cancelled else f"Task was already {task.status}")
            back = request.POST.get("next", "")
            if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
                back = reverse("admin:ocr_ocrtask_change", args=[task.pk])
            return HttpResponseRedirect(back)
        return TemplateResponse(
            request,
            "admin/ocr/ocrtask/cancel_confirmation.html",
            {
                **self.admin_site.each_context(request),
                "tasks": [task],
                "form": form,
                "opts": self.model._meta,
                "single": True,
                "title": "Cancel task",
            },
        )


@admin.register(CancelAudit)
class CancelAuditAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "task_id",
        "task_type",
        "accepted",
        "outcome",
        "cancelled_by",
        "user",
        "reason",
        "ran_seconds",
    ]
    list_filter = ["accepted", "cancelled_by", "task_type", "created_at"]
    search_fields = ["task_id", "reason"]
    readonly_fields = [f.name for f in CancelAudit._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Every webhook attempt, read-only (records of what was sent)."""

    list_display = ["attempted_at", "task", "seq", "type", "attempt", "outcome", "status_code", "duration_ms", "error"]
    list_filter = ["outcome", "type", "attempted_at"]
    search_fields = ["task__id", "webhook_id", "url", "error"]
    list_select_related = ["task"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
