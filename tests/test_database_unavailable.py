"""A database that cannot be reached (restarting, failing over, out of connections) answers 503
with `Retry-After`, not 500: the request was fine and can be sent again (ocr/exceptions.py
`server_error`). The failure is real: the test's own connection is pointed at a closed port
(PostgreSQL) or a folder that does not exist (SQLite), and reconnects to the real one after."""

from contextlib import contextmanager

import pytest
from django.db import connection
from django.test import Client

from tests import factories
from tests.support import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_worker")]


@contextmanager
def database_unreachable():
    db = connection.settings_dict
    saved = {key: db[key] for key in ("NAME", "PORT")}
    connection.close()
    if connection.vendor == "postgresql":
        db["PORT"] = str(free_port())  # nothing listens there
    else:
        db["NAME"] = "/nonexistent-folder/db.sqlite3"
    try:
        yield
    finally:
        connection.close()
        db.update(saved)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_unreachable_database_is_a_503_with_retry_after_on_the_api(method):
    task = factories.submit_task(pages=1)
    client = Client(raise_request_exception=False)
    path = f"/v1/ocr/tasks/{task.pk}" + ("/cancel" if method == "POST" else "")
    with database_unreachable():
        response = client.generic(method, path)
    assert response.status_code == 503, response.content
    assert response["Retry-After"] == "2"
    assert "database" in response.json()["detail"]
    assert client.get(f"/v1/ocr/tasks/{task.pk}").status_code == 200  # back once it is reachable


def test_outside_the_api_it_is_a_plain_503():
    client = Client(raise_request_exception=False)
    client.cookies["sessionid"] = "a" * 32  # the admin reads the session from the database
    with database_unreachable():
        response = client.get("/admin/")
    assert response.status_code == 503 and response["Retry-After"] == "2"
    assert b"database" in response.content
