"""The job queue after a Redis restart (ocr/broker.py): workers take jobs again at once.

django-q2's own Redis broker raised from its pusher's dequeue, and the pusher then slept 10 s
before its sentinel replaced it: no job was taken for 10 s after any Redis restart."""

import subprocess
import sys
import time
import uuid

import pytest
import redis

from ocr.broker import RETRY_SECONDS, RedisBroker
from tests.conftest import ROOT, service_env
from tests.support import stop_process, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def broker_on(url: str, list_key: str) -> RedisBroker:
    broker = RedisBroker(list_key=list_key)
    broker.connection = redis.from_url(url)
    return broker


def test_a_dequeue_waits_out_a_lost_redis_and_then_takes_jobs_again(private_redis):
    broker = broker_on(private_redis.url, f"broker-{uuid.uuid4().hex[:8]}")
    broker.enqueue("before")
    assert broker.dequeue() == [(None, b"before")]
    private_redis.stop()
    started = time.monotonic()
    assert broker.dequeue() is None  # no exception: the pusher goes on
    assert time.monotonic() - started >= RETRY_SECONDS * 0.9  # and it does not spin
    private_redis.start()  # empty, on the same port
    broker.enqueue("after")
    assert broker.dequeue() == [(None, b"after")]


def test_a_qcluster_runs_a_job_queued_just_after_a_redis_restart(private_redis, tmp_path, monkeypatch):
    from django_q.conf import Conf
    from django_q.tasks import async_task

    name = f"broker{uuid.uuid4().hex[:8]}"
    log = tmp_path / "qcluster.log"
    env = {**service_env(), "REDIS_URL": private_redis.url, "OCR_QUEUE_NAME": name, "OCR_WORKERS": "1"}
    with open(log, "ab") as out:
        cluster = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: b"running" in log.read_bytes(), timeout=30)
        private_redis.stop()
        time.sleep(1)  # the pusher's blocking read has failed meanwhile
        private_redis.start()
        done = tmp_path / "done"
        monkeypatch.setattr(Conf, "PREFIX", name)  # jobs are signed with their cluster's name
        async_task("pathlib.Path.touch", done, broker=broker_on(private_redis.url, name))
        wait_for(done.exists, timeout=30)  # django-q2's own broker: 10 s after the failed read
        assert b"Redis unreachable" in log.read_bytes(), log.read_text()  # tried again at once
        assert b"Failed to pull task from broker" not in log.read_bytes()  # not given up for 10 s
    finally:
        stop_process(cluster)
