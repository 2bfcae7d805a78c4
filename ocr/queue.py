"""What is waiting on the django-q2 broker (Redis list): depth and the task ids of its jobs."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def queue_depth() -> int | None:
    from django_q.brokers import get_broker

    try:
        return get_broker().queue_size()
    except Exception:
        logger.warning("queue depth unavailable", exc_info=True)
        return None


def queued_task_ids(limit: int = 10000, broker=None) -> set[str]:
    """Task ids of the jobs still on the broker's list (not yet taken by a cluster)."""
    from django_q.brokers import get_broker
    from django_q.signing import BadSignature, SignedPackage

    broker = broker or get_broker()
    ids: set[str] = set()
    for raw in broker.connection.lrange(broker.list_key, 0, limit - 1):
        try:
            job = SignedPackage.loads(raw)
        except (BadSignature, Exception):
            continue
        if job.get("func") == "ocr.tasks.process_task" and job.get("args"):
            ids.add(str(job["args"][0]))
    return ids
