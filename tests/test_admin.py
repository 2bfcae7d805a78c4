"""The operators' admin: list, filters, search, cancel action with a reason, cancel button."""

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from ocr import services
from ocr.models import CancelAudit, OCRTask, PageSource
from tests import factories

pytestmark = pytest.mark.django_db


def make_task(**kwargs) -> OCRTask:
    return factories.submit_task(**kwargs)


def completed_task() -> OCRTask:
    task = make_task()
    services.task_start(task_id=task.pk, total_pages=1)
    factories.record_page(task_id=task.pk, page_number=1, text="x", source=PageSource.OCR, processing_time=0.1)
    services.task_finish(task_id=task.pk)
    return task


def staff_client(with_permission: bool) -> Client:
    user = User.objects.create_user(f"op{with_permission}", password="pw", is_staff=True)
    for codename in ("view_ocrtask", "change_ocrtask", "view_cancelaudit"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    if with_permission:
        user.user_permissions.add(Permission.objects.get(codename="cancel_any_task"))
    client = Client()
    client.force_login(user)
    return client


def test_action_asks_for_a_reason_then_cancels_and_reports():
    client = staff_client(True)
    active = [make_task(), make_task()]
    done = completed_task()
    ids = [str(t.pk) for t in [*active, done]]
    url = "/admin/ocr/ocrtask/"
    page = client.post(url, {"action": "cancel_selected", "_selected_action": ids})
    assert page.status_code == 200 and b"Cancel 3 tasks?" in page.content
    assert OCRTask.objects.filter(status="cancelled").count() == 0
    response = client.post(
        url,
        {"action": "cancel_selected", "_selected_action": ids, "confirm": "1", "reason": "maintenance"},
        follow=True,
    )
    assert b"2 cancelled, 1 already finished" in response.content
    for task in active:
        task.refresh_from_db()
        assert task.status == "cancelled" and task.cancelled_by == "admin"
        assert task.cancellation_reason == "maintenance" and task.cancelled_by_user.username == "opTrue"
    assert OCRTask.objects.get(pk=done.pk).status == "completed"
    assert CancelAudit.objects.filter(cancelled_by="admin").count() == 3


def test_action_needs_the_permission():
    client = staff_client(False)
    task = make_task()
    response = client.post(
        "/admin/ocr/ocrtask/",
        {"action": "cancel_selected", "_selected_action": [str(task.pk)], "confirm": "1", "reason": "x"},
        follow=True,
    )
    assert b"You need the permission" in response.content
    assert OCRTask.objects.get(pk=task.pk).status == "pending"


def test_cancel_button_on_the_change_page():
    client = staff_client(True)
    task = make_task()
    change = client.get(f"/admin/ocr/ocrtask/{task.pk}/change/")
    assert change.status_code == 200 and f"/admin/ocr/ocrtask/{task.pk}/cancel/".encode() in change.content
    assert client.get(f"/admin/ocr/ocrtask/{task.pk}/cancel/").status_code == 200
    client.post(f"/admin/ocr/ocrtask/{task.pk}/cancel/", {"reason": "from the button"})
    task.refresh_from_db()
    assert task.status == "cancelled" and task.cancellation_reason == "from the button"
    assert (
        b"/cancel/" not in client.get(f"/admin/ocr/ocrtask/{task.pk}/change/").content.split(b"object-tools")[1][:500]
    )


def test_the_change_page_shows_a_cancelled_task_partial_result_before_its_worker_stores_it():
    client = staff_client(True)
    task = make_task(pages=3)
    services.task_start(task_id=task.pk, total_pages=3)
    factories.record_page(task_id=task.pk, page_number=1, text="kept words", source=PageSource.OCR)
    client.post(f"/admin/ocr/ocrtask/{task.pk}/cancel/", {"reason": "enough"})
    assert OCRTask.objects.get(pk=task.pk).result is None  # its worker's to store
    page = client.get(f"/admin/ocr/ocrtask/{task.pk}/change/").content.decode()
    shown = page.split("<label>Result:</label>", 1)[1].split('<div class="readonly">', 1)[1].split("</div>", 1)[0]
    assert "&quot;extracted_text&quot;: &quot;kept words&quot;" in shown


def test_cancel_button_refused_without_permission():
    client = staff_client(False)
    task = make_task()
    assert client.post(f"/admin/ocr/ocrtask/{task.pk}/cancel/", {"reason": "x"}).status_code == 403
    assert OCRTask.objects.get(pk=task.pk).status == "pending"


def test_list_filters_and_search():
    client = staff_client(True)
    task = make_task()
    services.task_cancel(task=task, reason="customer changed mind")
    other = make_task()
    listing = client.get("/admin/ocr/ocrtask/?status__exact=cancelled")
    assert str(task.pk).encode() in listing.content and str(other.pk).encode() not in listing.content
    found = client.get("/admin/ocr/ocrtask/?q=changed+mind")
    assert str(task.pk).encode() in found.content and str(other.pk).encode() not in found.content
    assert client.get(f"/admin/ocr/ocrtask/?q={other.pk}").status_code == 200
    assert client.get("/admin/ocr/cancelaudit/").status_code == 200
