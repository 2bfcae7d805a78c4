"""ASGI entry point: HTTP through Django, WebSocket through Channels."""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ocrsite.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from ocr.routing import websocket_urlpatterns  # noqa: E402
from ocr.websocket_auth import OriginCheck, TokenAuthMiddleware  # noqa: E402
from ocrsite.http_threads import SyncViewsHandler, ThreadLeases  # noqa: E402

# Session, then token authentication; then the Origin check (it needs to know which was used).
application = ProtocolTypeRouter(
    {
        "http": ThreadLeases(SyncViewsHandler(), size=settings.OCR_HTTP_THREADS, long_lived_app=django_asgi_app),
        "websocket": AuthMiddlewareStack(TokenAuthMiddleware(OriginCheck(URLRouter(websocket_urlpatterns)))),
    }
)


def _skip_twisted_form_parsing() -> None:
    """daphne lets Twisted parse every multipart body with the `email` parser on its one event
    loop thread, and nothing reads the result (ASGI passes the raw body). A 9.5 MB upload cost
    250 ms of that thread and held every WebSocket and SSE event behind it (p95 ~300 ms);
    without it: 45 ms, events p95 < 25 ms (benchmarks/event_latency.py --uploads 1)."""
    try:
        from daphne import http_protocol
    except ImportError:  # served by another ASGI server
        return
    original_init = http_protocol.WebRequest.__init__
    if getattr(original_init, "_ocrsite_patched", False):
        return

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False

    init._ocrsite_patched = True
    http_protocol.WebRequest.__init__ = init


_skip_twisted_form_parsing()
