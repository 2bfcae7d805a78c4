"""Operators' view: tasks with filters and search, pages and events inline, and cancelling."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse

from . import services
from .exceptions import TaskNotCancellable
from .models import CancelAudit, CancelSource, OCRPage, OCRTask, TaskEvent


class CancelReasonForm(forms.Form):
    reason = forms.CharField(max_length=1000, required=False, widget=forms.Textarea(attrs={"rows": 3}))


def may_cancel(request, task: OCRTask | None = None) -> bool:
    user = request.user
    if user.has_perm("ocr.cancel_any_task"):
        return True
    return task is not None and task.owner_id == user.pk


def cancel_tasks(request, tasks, reason: str) -> tuple[int, int]:
    """Cancel through the one service; returns (cancelled, already finished)."""
    cancelled = finished = 0
    for task in tasks:
        try:
            outcome = services.task_cancel(
                task=task, reason=reason, by=CancelSource.ADMIN, user=request.user, client="admin"
            )
        except TaskNotCancellable:
            finished += 1
            continue
        if outcome.newly_cancelled:
            cancelled += 1
        else:
            finished += 1
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
    readonly_fields = [f.name for f in OCRTask._meta.fields]
    inlines = [OCRPageInline, TaskEventInline]
    actions = ["cancel_selected"]
    change_form_template = "admin/ocr/ocrtask/change_form.html"

    def has_add_permission(self, request) -> bool:
        return False

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
            path("<path:object_id>/cancel/", self.admin_site.admin_view(self.cancel_one), name="ocr_ocrtask_cancel"),
            *super().get_urls(),
        ]

    def cancel_one(self, request, object_id: str):
        task = get_object_or_404(OCRTask, pk=object_id)
        if not may_cancel(request, task):
            raise PermissionDenied
        form = CancelReasonForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            cancelled, _ = cancel_tasks(request, [task], form.cleaned_data["reason"])
            self.message_user(request, "Task cancelled" if cancelled else f"Task was already {task.status}")
            return HttpResponseRedirect(reverse("admin:ocr_ocrtask_change", args=[task.pk]))
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
        "source",
        "user",
        "reason",
        "ran_seconds",
    ]
    list_filter = ["accepted", "source", "task_type", "created_at"]
    search_fields = ["task_id", "reason"]
    readonly_fields = [f.name for f in CancelAudit._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
