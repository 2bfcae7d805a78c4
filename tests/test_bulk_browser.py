"""Bulk cancel on the task list and the resume button of a cancelled PDF task, in headless Chromium."""

import pytest
from django.contrib.auth.models import User

from ocr import services
from ocr.models import OCRTask
from tests import factories
from tests.support import tesseract_pids, wait_for
from tests.test_ui import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser test: {CHROMIUM} is missing (Debian `chromium`)"),
]


def test_bulk_cancel_confirms_the_count_and_resume_opens_the_new_task(live_daphne, no_worker):
    from playwright.sync_api import sync_playwright

    user = User.objects.create_user("reader", password="secret-pw", is_staff=True)  # staff: the admin login
    active = [factories.submit_task("pdf", owner=user, pages=2) for _ in range(3)]
    done = factories.submit_task("ocr", owner=user)
    services.task_cancel(task=done)
    other = factories.submit_task("pdf", owner=User.objects.create_user("other"))
    dialogs: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(20_000)
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
        page.goto(f"{live_daphne}/admin/login/?next=/tasks/")
        page.fill("#id_username", "reader")
        page.fill("#id_password", "secret-pw")
        page.click("input[type=submit]")
        page.wait_for_selector("#bulk-cancel:visible")
        page.click("#bulk-cancel")
        page.wait_for_selector("text=3 tasks cancelled.")
        page.screenshot(path=str(ARTIFACTS / "bulk-cancel.png"), full_page=True)
        assert dialogs == ["Cancel 3 tasks?"]
        page.goto(f"{live_daphne}/tasks/{active[0].pk}/")
        page.wait_for_selector("#resume:visible")
        page.click("#resume")
        page.wait_for_url(lambda url: str(active[0].pk) not in url)
        new_id = page.url.rstrip("/").rsplit("/", 1)[-1]
        page.goto(f"{live_daphne}/tasks/{done.pk}/")  # an image task: no resume
        page.wait_for_selector("#status.badge-cancelled")
        assert page.locator("#resume").is_hidden()
        browser.close()
    assert all(OCRTask.objects.get(pk=t.pk).status == "cancelled" for t in active)
    # another user's task is never touched (a worker may have started it meanwhile: jobs start
    # the first pending task in the start order, whoever queued them)
    assert OCRTask.objects.get(pk=other.pk).status != "cancelled"
    # leave no work running into the next test (its database flush would wait on the worker)
    for task in OCRTask.objects.filter(status__in=("pending", "processing")):
        services.task_cancel_if_active(task_id=task.pk, reason="test over", cancelled_by="user")
    wait_for(lambda: not tesseract_pids(), timeout=10)
    wait_for(
        lambda: (
            not OCRTask.objects.filter(status="cancelled", started_at__isnull=False, work_stopped_at__isnull=True)
            .exclude(pk=done.pk)
            .exists()
        ),
        timeout=30,  # each job notices the cancel and ends (slower on a loaded machine)
    )
    assert str(OCRTask.objects.get(pk=new_id).resumed_from) == str(active[0].pk)
