"""ASGI entry point: HTTP through Django, WebSocket through Channels."""

import gc
import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ocrsite.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from ocr.routing import websocket_urlpatterns  # noqa: E402
from ocr.websocket_auth import OriginCheck, TokenAuthMiddleware  # noqa: E402
from ocrsite import daphne_requests  # noqa: E402
from ocrsite.http_threads import SyncViewsHandler, ThreadLeases  # noqa: E402

# Session, then token authentication; then the Origin check (it needs to know which was used).
application = ProtocolTypeRouter(
    {
        "http": ThreadLeases(SyncViewsHandler(), size=settings.OCR_HTTP_THREADS, long_lived_app=django_asgi_app),
        "websocket": AuthMiddlewareStack(TokenAuthMiddleware(OriginCheck(URLRouter(websocket_urlpatterns)))),
    }
)


daphne_requests.install()  # uploads: no multipart parse by Twisted, oversized bodies refused at once


def freeze_startup_objects() -> None:
    """Keep the objects of start-up (Django, the apps, every view and URL table: about 170,000)
    out of the garbage collector's full passes (gc.freeze). Under load those passes scanned them
    all, each stopping the process for 110-430 ms (50 clients GETting tasks, api_load.py): the
    slowest answers were waiting for them. Only objects made since are scanned now."""
    from django.urls import get_resolver

    get_resolver().reverse_dict  # noqa: B018  (imports every view and builds the URL tables now, to be frozen too)
    gc.collect()
    gc.freeze()


freeze_startup_objects()
