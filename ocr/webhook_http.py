"""One signed webhook POST (Standard Webhooks) to an address that was checked beforehand.

No Django import. The connection goes to the given IP address while the Host header, TLS SNI
and certificate check use the URL's host name, so a name that re-resolves elsewhere between
the check and the connect (DNS rebinding) never redirects the request. Redirects are not
followed: a 3xx is an unsuccessful attempt like any other non-2xx answer.
"""

from __future__ import annotations

import http.client
import math
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks import Webhook

from .webhook_policy import Target

MAX_RESPONSE_BYTES = 64 * 1024  # the receiver's answer is read (to free the connection), not kept
USER_AGENT = "ocrsite-webhooks/1"


@dataclass(frozen=True)
class PostResult:
    status_code: int | None
    error: str
    address: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(secret: str, webhook_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    """webhook-id, webhook-timestamp and webhook-signature (`v1,<base64 HMAC-SHA256>` over
    "id.timestamp.body") for a `whsec_...` secret."""
    now = now or datetime.now(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(math.floor(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id=webhook_id, timestamp=now, data=body),
    }


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(target: Target, addresses: list[str], body: bytes, headers: dict[str, str], timeout: float) -> PostResult:
    """POST `body` to the first of `addresses` that accepts a connection; every socket operation
    and the whole attempt are bounded by `timeout` seconds."""
    deadline = time.monotonic() + timeout
    errors: list[str] = []
    connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        conn = connection_class(target.host, target.port, address=address, timeout=remaining)
        try:
            try:
                conn.connect()
            except OSError as exc:
                errors.append(f"{address}: connect failed ({exc})")
                continue
            conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
            conn.request(
                "POST",
                target.path,
                body=body,
                headers={
                    **headers,
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    "Connection": "close",
                },
            )
            conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
            response = conn.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            return PostResult(
                status_code=response.status,
                error="" if 200 <= response.status < 300 else f"HTTP {response.status} {response.reason}",
                address=address,
            )
        except TimeoutError:
            return PostResult(status_code=None, error=f"timed out after {timeout:g} s", address=address)
        except (OSError, http.client.HTTPException) as exc:
            return PostResult(status_code=None, error=f"{type(exc).__name__}: {exc}", address=address)
        finally:
            conn.close()
    return PostResult(status_code=None, error="; ".join(errors) or f"timed out after {timeout:g} s", address=None)
