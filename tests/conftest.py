"""Shared fixtures: isolated queue names, media, a real qcluster and a live daphne."""

from __future__ import annotations

import base64
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.support import PrivateRedis, free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """Each run gets its own test database, named after its queue (tests/env.py), so that two
    runs never share one; for SQLite a file (not :memory:) that real worker processes share."""
    from django.conf import settings
    from django.db import connections

    db = connections["default"].settings_dict
    name = f"test_{settings.OCR_QUEUE_NAME}"
    db["TEST"]["NAME"] = str(ROOT / f"{name}.sqlite3") if db["ENGINE"].endswith("sqlite3") else name


@pytest.fixture(autouse=True)
def _clean_rate_limits(settings):
    """Rate-limit counters live in Redis; each test starts with none."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = settings.CACHES["default"]["KEY_PREFIX"]
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    yield


@pytest.fixture(scope="session", autouse=True)
def _drop_lingering_connections(django_db_setup, django_db_blocker):
    """Before the test database is dropped, end connections other threads left open (async
    consumers' and helper threads'), or PostgreSQL refuses the DROP and the database lingers."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session", autouse=True)
def _flush_outlasts_a_deadlock():
    """After each transactional test the database is flushed (one TRUNCATE of every table on
    PostgreSQL) while the session's real workers may still write a task's last rows; PostgreSQL
    may then break the deadlock by failing the flush, which fails the test's teardown. The flush
    is tried again (3 times at most): it concerns the next test's clean start, not this one."""
    from django.db import OperationalError
    from django.db.backends.base.operations import BaseDatabaseOperations

    real = BaseDatabaseOperations.execute_sql_flush

    def execute_sql_flush(self, sql_list):
        for attempt in range(1, 4):
            try:
                return real(self, sql_list)
            except OperationalError as exc:
                if attempt == 3:
                    raise
                logging.getLogger(__name__).warning("flush failed (%s), trying again", exc)
                time.sleep(0.5)

    BaseDatabaseOperations.execute_sql_flush = execute_sql_flush
    yield
    BaseDatabaseOperations.execute_sql_flush = real


@pytest.fixture
def private_redis():
    """A redis-server of the test's own (tests.support.PrivateRedis), to restart at will."""
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def no_worker(monkeypatch) -> list:
    """For tests that play the worker themselves through the services: their jobs are not put
    on the queue (a running test cluster would race them); returns the ids that would be."""
    queued: list = []
    monkeypatch.setattr("ocr.services.enqueue_task", lambda task_id: queued.append(str(task_id)))
    return queued


def _test_database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{db['NAME']}"


def service_env() -> dict:
    from django.conf import settings

    return {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "OCR_QUEUE_NAME": settings.OCR_QUEUE_NAME,
        "OCR_WORKERS": str(settings.OCR_WORKERS),
        "OCR_LLM_BASE_URL": LLM_TEST_URL,
        "PYTHONUNBUFFERED": "1",
        "OCR_SSE_KEEPALIVE_SECONDS": "6",  # longer than channels-redis's 5 s blocking read
        "OCR_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{WEBHOOK_TEST_PORT}",
        "OCR_WEBHOOK_SECRET": WEBHOOK_TEST_SECRET,
        "OCR_WEBHOOK_BACKOFF_SECONDS": "0.2",
    }


class Cluster:
    """A real `manage.py qcluster` (and the deadline sweeper) on the test database."""

    def __init__(self, log_dir: Path) -> None:
        self.log_path = log_dir / "qcluster.log"
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        from django_q.brokers import get_broker

        get_broker().purge_queue()
        log = open(self.log_path, "ab")
        for args in (["qcluster"], ["ocr_sweeper", "--interval", "0.2", "--reap-interval", "0.5"]):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", *args],
                    cwd=ROOT,
                    env=service_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 30
        while b"running" not in self.log_path.read_bytes():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError(f"qcluster did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)


@pytest.fixture(scope="session")
def cluster(django_db_setup, django_db_blocker, tmp_path_factory):
    """Real worker processes; tests that use it need `transaction=True`."""
    workers = Cluster(tmp_path_factory.mktemp("cluster"))
    with django_db_blocker.unblock():
        workers.start()
    yield workers
    workers.stop()


# Where workers and daphne find their OpenAI-compatible server, whichever module starts them
# first: tests/test_llm.py serves a fake one on this port (tests/test_llm_real.py the real model).
# The test process's own settings keep OCR_LLM_BASE_URL unset (the 503 checks).
LLM_TEST_PORT = free_port()
LLM_TEST_URL = f"http://127.0.0.1:{LLM_TEST_PORT}/v1"

# Workers and daphne deliver webhooks to tests/test_webhooks.py's receiver on this port only; the
# test process's own settings keep webhooks off (tests turn them on with the `settings` fixture).
WEBHOOK_TEST_PORT = free_port()
WEBHOOK_TEST_SECRET = "whsec_" + base64.b64encode(b"ocrsite webhook test secret 0123").decode()


@pytest.fixture(scope="session")
def receiver():
    """The webhook receiver on 127.0.0.1:WEBHOOK_TEST_PORT (tests/test_webhooks.py says how it answers)."""
    from tests.test_webhooks import Receiver

    server = Receiver(WEBHOOK_TEST_PORT)
    yield server
    server.stop()


def start_daphne(log_dir: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """A real daphne serving the project on the test database (service_env() with `env` on top);
    returns the process and its base URL once it accepts connections."""
    port = free_port()
    log_path = log_dir / "daphne.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "ocrsite.asgi:application"],
        cwd=ROOT,
        env={**service_env(), **env},
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop_process(proc)
                raise RuntimeError(f"daphne did not start: {log_path.read_text()[-2000:]}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def live_daphne(django_db_setup, tmp_path_factory):
    """A real daphne serving the project on the test database; yields its base URL."""
    proc, url = start_daphne(tmp_path_factory.mktemp("daphne"))
    yield url
    stop_process(proc)


def pytest_sessionfinish(session, exitstatus):
    """pytest-django deletes the SQLite test database but not its WAL side files."""
    from django.conf import settings

    name = str(settings.DATABASES["default"].get("TEST", {}).get("NAME") or "")
    for suffix in ("-wal", "-shm"):
        if name.endswith(".sqlite3") and os.path.exists(name + suffix):
            os.remove(name + suffix)
