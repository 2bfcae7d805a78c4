"""The database drops every connection mid-task, as a PostgreSQL restart or failover does: the
task is handed back with its finished pages and completed, not failed ("Internal error").

PostgreSQL only: `pg_terminate_backend` ends the workers' connections on the test database
exactly as a restart does (SQLite has no server to lose). `make chaos` restarts a whole cluster.
"""

import pytest
from django.db import connection
from rest_framework.test import APIClient

from tests import factories
from tests.support import tesseract_pids, wait_for
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
