"""Queries compiled once (ocr/compiled.py): the same rows as the ORM, new values every call."""

import json
import uuid

import pytest
from django.contrib.auth.models import AnonymousUser, Permission, User
from django.db.models import Q

from ocr import selectors, services
from ocr.compiled import Compiled, CompiledUpdate
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


def cancel_of(shape, *, pk, reason, user_id=None):
    rows = OCRTask.objects.filter(pk=pk, status__in=("pending", "processing"))
    return rows, {"status": "cancelled", "cancellation_reason": reason, "cancelled_by_user_id": user_id}


def test_an_update_returns_the_row_it_changed_with_the_values_of_its_call():
    cancel = CompiledUpdate(OCRTask, cancel_of, pk="id", reason="cancellation_reason", user_id="cancelled_by_user")
    user = User.objects.create_user("ada")
    first, second = factories.submit_task(pages=2, start=True), factories.submit_task("ocr")
    changed = cancel.update_returning(pk=first.pk, reason="first reason", user_id=user.pk)
    assert fields_of(changed) == fields_of(OCRTask.objects.get(pk=first.pk))
    assert (changed.status, changed.cancellation_reason, changed.cancelled_by_user_id) == (
        "cancelled",
        "first reason",
        user.pk,
    )
    assert changed.params == first.params and changed._state.adding is False  # JSON decoded, a saved row
    changed = cancel.update_returning(pk=second.pk, reason="second reason")  # no user: NULL written
    assert (changed.pk, changed.cancellation_reason, changed.cancelled_by_user_id) == (second.pk, "second reason", None)
    assert cancel.update_returning(pk=first.pk, reason="again") is None  # its condition no longer holds
    assert OCRTask.objects.get(pk=first.pk).cancellation_reason == "first reason"


def test_an_update_of_more_than_one_row_is_refused():
    every = CompiledUpdate(
        OCRTask,
        lambda shape, reason: (OCRTask.objects.all(), {"cancellation_reason": reason}),
        reason="cancellation_reason",
    )
    factories.submit_task(), factories.submit_task()
    with pytest.raises(ValueError, match="changed 2 rows"):
        every.update_returning(reason="all of them")


def test_a_cancel_changes_only_a_task_its_caller_sees_on_its_path():
    owner, other = User.objects.create_user("ada"), User.objects.create_user("bob")
    task = factories.submit_task(owner=owner)
    for user, task_type in ((other, None), (AnonymousUser(), None), (owner, "ocr")):
        lookup = selectors.task_lookup(user=user, task_id=task.pk, task_type=task_type)
        with pytest.raises(OCRTask.DoesNotExist):
            services.task_cancel_visible(lookup=lookup, reason="not mine", user=user)
    assert OCRTask.objects.get(pk=task.pk).status == "pending"
    lookup = selectors.task_lookup(user=owner, task_id=task.pk, task_type="pdf")
    outcome = services.task_cancel_visible(lookup=lookup, reason="mine", user=owner)
    assert outcome.newly_cancelled and outcome.task.cancelled_by_user_id == owner.pk
    assert outcome.task.cancelled_at is not None and outcome.task.cancelled_at >= outcome.task.created_at
