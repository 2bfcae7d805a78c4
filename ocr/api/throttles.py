"""Rate limits: per user when authenticated, else per IP address (OCR_TRUSTED_PROXIES). One scope
for every submit endpoint (RATE_LIMIT_REQUESTS), one for every cancel endpoint (OCR_CANCEL_RATE).

Requests are counted in Redis, shared by every web process and node, in a moving window (the
`limits` library): checking and counting a request is one Lua script, so it is atomic. DRF's own
cache throttle reads the caller's history and writes it back in two round trips, and requests
at once all read the same history: 80 cancels sent 40 at a time from one address got 29 and 30
answers past a 20/m limit, measured twice with a live daphne.

When Redis does not answer, a request is let through (logged): a rate limit protects the
service, it must not turn a cancel into a 500 while the database, the truth, is there."""

from __future__ import annotations

import functools
import logging
import time
from types import SimpleNamespace

import redis
from django.conf import settings
from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from rest_framework.exceptions import Throttled
from rest_framework.throttling import ScopedRateThrottle

logger = logging.getLogger(__name__)

SUBMIT_SCOPE = "ocr-submit"
CANCEL_SCOPE = "ocr-cancel"


@functools.lru_cache(maxsize=4)
def _limiter(url: str, prefix: str) -> MovingWindowRateLimiter:
    """One limiter (connection pool) per process; redis-py resets the pool after a fork."""
    storage = RedisStorage(url, key_prefix=prefix, socket_timeout=1, socket_connect_timeout=1)
    return MovingWindowRateLimiter(storage)


def limiter() -> MovingWindowRateLimiter:
    # Under the cache's key prefix: the service's keys in Redis share one prefix per queue.
    return _limiter(settings.REDIS_URL, f"{settings.CACHES['default'].get('KEY_PREFIX', '')}:throttle")


class OCRRateThrottle(ScopedRateThrottle):
    """ScopedRateThrottle (same scopes, rates and caller keys) counted by `limiter()`. Rates are
    read from the settings at each request, not frozen when DRF's settings load."""

    def get_rate(self) -> str | None:
        return {SUBMIT_SCOPE: settings.RATE_LIMIT_REQUESTS, CANCEL_SCOPE: settings.OCR_CANCEL_RATE}.get(self.scope)

    def allow_request(self, request, view) -> bool:
        self.scope = getattr(view, self.scope_attr, None)
        self.rate = self.get_rate() if self.scope else None
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        self.key = self.get_cache_key(request, view)
        item = RateLimitItemPerSecond(self.num_requests, self.duration)
        try:
            if limiter().hit(item, self.key):
                return True
            self.reset_at = limiter().get_window_stats(item, self.key).reset_time
        except redis.RedisError as exc:
            logger.warning("rate limit %s not checked, request let through: Redis unavailable (%s)", self.key, exc)
            return True
        return False

    def wait(self) -> float:
        """Seconds until the oldest request of the window leaves it (Retry-After rounds up)."""
        return max(0.001, self.reset_at - time.time())


def websocket_caller(scope: dict) -> SimpleNamespace:
    """A WebSocket connection's caller as the throttle reads a request: its user, its address
    and its X-Forwarded-For (believed as for HTTP: OCR_TRUSTED_PROXIES)."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    return SimpleNamespace(
        user=scope.get("user"), headers=headers, META={"REMOTE_ADDR": (scope.get("client") or [""])[0]}
    )


def enforce(request, scope: str) -> None:
    """Apply a scope's limit outside an APIView (the async views, the WebSocket cancel action:
    `websocket_caller`); raises Throttled (429)."""

    class _View:
        throttle_scope = scope

    throttle = OCRRateThrottle()
    if not throttle.allow_request(request, _View()):
        raise Throttled(wait=throttle.wait())
