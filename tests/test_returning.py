"""ocr.returning: the row an UPDATE changed, as the ORM would read it; new rows of several models
inserted together, as save() would insert each."""

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ocr.models import CancelAudit, OCRTask, OperatorEvent, TaskEvent, TaskStatus
from ocr.returning import insert_together, update_returning

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


@pytest.mark.django_db
def test_rows_inserted_together_are_the_rows_save_would_insert(no_worker):
    """One statement on PostgreSQL (one round trip), one per row elsewhere; each row gets its
    primary key and its auto_now_add time, and reads back as given."""
    task = factories.submit_task()
    payload = {"text": "Grüße ✓", "quote": 'it\'s "%s" %(x)s'}  # placeholders' look-alikes are data
    event = TaskEvent(task_id=task.pk, seq=99, type="status", payload=payload)
    audit = CancelAudit(
        task_id=task.pk, task_type="pdf", accepted=True, outcome="cancelled", reason="r;", cancelled_by="user",
        status_before="pending", ran_seconds=None,
    )  # fmt: skip
    item = OperatorEvent(type="cancelled", task_id=task.pk, payload=[1, None, "x"])
    with CaptureQueriesContext(connection) as queries:
        insert_together(event, audit, item)
    assert len(queries) == (1 if connection.vendor == "postgresql" else 3)
    for row in (event, audit, item):
        assert row.pk is not None and row._state.adding is False and row.created_at is not None
        read = type(row).objects.get(pk=row.pk)
        assert {f.attname: getattr(read, f.attname) for f in read._meta.concrete_fields} == {
            f.attname: getattr(row, f.attname) for f in row._meta.concrete_fields
        }
    assert TaskEvent.objects.get(pk=event.pk).payload == payload
