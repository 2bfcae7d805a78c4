"""Rate limits (DRF throttles on the shared Redis cache): per user when authenticated, else per
IP address. One scope for every submit endpoint, one for every cancel endpoint."""

from __future__ import annotations

from django.conf import settings
from rest_framework.exceptions import Throttled
from rest_framework.throttling import ScopedRateThrottle

SUBMIT_SCOPE = "ocr-submit"
CANCEL_SCOPE = "ocr-cancel"


class OCRRateThrottle(ScopedRateThrottle):
    """ScopedRateThrottle whose rates are read from the settings at each request
    (RATE_LIMIT_REQUESTS, OCR_CANCEL_RATE), not frozen when DRF's settings load."""

    def get_rate(self) -> str | None:
        return {SUBMIT_SCOPE: settings.RATE_LIMIT_REQUESTS, CANCEL_SCOPE: settings.OCR_CANCEL_RATE}.get(self.scope)


def enforce(request, scope: str) -> None:
    """Apply a scope's limit outside an APIView (the async views); raises Throttled (429)."""

    class _View:
        throttle_scope = scope

    throttle = OCRRateThrottle()
    if not throttle.allow_request(request, _View()):
        raise Throttled(wait=throttle.wait())
