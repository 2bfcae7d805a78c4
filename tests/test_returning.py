"""ocr.returning.update_returning: the row an UPDATE changed, as the ORM would read it."""

import pytest
from django.db.models import F
from django.utils import timezone

from ocr.models import OCRTask, TaskStatus
from ocr.returning import update_returning

from . import factories


def fields(task: OCRTask) -> dict:
    return {field.attname: getattr(task, field.attname) for field in OCRTask._meta.concrete_fields}


@pytest.mark.django_db
def test_the_returned_row_is_the_row_the_orm_reads_after_the_update(no_worker):
    task = factories.submit_task(pages=3, start=True)
    factories.record_page(task_id=task.pk, page_number=1, text="Grüße ✓")
    OCRTask.objects.filter(pk=task.pk).update(result={"pages": [{"text": "Grüße ✓"}]}, warnings=["w"])
    rows = OCRTask.objects.filter(pk=task.pk, status__in=[TaskStatus.PROCESSING])
    now = timezone.now()
    returned = update_returning(
        rows, event_seq=F("event_seq") + 1, status=TaskStatus.CANCELLED, cancelled_at=now, cancellation_reason="r"
    )
    read = OCRTask.objects.get(pk=task.pk)
    assert fields(returned) == fields(read)
    assert returned.status == TaskStatus.CANCELLED and returned.cancelled_at == now
    assert returned.event_seq == task.event_seq + 2  # the page's event, then this update's
    assert returned.result == {"pages": [{"text": "Grüße ✓"}]} and returned.warnings == ["w"]
    assert returned._state.adding is False and returned._state.db == "default"


@pytest.mark.django_db
def test_nothing_matched_changes_nothing_and_returns_none(no_worker):
    task = factories.submit_task()
    rows = OCRTask.objects.filter(pk=task.pk, status__in=[TaskStatus.PROCESSING])
    assert update_returning(rows, status=TaskStatus.CANCELLED) is None
    assert OCRTask.objects.get(pk=task.pk).status == TaskStatus.PENDING
