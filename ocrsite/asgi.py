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
