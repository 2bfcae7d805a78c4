"""The API's version and how a deprecation is announced (docs/versioning.md).

`/v1/` is the major version in every path; API_VERSION (semantic, `1.MINOR.PATCH`) is the schema's
`info.version`, answered in the `API-Version` header. A deprecated operation is listed in the
setting OCR_DEPRECATIONS (empty today); DeprecationMiddleware then adds to each of its answers
`Deprecation` (RFC 9745), `Sunset` (RFC 8594) and `Link: <...>; rel="deprecation"`, and the
schema marks the operation `deprecated: true`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from django.conf import settings
from django.utils.deprecation import MiddlewareMixin

API_MAJOR = "v1"
# 1.1.0: the schema states the `request` part's JSON, every status code, SSE events and links.
API_VERSION = "1.1.0"
VERSION_HEADER = "API-Version"


@dataclass(frozen=True)
class Deprecation:
    """One deprecated operation: a path (regex, matched in full against the request path, e.g.
    `/v1/ocr/tasks/[^/]+/deliveries`), its methods, since when, when it goes, and the page that says why."""

    path: str
    methods: tuple[str, ...]
    deprecated_at: datetime
    sunset_at: datetime | None
    link: str

    @classmethod
    def from_setting(cls, entry: dict) -> Deprecation:
        return cls(
            path=entry["path"],
            methods=tuple(method.upper() for method in entry.get("methods", ("GET", "POST", "PUT", "PATCH", "DELETE"))),
            deprecated_at=entry["deprecated_at"],
            sunset_at=entry.get("sunset_at"),
            link=entry["link"],
        )

    def matches(self, method: str, path: str) -> bool:
        return method.upper() in self.methods and re.fullmatch(self.path, path) is not None

    def headers(self) -> dict[str, str]:
        headers = {
            "Deprecation": f"@{int(self.deprecated_at.timestamp())}",  # RFC 9745: a structured-field date
            "Link": f'<{self.link}>; rel="deprecation"; type="text/html"',
        }
        if self.sunset_at is not None:
            headers["Sunset"] = format_datetime(self.sunset_at, usegmt=True)  # RFC 8594: an HTTP-date
        return headers


def deprecations() -> list[Deprecation]:
    """The deprecated operations (OCR_DEPRECATIONS, read at each call so that tests may set it)."""
    return [Deprecation.from_setting(entry) for entry in settings.OCR_DEPRECATIONS]


def deprecation_for(method: str, path: str) -> Deprecation | None:
    return next((entry for entry in deprecations() if entry.matches(method, path)), None)


class DeprecationMiddleware(MiddlewareMixin):
    """`API-Version` on every API answer; the deprecation headers on a deprecated operation's."""

    def process_response(self, request, response):
        if not request.path.startswith(f"/{API_MAJOR}/"):
            return response
        response[VERSION_HEADER] = API_VERSION
        entry = deprecation_for(request.method, request.path)
        if entry is not None:
            for name, value in entry.headers().items():
                response[name] = value
        return response
