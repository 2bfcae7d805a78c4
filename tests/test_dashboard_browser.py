"""The operators' dashboard in headless Chromium: it renders, and its cancel button works."""

import pytest
from django.contrib.auth.models import Permission, User

from ocr import services
from tests import factories
from tests.test_ui import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser test: {CHROMIUM} is missing (Debian `chromium`)"),
]


def test_dashboard_renders_and_cancels_a_running_task(live_daphne, no_worker):
    from playwright.sync_api import sync_playwright

    operator = User.objects.create_user("operator", password="secret-pw", is_staff=True)
    for codename in ("view_ocrtask", "change_ocrtask", "cancel_any_task"):
        operator.user_permissions.add(Permission.objects.get(codename=codename))
    task = factories.submit_task()
    services.task_cancel(task=factories.submit_task(), reason="operator test")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(20_000)
        page.goto(f"{live_daphne}/admin/login/?next=/admin/ocr/ocrtask/dashboard/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", "secret-pw")
        page.click("input[type=submit]")
        page.wait_for_selector("svg.ocr-chart")
        assert "operator test" in page.content()  # the reasons chart
        row = page.locator("#running-tasks tr", has_text=str(task.pk))
        row.locator("input[name=reason]").fill("stopped from the dashboard")
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        row.locator("input.ocr-cancel").click()
        page.wait_for_url("**/admin/ocr/ocrtask/dashboard/**")
        page.wait_for_selector("text=Task cancelled")
        assert page.locator("#running-tasks tr", has_text=str(task.pk)).count() == 0
        page.screenshot(path=str(ARTIFACTS / "dashboard-after-cancel.png"), full_page=True)
        browser.close()
    task.refresh_from_db()
    assert task.status == "cancelled" and task.cancelled_by == "admin"
    assert task.cancellation_reason == "stopped from the dashboard"


def test_dashboard_shows_a_rest_cancel_live_without_reload(live_daphne, no_worker):
    from playwright.sync_api import sync_playwright

    from tests.support import post_json

    User.objects.create_user("watcher", password="secret-pw", is_staff=True)
    running = factories.submit_task()  # queued (a started one would be reaped: no worker heartbeats it)
    services.task_cancel(task=factories.submit_task(), reason="before the page opened")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.set_default_timeout(20_000)
        page.goto(f"{live_daphne}/admin/login/?next=/admin/ocr/ocrtask/dashboard/")
        page.fill("#id_username", "watcher")
        page.fill("#id_password", "secret-pw")
        page.click("input[type=submit]")
        page.wait_for_selector("#operator-feed-state:text('live')")
        page.wait_for_selector("#operator-feed tr.feed-cancelled:has-text('before the page opened')")  # replayed
        page.evaluate("window.stillTheSamePage = true")

        status, _ = post_json(live_daphne, f"/v1/ocr/tasks/{running.pk}/cancel", {"reason": "cancelled over REST"})
        assert status == 200
        row = page.wait_for_selector(f"#operator-feed tr.feed-cancelled[data-task-id='{running.pk}']")
        assert "cancelled over REST" in row.inner_text() and "user" in row.inner_text()
        page.wait_for_selector(f"#running-tasks tr.feed-ended[data-task-id='{running.pk}']")
        assert page.evaluate("window.stillTheSamePage") is True  # no reload
        page.screenshot(path=str(ARTIFACTS / "dashboard-live-feed.png"), full_page=True)
        browser.close()
