"""Rate limits (API.md section 4, OCR_CANCEL_RATE) hold for requests sent at once to a real daphne,
and a Redis that does not answer never turns a cancel into a 500."""

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from rest_framework.test import APIClient

from ocr.models import OCRTask
from tests import factories
from tests.support import connection, free_port


def post_cancel(base_url: str) -> tuple[int, str | None]:
    conn = connection(base_url)
    conn.request(
        "POST", f"/v1/ocr/tasks/{uuid.uuid4()}/cancel", body=b"{}", headers={"Content-Type": "application/json"}
    )
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status, response.getheader("Retry-After")


@pytest.mark.django_db(transaction=True)
def test_cancels_sent_at_once_from_one_address_get_exactly_the_limit(live_daphne):
    """Checked and counted in one atomic step: DRF's cache throttle (read the history, write it
    back) let 29-30 of these through a 20/m limit."""
    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(lambda _: post_cancel(live_daphne), range(60)))
    statuses = [status for status, _ in answers]
    assert statuses.count(404) == 20, statuses  # the default 20/m: unknown tasks, past the limit
    assert statuses.count(429) == 40, statuses
    assert all(int(retry_after) >= 1 for status, retry_after in answers if status == 429)


@pytest.mark.django_db(transaction=True)
def test_cancel_while_redis_does_not_answer_is_done(no_worker, settings, caplog):
    """The rate limit lets the cancel through (logged); the worker's wake-up and the metric are
    lost, the cancel is not: the database is the truth, and the worker's poll sees it."""
    task = factories.submit_task()
    closed = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_URL = closed
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": closed}}
    with caplog.at_level(logging.WARNING):
        response = APIClient().post(f"/v1/ocr/tasks/{task.pk}/cancel", {"reason": "x"}, format="json")
    assert response.status_code == 200, response.content
    assert OCRTask.objects.get(pk=task.pk).status == "cancelled"
    assert "rate limit" in caplog.text and "not checked" in caplog.text
