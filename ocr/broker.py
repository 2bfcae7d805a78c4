"""The job queue's broker: django-q2's Redis broker, whose dequeue outlives a lost connection.

django-q2's pusher (the qcluster process that takes jobs from Redis for its workers) sleeps 10 s
and exits when a dequeue raises, and its sentinel then starts another: after a Redis restart no
worker took a job for those 10 s. A task submitted 1-2 s after the restart completed 8.6-8.8 s
later (`make chaos`, "a new task afterwards"; 0.4-0.5 s after the other outages). Here a lost
connection is tried again every RETRY_SECONDS (redis-py reconnects on the next command), and the
pusher goes on, still stopping when its cluster stops (it looks at its stop event after each
dequeue).
"""

from __future__ import annotations

import logging
import time

import redis
from django_q.brokers.redis_broker import Redis

logger = logging.getLogger(__name__)

RETRY_SECONDS = 0.5


class RedisBroker(Redis):
    def dequeue(self):
        try:
            return super().dequeue()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning(
                "job queue %s: Redis unreachable (%s), trying again in %.1f s", self.list_key, exc, RETRY_SECONDS
            )
            time.sleep(RETRY_SECONDS)
            return None
