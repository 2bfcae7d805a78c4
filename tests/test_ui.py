"""The browser UI in headless Chromium, against a live daphne and real workers.

Screenshots of each state land in tests/artifacts/ (git-ignored) for a human look.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from tests import factories

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DESKTOP = {"width": 1100, "height": 900}
PHONE = {"width": 375, "height": 812}

# Records every WebSocket the page opens, so that a test can drop one and watch the reconnect.
RECORD_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.__sockets.push(this); }
  };
})();
"""

pytestmark = pytest.mark.django_db(transaction=True)
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"browser test: {CHROMIUM} is missing (Debian package `chromium`)"
)


def test_pages_render_and_unknown_tasks_are_404(client):
    index = client.get("/")
    assert index.status_code == 200 and "csrftoken" in index.cookies
    assert client.get("/tasks/").status_code == 200
    assert client.get(f"/tasks/{uuid.uuid4()}/").status_code == 404
    assert client.get("/static/ocr/task.js").status_code == 200


@pytest.fixture
def browser_context(request):
    """A fresh headless Chromium context (its own session cookie) per test.

    Function-scoped on purpose: Playwright's sync API runs an event loop, and Django refuses
    ORM calls (the transactional flush at teardown included) while one is running.
    """
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=DESKTOP)
        # Generous: the workers share the CPU with whatever else runs on the machine.
        context.set_default_timeout(20_000)
        context.add_init_script(RECORD_SOCKETS)
        try:
            yield context
        finally:
            for number, page in enumerate(context.pages):  # the last state, to see what a failure saw
                page.screenshot(path=str(ARTIFACTS / f"last-{request.node.name}-{number}.png"), full_page=True)
            context.close()
            browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True, animations="disabled")


