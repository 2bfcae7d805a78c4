"""Where webhooks may go: the allow-list (OCR_WEBHOOK_ALLOWED_HOSTS) and the address check.

No Django import: the submit validation and each delivery (ocr/webhooks.py) call the same
functions. A host listed literally may resolve to any address; a host admitted only by `*`
must resolve to public addresses only (loopback, private, link-local, metadata, shared,
reserved and multicast addresses are refused), and the delivery connects to an address that
was checked, never to a second resolution of the name (no DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = {"http": 80, "https": 443}
MAX_URL_LENGTH = 2000
# Cloud metadata services; all are non-global already, named here so that the intent is explicit.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)


class CallbackRefused(ValueError):
    """The callback URL may not be used; the message says why."""


@dataclass(frozen=True)
class Target:
    """A parsed callback URL: scheme, host (lower case, IPv6 without brackets), port, path."""

    scheme: str
    host: str
    port: int
    path: str


@dataclass(frozen=True)
class AllowList:
    """Parsed OCR_WEBHOOK_ALLOWED_HOSTS: literal (host, port or None) pairs, and `*`."""

    entries: frozenset[tuple[str, int | None]]
    any_public: bool

    @classmethod
    def parse(cls, raw: str | list[str] | tuple[str, ...]) -> AllowList:
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        entries: set[tuple[str, int | None]] = set()
        any_public = False
        for item in (i.strip().lower() for i in items):
            if not item:
                continue
            if item == "*":
                any_public = True
                continue
            host, port = _split_host_port(item)
            entries.add((host, port))
        return cls(entries=frozenset(entries), any_public=any_public)

    @property
    def enabled(self) -> bool:
        return self.any_public or bool(self.entries)

    def listed_literally(self, target: Target) -> bool:
        return (target.host, target.port) in self.entries or (target.host, None) in self.entries


def _split_host_port(item: str) -> tuple[str, int | None]:
    """'host', 'host:port', '[v6]' or '[v6]:port'; a bare IPv6 address has no port."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if item.count(":") == 1:
        host, _, port = item.partition(":")
        return host, int(port) if port.isdigit() else None
    return item, None


def parse_url(url: str) -> Target:
    """The callback URL's parts; CallbackRefused for anything but an absolute http(s) URL."""
    if len(url) > MAX_URL_LENGTH:
        raise CallbackRefused(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"not a valid URL ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise CallbackRefused("must be an http:// or https:// URL")
    if not parts.hostname:
        raise CallbackRefused("has no host")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("must not carry credentials")
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Target(scheme=parts.scheme, host=parts.hostname.lower(), port=port or SCHEMES[parts.scheme], path=path)


def address_refusal(address: str) -> str | None:
    """Why a webhook may not go to `address` unless its host is listed literally; None if public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    for test, name in (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
    ):
        if test:
            return f"{ip} is a {name} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to (an IP literal: itself), in resolver order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise CallbackRefused(f"host {host} does not resolve ({exc})") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def check_host(target: Target, allow: AllowList) -> bool:
    """Whether the URL's host is allowed at all; True when listed literally (any address then)."""
    if not allow.enabled:
        raise CallbackRefused("webhooks are disabled on this server (OCR_WEBHOOK_ALLOWED_HOSTS is empty)")
    if allow.listed_literally(target):
        return True
    if allow.any_public:
        return False
    raise CallbackRefused(f"host {_hostport(target)} is not in OCR_WEBHOOK_ALLOWED_HOSTS")


def checked_addresses(target: Target, allow: AllowList, resolver=resolve) -> list[str]:
    """The addresses a delivery may connect to: every resolved address must pass when the host is
    admitted by `*` only (one private address refuses the host: the resolver may rotate)."""
    literal = check_host(target, allow)
    addresses = resolver(target.host, target.port)
    if not addresses:
        raise CallbackRefused(f"host {target.host} has no address")
    if not literal:
        for address in addresses:
            reason = address_refusal(address)
            if reason:
                raise CallbackRefused(f"host {target.host} resolves to {reason}; list it literally to allow it")
    return addresses


def _hostport(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{host}:{target.port}"
