"""The task representation (API.md section 3): TaskSerializer's own to_representation, on fields
shared by every instance, gives what DRF's stock one gives, for tasks in every state."""

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework import serializers
from rest_framework.test import APIRequestFactory

from ocr import services
from ocr.api.serializers import TaskSerializer
from ocr.models import Batch, OCRTask
from tests import factories

pytestmark = pytest.mark.django_db


def stock(task: OCRTask, context: dict) -> dict:
    """DRF's own Serializer.to_representation (fields built for this instance)."""
    serializer = TaskSerializer(task, context=context)
    return serializers.ModelSerializer.to_representation(serializer, task)


def tasks_in_every_state() -> list[OCRTask]:
    user = User.objects.create_user("repr-owner")
    pending = factories.submit_task("pdf", pages=3)
    streaming = factories.submit_task("pdf", pages=2, streaming=True)
    processing = factories.submit_task("pdf", pages=3, start=True)
    factories.record_page(task_id=processing.pk, page_number=1, text="first page")
    completed = factories.submit_task("ocr", start=True)
    factories.record_page(task_id=completed.pk, page_number=1, text="Hello")
    services.task_finish(task_id=completed.pk)
    cancelled = factories.submit_task("pdf", pages=2, start=True, owner=user)
    factories.record_page(task_id=cancelled.pk, page_number=1, text="kept")
    services.task_cancel(task=cancelled, reason="Stop it: ünïcode", user=user)
    failed = factories.submit_task("pdf", pages=1, start=True)
    services.task_fail(task_id=failed.pk, error="broken")
    batch = Batch.objects.create()
    OCRTask.objects.filter(pk=pending.pk).update(
        batch=batch,
        resumed_from=uuid.uuid4(),
        warnings=["The PDF was repaired"],
        worker_host="node-a",
        deadline_at=timezone.now() + timedelta(minutes=5),
        priority=7,
    )
    ids = [pending.pk, streaming.pk, processing.pk, completed.pk, cancelled.pk, failed.pk]
    return [OCRTask.objects.get(pk=pk) for pk in ids]


def test_shared_fields_represent_a_task_as_drf_does():
    request = APIRequestFactory().get("/v1/ocr/tasks/")
    tasks = tasks_in_every_state()
    statuses = set()
    for task in tasks:
        ours = dict(TaskSerializer(task, context={"request": request}).data)
        streams = {key: ours.pop(key) for key in ("stream_url", "ws_url") if key in ours}
        assert bool(streams) == task.streaming  # added after the fields, for streaming tasks
        assert ours == stock(task, {"request": request}), task.status
        assert list(ours) == list(stock(task, {"request": request})), "same keys, same order"
        statuses.add(ours["status"])
    assert statuses == {"pending", "processing", "completed", "cancelled", "failed"}
    first = TaskSerializer(tasks[0], context={"request": request}).data
    assert first["queue_position"] == 1 and first["batch_id"] and first["worker_node"] == "node-a"
    assert first["deadline_at"].endswith("Z") and first["warnings"] == ["The PDF was repaired"]
    assert TaskSerializer(tasks[1], context={"request": request}).data["stream_url"].startswith("http://")
    cancelled = TaskSerializer(tasks[4]).data
    assert cancelled["cancellation_reason"] == "Stop it: ünïcode" and cancelled["result"]["results"]


def test_a_list_shares_its_context_and_fields():
    """One context per list: each item's method fields read it (queue positions)."""
    tasks = [factories.submit_task("pdf", pages=1) for _ in range(3)]
    listed = TaskSerializer(tasks, many=True, context={}).data
    assert [item["queue_position"] for item in listed] == [1, 2, 3]
    assert [item["task_id"] for item in listed] == [str(task.pk) for task in tasks]
