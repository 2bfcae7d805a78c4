"""Django's PostgreSQL backend, whose connection health check sends no query while it can tell
without one (settings: ENGINE "ocrsite.postgresql" for a PostgreSQL DATABASE_URL).

With CONN_HEALTH_CHECKS, Django checks a kept connection before the first query of each
request with a `SELECT 1`: one more round trip for every request. Under load a round trip to
PostgreSQL cost about 1 ms (a cancel's answer has eight: cancel_latency.py with stage marks).
A connection the server has ended (restart, failover, pg_terminate_backend) has something to
read, the server's goodbye or the end of the stream, and psycopg knows one it saw break: so the
check looks at the socket first, and only when there is something to read does it send the
`SELECT 1` that tells (a notice or a notification can wait there too).
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        connection = self.connection
        if connection is None or connection.closed or connection.broken:
            return False
        if connection.info.transaction_status != pq.TransactionStatus.IDLE:
            return super().is_usable()
        try:
            readable, _, _ = select.select([connection.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable or super().is_usable()
