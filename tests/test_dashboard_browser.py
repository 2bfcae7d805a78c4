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
