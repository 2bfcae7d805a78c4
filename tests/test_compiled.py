"""Queries compiled once (ocr/compiled.py): the same rows as the ORM, new values every call."""

import json
import uuid

import pytest
from django.contrib.auth.models import AnonymousUser, Permission, User
from django.db.models import Q

from ocr import selectors, services
from ocr.compiled import Compiled
from ocr.exceptions import TaskNotFound
from ocr.models import OCRTask
from tests import factories

pytestmark = pytest.mark.django_db


def fields_of(task: OCRTask) -> dict:
    return {field.attname: getattr(task, field.attname) for field in OCRTask._meta.concrete_fields}


def test_a_row_is_the_orms_row_field_by_field_and_each_call_uses_its_own_values():
    by_id = Compiled(OCRTask, lambda shape, pk: OCRTask.objects.filter(pk=pk), pk="id")
    first = factories.submit_task(pages=2, start=True)
    factories.record_page(task_id=first.pk, page_number=1, text="one")
    services.task_cancel(task=first, reason="a reason")  # times, a reason
    services.task_work_stopped(task_id=first.pk)  # its partial result stored: JSON
    second = factories.submit_task("ocr")
    for task in (first, second, first):
        found = by_id.first(pk=task.pk)
        assert fields_of(found) == fields_of(OCRTask.objects.get(pk=task.pk))
        assert found._state.adding is False and found._state.db == "default"
    assert "one" in json.dumps(by_id.first(pk=first.pk).result)  # a JSON field, decoded
    assert by_id.first(pk=uuid.uuid4()) is None


def test_every_value_goes_where_it_is_compared():
    owner, other = User.objects.create_user("ada"), User.objects.create_user("bob")
    task = factories.submit_task(owner=owner)
    mine = Compiled(
        OCRTask,
        lambda shape, pk, owner_id, task_type: OCRTask.objects.filter(
            Q(owner_id=owner_id) | Q(owner__isnull=True), pk=pk, task_type=task_type
        ),
        pk="id",
        owner_id="owner",
        task_type="task_type",
    )
    assert mine.first(pk=task.pk, owner_id=owner.pk, task_type="pdf").pk == task.pk
    assert mine.first(pk=task.pk, owner_id=other.pk, task_type="pdf") is None
    assert mine.first(pk=task.pk, owner_id=owner.pk, task_type="ocr") is None


def test_queries_it_cannot_run_are_refused_when_compiled_a_value_may_be_used_twice():
    task = factories.submit_task()
    only_some = Compiled(OCRTask, lambda shape, pk: OCRTask.objects.filter(pk=pk).only("id"), pk="id")
    with pytest.raises(ValueError, match="whole OCRTask rows"):
        only_some.first(pk=task.pk)
    ignored = Compiled(
        OCRTask, lambda shape, pk, task_type: OCRTask.objects.filter(pk=pk), pk="id", task_type="task_type"
    )
    with pytest.raises(ValueError, match="parameter of its own"):
        ignored.first(pk=task.pk, task_type="pdf")
    twice = Compiled(OCRTask, lambda shape, pk: OCRTask.objects.filter(pk=pk, id__gte=pk), pk="id")
    assert twice.first(pk=task.pk).pk == task.pk  # a value used twice: both places


def test_task_lookups_show_each_viewer_what_the_visibility_rules_give():
    owner, other = User.objects.create_user("ada"), User.objects.create_user("bob")
    staff = User.objects.create_user("root", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="cancel_any_task"))
    owned = factories.submit_task(owner=owner, streaming=True)
    anonymous = factories.submit_task("ocr")
    viewers = {"anonymous": AnonymousUser(), "owner": owner, "other": other, "staff": User.objects.get(pk=staff.pk)}
    for name, user in viewers.items():
        for task in (owned, anonymous):
            for task_type in (None, "pdf", "ocr"):
                for streaming_only in (False, True):
                    expected = set(
                        selectors.visible_rows(
                            user=user, task_id=task.pk, task_type=task_type, streaming_only=streaming_only
                        ).values_list("pk", flat=True)
                    )
                    try:
                        found = {
                            selectors.task_get_for(
                                user=user, task_id=task.pk, task_type=task_type, streaming_only=streaming_only
                            ).pk
                        }
                    except TaskNotFound:
                        found = set()
                    assert found == expected, (name, task.task_type, task_type, streaming_only)
    assert selectors.task_get_for(user=other, task_id=anonymous.pk).pk == anonymous.pk
    assert selectors.task_get_for(user=viewers["staff"], task_id=owned.pk, streaming_only=True).pk == owned.pk
    for user in (AnonymousUser(), other):
        with pytest.raises(TaskNotFound):
            selectors.task_get_for(user=user, task_id=owned.pk)