def fits_width(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def page_numbers_shown(page) -> list[int]:
    return [int(n) for n in page.locator("#pages .page").evaluate_all("nodes => nodes.map(n => n.dataset.page)")]


def upload(name: str, data: bytes) -> dict:
    return {"name": name, "mimeType": "application/octet-stream", "buffer": data}


def submit_upload(page, base_url: str, path: Path, *, fill=None) -> str:
    """Fill the upload form, submit it, return the task id from the task page's URL."""
    page.goto(f"{base_url}/")
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.getElementById('file-info').textContent.length > 0")
    if fill:
        fill(page)
    page.click("#submit")
    page.wait_for_url(re.compile(r"/tasks/[0-9a-f-]{36}/$"))
    return page.url.rstrip("/").rsplit("/", 1)[-1]


def assert_pdf_options_hidden(page) -> None:
    assert page.is_hidden("#pdf-options")


@needs_chromium
def test_cancel_a_streaming_pdf_in_the_browser(live_daphne, cluster, browser_context, tmp_path):
    pdf = tmp_path / "slow-scan.pdf"
    pdf.write_bytes(factories.slow_pdf(6))
    reason = "Enough pages for the UI test"
    page = browser_context.new_page()

    def fill(page):
        assert page.is_visible("#pdf-options")
        assert page.is_checked("input[name=streaming]")
        page.fill("input[name=dpi]", "600")
        page.select_option("select[name=text_layer]", "ocr")
        shot(page, "upload-pdf-desktop")

    task_id = submit_upload(page, live_daphne, pdf, fill=fill)

    # Pages arrive live over the WebSocket.
    page.wait_for_selector("#pages .page pre", timeout=45_000)
    first_text = page.locator("#pages .page pre").first.inner_text()
    assert "lorem" in first_text.lower(), first_text
    assert page.locator("#status").inner_text() == "processing"
    assert re.match(r"\d+ / 6", page.locator("#pages-done").inner_text())
    assert "pages/s" in page.locator("#speed").inner_text()

    # Drop the socket: the page reconnects with ?after=<last seq seen> and shows no page twice.
    opened = page.evaluate("window.__sockets.length")
    page.evaluate("window.__sockets.at(-1).close(4000, 'test drop')")
    page.wait_for_function(f"window.__sockets.length > {opened} && window.__sockets.at(-1).readyState === 1")
    after = int(page.evaluate("new URL(window.__sockets.at(-1).url).searchParams.get('after')"))
    assert after >= 3  # pending, processing, at least one page
    page.wait_for_function("document.getElementById('connection').textContent === 'live'")
    shot(page, "task-processing-desktop")

    page.click("#cancel-open")
    page.fill("#cancel-reason", reason)
    shot(page, "task-cancel-form-desktop")
    page.click("#cancel-confirm")
    page.wait_for_function("document.getElementById('status').textContent === 'cancelled'")
    notice = page.locator("#notice")
    notice.get_by_text(reason).wait_for()
    page.wait_for_function("document.getElementById('connection').textContent === 'finished'")
    assert page.is_hidden("#cancel-open")

    # The API agrees, and the partial pages shown are exactly the stored partial result.
    task = browser_context.request.get(f"{live_daphne}/v1/ocr/tasks/{task_id}").json()
    assert task["status"] == "cancelled"
    assert task["cancellation_reason"] == reason
    stored = sorted(r["page_number"] for r in task["result"]["results"])
    assert 1 <= len(stored) < 6, stored
    page.wait_for_function(f"document.querySelectorAll('#pages .page').length === {len(stored)}")
    assert page_numbers_shown(page) == stored  # in page order, none twice
    assert f"Partial result: {task['progress']['processed_pages']} of 6 pages" in notice.inner_text()
    shot(page, "task-cancelled-desktop")

    # A terminal task still shows its final state after a reload, on a phone too.
    page.set_viewport_size(PHONE)
    page.reload()
    page.wait_for_function("document.getElementById('connection').textContent === 'finished'")
    assert page.locator("#status").inner_text() == "cancelled"
    assert reason in page.locator("#notice").inner_text()
    assert sorted(page_numbers_shown(page)) == stored
    assert fits_width(page)
    shot(page, "task-cancelled-phone")


@needs_chromium
def test_a_completed_image_shows_its_text_and_is_listed(live_daphne, cluster, browser_context, tmp_path):
    image = tmp_path / "hello.png"
    image.write_bytes(factories.text_image("Hello OCR world"))
    page = browser_context.new_page()

    task_id = submit_upload(page, live_daphne, image, fill=assert_pdf_options_hidden)
    page.wait_for_function("document.getElementById('status').textContent === 'completed'", timeout=45_000)
    page.locator("#pages .page pre").get_by_text("Hello OCR world").wait_for()
    assert page.locator("#pages-done").inner_text() == "1 / 1"
    assert page.is_hidden("#cancel-open")
    shot(page, "task-completed-desktop")

    # Two more tasks of this browser session, through the API: a PDF, and one cancelled at once.
    api = browser_context.request
    pdf = api.post(f"{live_daphne}/v1/ocr/process-pdf", multipart={"file": upload("text.pdf", factories.text_pdf(2))})
    slow = api.post(f"{live_daphne}/v1/ocr/process-pdf", multipart={"file": upload("slow.pdf", factories.slow_pdf(2))})
    assert pdf.status == slow.status == 202
    cancel = api.post(f"{live_daphne}/v1/ocr/tasks/{slow.json()['task_id']}/cancel", data={"reason": "Not needed"})
    assert cancel.status == 200

    page.goto(f"{live_daphne}/tasks/")
    row = page.locator(f"a.task-row[data-task-id='{task_id}']")
    row.wait_for()
    assert "completed" in row.inner_text()
    cancelled_row = page.locator(f"a.task-row[data-task-id='{slow.json()['task_id']}']")
    assert "cancelled" in cancelled_row.inner_text() and "Not needed" in cancelled_row.inner_text()
    assert page.locator("a.task-row").count() == 3
    shot(page, "task-list-desktop")

    page.set_viewport_size(PHONE)
    assert fits_width(page)
    shot(page, "task-list-phone")
    row.click()
    page.wait_for_function("document.getElementById('status').textContent === 'completed'")
    assert fits_width(page)
    shot(page, "task-completed-phone")
    page.goto(f"{live_daphne}/")
    assert fits_width(page)
    shot(page, "upload-phone")

    task = browser_context.request.get(f"{live_daphne}/v1/ocr/tasks/{task_id}").json()
    assert task["status"] == "completed"
    assert "Hello OCR world" in task["result"]["extracted_text"]


@needs_chromium
def test_the_upload_form_reports_api_errors(live_daphne, browser_context, tmp_path):
    """A request the API refuses (here: a page out of range) is explained on the form."""
    pdf = tmp_path / "two-pages.pdf"
    pdf.write_bytes(factories.text_pdf(2))
    page = browser_context.new_page()
    page.goto(f"{live_daphne}/")
    page.set_input_files("#file", str(pdf))
    page.fill("input[name=page_select]", "1, 5")
    page.click("#submit")
    error = page.locator("#form-error")
    error.get_by_text("page 5 is out of range").wait_for()
    assert page.url == f"{live_daphne}/"
    page.fill("input[name=page_select]", "1-")
    page.click("#submit")
    error.get_by_text('"1-" is not a page number').wait_for()


@pytest.mark.django_db
def test_without_anonymous_access_any_user_signs_in_to_the_ui(settings):
    from django.contrib.auth.models import User
    from django.test import Client

    settings.OCR_ALLOW_ANONYMOUS = False
    User.objects.create_user("reader", password="pw-for-tests")  # not staff
    browser = Client()
    response = browser.get("/tasks/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=/tasks/")
    assert browser.get(response["Location"]).status_code == 200
    response = browser.post("/accounts/login/", {"username": "reader", "password": "pw-for-tests", "next": "/tasks/"})
    assert response.status_code == 302 and response["Location"] == "/tasks/"
    assert browser.get("/tasks/").status_code == 200
    assert browser.get("/v1/ocr/tasks").status_code == 200  # the session works for the API too


@needs_chromium
def test_outputs_chosen_on_the_form_are_offered_for_download(live_daphne, cluster, browser_context, tmp_path):
    image = tmp_path / "scan.png"
    image.write_bytes(factories.text_image("Searchable image text"))
    page = browser_context.new_page()

    def fill(page):
        assert page.is_checked("input[name=outputs][value=text]")
        page.check("input[name=outputs][value=pdf]")
        page.check("input[name=outputs][value=words]")
        page.select_option("select[name=rotate]", "auto")
        assert page.is_hidden("input[name=threshold]")  # "auto" needs no number
        page.select_option("select[name=threshold_mode]", "global")
        page.fill("input[name=threshold]", "0")
        shot(page, "upload-outputs-desktop")

    task_id = submit_upload(page, live_daphne, image, fill=fill)
    page.wait_for_selector("#downloads-section:not([hidden])", timeout=45_000)
    formats = page.locator("#downloads a").evaluate_all("nodes => nodes.map(n => n.dataset.format)")
    assert formats == ["text", "pdf", "words", "json"]
    assert re.match(r"\d+% conf\.", page.locator("#pages .page .confidence").inner_text())
    shot(page, "task-downloads-desktop")
    response = page.request.get(f"{live_daphne}/v1/ocr/tasks/{task_id}/download?format=pdf")
    assert response.ok and response.body().startswith(b"%PDF") and response.headers["ocr-pages"] == "1/1"
    params = page.request.get(f"{live_daphne}/v1/ocr/tasks/{task_id}").json()
    assert params["result"]["threshold_used"] == 0 and params["result"]["rotation"] == 0
