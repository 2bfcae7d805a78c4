"""Redis beside the database: what waits on the django-q2 broker (depth, task ids of its jobs),
and the wake-up channel through which a cancel reaches the task's worker at once."""

from __future__ import annotations

import functools
import logging
import re
import time

logger = logging.getLogger(__name__)

# The django-q2 job that runs one task (ocr/tasks.py); its only argument is the task id.
PROCESS_TASK_JOB = "ocr.tasks.process_task"


@functools.cache
def broker():
    """The django-q2 broker of this process, with its pool of Redis connections. django-q2 builds
    a new broker, and so opens a new Redis connection, for each job queued or question asked
    without one: a connect and a handshake per submit, the socket left to the garbage collector.
    (redis-py's pool reconnects after a Redis restart, and starts afresh in a forked child.)"""
    from django_q.brokers import get_broker

    return get_broker()


def enqueue(task_id) -> None:
    """Put the task's job on the broker (raises when the broker does not answer)."""
    from django_q.tasks import async_task

    async_task(PROCESS_TASK_JOB, str(task_id), task_name=f"ocr-{task_id}", broker=broker())


def missing_from_queue(task_ids) -> list:
    """Those of `task_ids` whose job is not on the broker's list (re-queue them)."""
    if not task_ids:
        return []
    on_queue = queued_task_ids()
    return [task_id for task_id in task_ids if str(task_id) not in on_queue]


def queue_depth() -> int | None:
    try:
        return broker().queue_size()
    except Exception:
        logger.warning("queue depth unavailable", exc_info=True)
        return None


def queued_task_ids(limit: int = 10000) -> set[str]:
    """Task ids of the jobs still on the broker's list (not yet taken by a cluster)."""
    from django_q.signing import BadSignature, SignedPackage

    queue = broker()
    ids: set[str] = set()
    for raw in queue.connection.lrange(queue.list_key, 0, limit - 1):
        try:
            job = SignedPackage.loads(raw)
        except (BadSignature, Exception):
            continue
        if job.get("func") == PROCESS_TASK_JOB and job.get("args"):
            ids.add(str(job["args"][0]))
    return ids


def redis_run_id(connection=None) -> str | None:
    """The broker's Redis server's run id (the broker's own connection unless `connection`): a
    new one after every restart. None when Redis does not answer."""
    try:
        return (connection or broker().connection).info("server")["run_id"]
    except Exception:
        logger.warning("queue: the broker's Redis does not answer (run id unknown)")
        return None


def _wakeup_channel(task_id) -> str:
    from django.conf import settings

    return f"{settings.OCR_QUEUE_NAME}:task-wakeup:{task_id}"


@functools.lru_cache(maxsize=4)
def redis_client(url: str):
    """One client (connection pool) per process and URL; redis-py resets the pool after a fork."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=1)


WAKE_COMMITTED = b"1"
WAKE_CANCELLED = b"cancelled"  # WAKE_COMMITTED, by a cancel
WAKE_IN_FLIGHT = b"in-flight"


def wake_task_worker(task_id, *, in_flight: bool = False, cancelled: bool = False) -> None:
    """Tell the task's worker to look at its row now (a hint: the row is the truth), and the
    killer of each worker node (ocr/killer.py) to kill the task's OCR processes when a cancel
    sends it (`in_flight`, or `cancelled` once it has committed).

    `in_flight`: sent by a cancel from inside its transaction, once it has written everything,
    just before the commit; the killers kill on it on every database. On PostgreSQL the worker
    kills at once too and then confirms with a lock-waiting read, which returns the moment the
    cancel commits (a cancel rolled back after all re-queues the attempt:
    watcher.CancelWatcher.stop_in_flight). Elsewhere (SQLite: readers never wait for writers)
    the worker's watcher cannot confirm it and waits for the wake-up sent on commit, which must
    always follow; its page killed by the killer waits for that word meanwhile (a cancel rolled
    back: the page is read again, processes.CancelScope.await_verdict). On SQLite the kill so
    starts before the commit: 3-4 ms sooner at the median, up to 20 ms (cancel_latency.py). Sent
    before the cancel's other writes, the kill's work (the killers, the worker, the dying
    tesseract) slowed them down: the answer's p50 by 1.4-2.8 ms, its kill 1-2 ms sooner only.
    In a request both go out from daphne's loop, in order, without the answer waiting for them
    (layer_sender.post_redis): the in-flight one leaves as the commit does."""
    import redis
    from django.conf import settings

    from . import layer_sender

    channel = _wakeup_channel(task_id)
    message = WAKE_IN_FLIGHT if in_flight else WAKE_CANCELLED if cancelled else WAKE_COMMITTED
    what = f"task {task_id}: worker wake-up ({message.decode()})"
    if layer_sender.post_redis("PUBLISH", channel, message, what=what):
        return  # in a request: its answer does not wait for the send
    try:
        redis_client(settings.REDIS_URL).publish(channel, message)
    except redis.RedisError:
        logger.warning("task %s: worker wake-up not sent (its poll will see the change)", task_id)


def _sweeper_channel() -> str:
    from django.conf import settings

    return f"{settings.OCR_QUEUE_NAME}:sweeper-wakeup"


def wake_sweeper() -> None:
    """Tell the sweeper that a new deadline exists (it sleeps until the next one is due)."""
    import redis
    from django.conf import settings

    try:
        redis_client(settings.REDIS_URL).publish(_sweeper_channel(), b"1")
    except redis.RedisError:
        logger.warning("sweeper wake-up not sent (it wakes on its own within its interval)")


def subscribe_sweeper_wakeups():
    import redis
    from django.conf import settings

    try:
        pubsub = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=None).pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(_sweeper_channel())
        return pubsub
    except redis.RedisError:
        logger.warning("sweeper: no wake-up channel, waking on its interval only")
        return None


def subscribe_task_wakeups(task_id):
    """A subscription to the task's wake-up channel, or None when Redis does not answer."""
    import redis
    from django.conf import settings

    try:
        pubsub = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5).pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(_wakeup_channel(task_id))
        return pubsub
    except redis.RedisError:
        logger.warning("task %s: no wake-up channel, polling only", task_id)
        return None


def subscribe_all_task_wakeups():
    """A subscription to every task's wake-up channel (for ocr/killer.py), or None when Redis
    does not answer; `task_of_wakeup` tells which task a message is for."""
    import redis
    from django.conf import settings

    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", _wakeup_channel("")) + "*"
    try:
        pubsub = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5).pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(pattern)
        return pubsub
    except redis.RedisError:
        logger.warning("no wake-up channels: the node's killer waits for Redis")
        return None


def task_of_wakeup(channel: bytes) -> str:
    return channel.decode(errors="replace").rsplit(":", 1)[-1]


def wait_for_wakeup(pubsub, timeout: float) -> bytes | None:
    """Wait up to `timeout` s for a wake-up; what it said (WAKE_COMMITTED or WAKE_IN_FLIGHT),
    or None if none came."""
    import redis

    try:
        message = pubsub.get_message(timeout=timeout)
    except redis.RedisError:
        time.sleep(timeout)
        return None
    return None if message is None else message["data"]
