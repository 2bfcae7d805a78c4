"""Who may open a WebSocket: token authentication and an Origin check, whatever ALLOWED_HOSTS says.

- `TokenAuthMiddleware`: `Authorization: Token <key>` in the handshake, or `?token=<key>` (the
  browser's WebSocket API cannot send headers), sets `scope["user"]` as REST does; a token that
  matches no user refuses the handshake.
- `OriginCheck`: a handshake that carries an `Origin` must come from the service's own origin
  (the Host it was sent to) or one listed in OCR_TRUSTED_ORIGINS (CSRF_TRUSTED_ORIGINS by
  default); so a page on another site cannot use a visitor's session cookie. A handshake without
  `Origin` (a script) is allowed when it authenticates by token or when anonymous access is on.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import WebsocketDenier
from django.conf import settings

logger = logging.getLogger(__name__)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _token_from(scope) -> str | None:
    auth = _header(scope, b"authorization") or ""
    if auth.lower().startswith("token "):
        return auth[6:].strip() or None
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("token") or [None])[0]


@database_sync_to_async
def _user_for_token(key: str):
    from rest_framework.authtoken.models import Token

    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


class TokenAuthMiddleware(BaseMiddleware):
    async def __call__(self, scope, receive, send):
        key = _token_from(scope)
        if key is not None:
            user = await _user_for_token(key)
            if user is None:
                logger.info("websocket %s: unknown token refused", scope.get("path"))
                return await WebsocketDenier()(scope, receive, send)
            scope = {**scope, "user": user, "auth": "token"}
        return await super().__call__(scope, receive, send)


def _same_origin(origin: str, host: str | None) -> bool:
    parts = urlsplit(origin)
    return bool(host) and parts.netloc.lower() == host.lower() and parts.scheme in ("http", "https")


class OriginCheck:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not self.allowed(scope):
            logger.info("websocket %s: origin %r refused", scope.get("path"), _header(scope, b"origin"))
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)

    @staticmethod
    def allowed(scope) -> bool:
        origin = _header(scope, b"origin")
        if origin is None:
            return scope.get("auth") == "token" or settings.OCR_ALLOW_ANONYMOUS
        trusted = {value.rstrip("/").lower() for value in settings.OCR_TRUSTED_ORIGINS}
        return _same_origin(origin, _header(scope, b"host")) or origin.rstrip("/").lower() in trusted
