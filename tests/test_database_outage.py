"""The database drops every connection mid-task, as a PostgreSQL restart or failover does: the
task is handed back with its finished pages and completed, not failed ("Internal error").

PostgreSQL only: `pg_terminate_backend` ends the workers' connections on the test database
exactly as a restart does (SQLite has no server to lose). `make chaos` restarts a whole cluster.
"""

import logging
import select
import threading

import psycopg
import pytest
from django.db import connection
from rest_framework.test import APIClient

from ocr import tasks
from tests import factories
from tests.conftest import start_daphne
from tests.support import http_request, stop_process, tesseract_pids, wait_for
from tests.test_worker import assert_event_log, submit, wait_mid_page, wait_status

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="needs a PostgreSQL server"),
]


def terminate_other_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.rowcount


def test_a_task_whose_database_connections_die_mid_task_completes(cluster):
    task_id = submit(APIClient(), "/v1/ocr/process-pdf", factories.slow_pdf(2), {"dpi": 300, "text_layer": "ocr"})
    wait_mid_page(task_id)
    assert terminate_other_connections() >= 2  # at least the job's and its cancel watcher's
    task = wait_status(task_id, ["completed", "failed", "cancelled"], timeout=180)
    assert task.status == "completed", task.error_message
    assert task.processed_pages == 2
    assert_event_log(task_id, "completed")
    assert "lost the database" in cluster.log()
    wait_for(lambda: not tesseract_pids(), timeout=10)


def _other_connection(dbname: str | None = None) -> psycopg.Connection:
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    if dbname:
        params["dbname"] = dbname
    return psycopg.connect(**params, autocommit=True)


def test_a_job_that_cannot_reach_the_database_waits_for_it_then_runs_its_task(no_worker, caplog):
    """A job that starts while the database is away (a restart: no new connection is accepted)
    waits for it and runs its task; it used to fail, leaving the task pending until the sweeper
    queued it again (OCR_PENDING_REQUEUE_SECONDS, a minute by default)."""
    task = factories.submit_task("pdf")
    name = connection.settings_dict["NAME"]
    with _other_connection("postgres") as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        back = threading.Timer(1.0, lambda: admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        try:
            connection.close()  # the job's next query needs a new connection: refused for 1 s
            back.start()
            with caplog.at_level(logging.WARNING, logger="ocr.tasks"):
                tasks.process_task(str(task.pk))
        finally:
            back.join()
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    task.refresh_from_db()
    assert task.status == "completed", task.error_message
    assert "its job cannot reach the database" in caplog.text


def test_a_kept_connection_is_checked_without_a_query_and_one_the_server_ended_is_replaced():
    """The health check before each request's first query (CONN_HEALTH_CHECKS) sends no
    `SELECT 1` to a connection with nothing to read (ocrsite/postgresql): the backend's last
    query stays the one before. Ended by the server, the connection is found unusable."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'before the check'")
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    with _other_connection() as other:
        assert connection.is_usable()
        last = other.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [backend]).fetchone()[0]
        assert last == "SELECT pg_backend_pid()"
        assert other.execute("SELECT pg_terminate_backend(%s)", [backend]).fetchone()[0]
    assert select.select([connection.connection.fileno()], [], [], 10)[0]  # the server's goodbye came
    assert not connection.is_usable()
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def test_a_web_process_answers_after_the_server_ended_its_connections(tmp_path):
    """A restart or failover ends every kept connection of a web process: its next requests get
    new ones, none fails. Only this daphne's connections end (its application_name)."""
    task = factories.submit_task("pdf")
    proc, url = start_daphne(tmp_path, PGAPPNAME="ocr-test-ended-connections")
    try:
        path = f"/v1/ocr/tasks/{task.pk}"
        assert http_request(url, "GET", path)[0] == 200
        with _other_connection() as other:
            ended = other.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                ["ocr-test-ended-connections"],
            ).fetchall()
        assert ended and all(row[0] for row in ended)
        for _ in range(4):
            status, body = http_request(url, "GET", path)
            assert status == 200, body
    finally:
        stop_process(proc)
