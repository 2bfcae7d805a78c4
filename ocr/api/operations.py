"""Operations endpoints: health, service information, parameters, metrics, retention."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import engine, llm, metrics, queue, selectors, upkeep
from ..exceptions import InvalidInput
from ..kinds import KINDS
from ..models import OCRTask
from ..outputs import DOWNLOAD_FORMATS
from ..params import OUTPUT_FORMATS, PARAMETER_RANGES
from . import schema, versioning
from .requests import IMAGE_KINDS

MAX_METRICS_WINDOW = 60 * 24 * 366


def _check_redis() -> tuple[bool, str]:
    try:
        queue.redis_client(settings.REDIS_URL).ping()
        return True, "ok"
    except Exception as exc:
        return False, str(exc)


def _queue_info() -> dict:
    from django_q.status import Stat

    try:
        broker = queue.broker()
        return {"queue_depth": broker.queue_size(), "workers": sum(len(s.workers) for s in Stat.get_all(broker))}
    except Exception as exc:
        return {"queue_depth": None, "workers": 0, "error": str(exc)}


@extend_schema(responses={200: dict, 503: dict})
@api_view(["GET"])
@permission_classes([AllowAny])
def health(request: Request) -> Response:
    """Status of the database, Redis, tesseract, workers and the LLM server (200, or 503 when
    an essential part is down); without anonymous access, anonymous callers get the status only."""
    checks: dict[str, dict] = {}
    try:
        OCRTask.objects.exists()
        checks["database"] = {"ok": True, "vendor": connection.vendor}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": str(exc)}
    ok, detail = _check_redis()
    checks["redis"] = {"ok": ok, "detail": detail}
    try:
        checks["tesseract"] = {
            "ok": True,
            "version": engine.tesseract_version(),
            "languages": engine.tesseract_languages(),
        }
    except Exception as exc:
        checks["tesseract"] = {"ok": False, "error": str(exc)}
    queue_info = _queue_info() if ok else {"queue_depth": None, "workers": 0}
    checks["workers"] = {
        "ok": queue_info["workers"] > 0,
        "live": queue_info["workers"],
        "queue_depth": queue_info["queue_depth"],
    }
    llm_info = llm.probe(llm.config_from_settings())  # optional: only a configured, unreachable one degrades
    checks["llm"] = {"ok": llm_info["reachable"] or not llm_info["configured"], **llm_info}
    essential = all(checks[name]["ok"] for name in ("database", "redis", "tesseract"))
    optional = checks["workers"]["ok"] and checks["llm"]["ok"]
    body = {"status": "ok" if essential and optional else ("degraded" if essential else "down"), **checks}
    if not (settings.OCR_ALLOW_ANONYMOUS or request.user.is_authenticated):
        body = {"status": body["status"]}  # a load balancer's probe: the verdict, no details
    return Response(body, status=200 if essential else 503)


@extend_schema(responses={200: dict})
@api_view(["GET"])
def service_info(request: Request) -> Response:
    return Response(
        {
            "service": "ocrsite",
            "api_version": versioning.API_MAJOR,
            "schema_version": versioning.API_VERSION,
            "task_types": list(KINDS),
            "workers": settings.OCR_WORKERS,
            "tesseract_version": engine.tesseract_version(),
            "languages": engine.tesseract_languages(),
            "llm_configured": bool(settings.OCR_LLM_BASE_URL),
            "llm": llm.probe(llm.config_from_settings()),
            "limits": {
                "max_image_bytes": settings.OCR_MAX_IMAGE_BYTES,
                "max_pdf_bytes": settings.OCR_MAX_PDF_BYTES,
                "max_pdf_pages": settings.OCR_MAX_PDF_PAGES,
                "submit_rate": settings.RATE_LIMIT_REQUESTS,
                "cancel_rate": settings.OCR_CANCEL_RATE,
            },
            "anonymous_allowed": settings.OCR_ALLOW_ANONYMOUS,
        }
    )


@extend_schema(responses={200: dict})
@api_view(["GET"])
def parameters(request: Request) -> Response:
    return Response(
        {
            "parameters": PARAMETER_RANGES,
            "languages": engine.tesseract_languages(),
            "osd": engine.osd_available(),
            "output_formats": list(OUTPUT_FORMATS),
            "download_formats": list(DOWNLOAD_FORMATS),
            "image_types": ["jpg", *IMAGE_KINDS],
            "pdf_types": ["pdf"],
        }
    )


class MetricsQuerySerializer(serializers.Serializer):
    window = serializers.IntegerField(min_value=1, max_value=MAX_METRICS_WINDOW, required=False)


@extend_schema(
    parameters=[
        OpenApiParameter(
            "window",
            {"type": "integer", "minimum": 1, "maximum": MAX_METRICS_WINDOW},
            description="Only tasks created in the last N minutes (1..527040)",
        )
    ],
    responses={200: dict},
)
@api_view(["GET"])
def metrics_json(request: Request) -> Response:
    """Staff see the whole service; anyone else the figures of their own tasks, without other
    users' cancel reasons or other clients' cancel answers."""
    query = MetricsQuerySerializer(data={k: v for k, v in request.query_params.items() if v != ""})
    if not query.is_valid():
        raise InvalidInput(f"window: must be a whole number of minutes between 1 and {MAX_METRICS_WINDOW}")
    window = query.validated_data.get("window")
    if request.user.is_authenticated and request.user.is_staff:
        return Response(metrics.snapshot(window))
    own = selectors.task_list_for(user=request.user, session_key=request.session.session_key)
    return Response(metrics.snapshot(window, tasks=own, staff=False))


def _may_scrape(request: HttpRequest) -> bool:
    token = settings.OCR_METRICS_TOKEN
    if token and hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {token}"):
        return True
    try:
        client = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    for allowed in settings.OCR_METRICS_ALLOW:
        try:
            if client in ipaddress.ip_network(allowed, strict=False):
                return True
        except ValueError:
            continue
    return False


def metrics_prometheus(request: HttpRequest) -> HttpResponse:
    """GET /metrics in Prometheus text format: from OCR_METRICS_ALLOW (default loopback) or with
    `Authorization: Bearer <OCR_METRICS_TOKEN>`; 403 otherwise, whatever OCR_ALLOW_ANONYMOUS says."""
    from prometheus_client import CONTENT_TYPE_LATEST

    if not _may_scrape(request):
        return JsonResponse(
            {"detail": "Metrics are for the configured scrapers (OCR_METRICS_ALLOW, OCR_METRICS_TOKEN)"}, status=403
        )
    return HttpResponse(metrics.prometheus_text(), content_type=CONTENT_TYPE_LATEST)


class CleanupQuerySerializer(serializers.Serializer):
    days = serializers.IntegerField(min_value=0, required=False)


class CleanupView(APIView):
    """DELETE /v1/ocr/tasks/cleanup (staff): apply the retention now."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        parameters=[
            OpenApiParameter("days", {"type": "integer", "minimum": 0}, description="Override OCR_RETENTION_DAYS")
        ],
        responses={200: dict, 403: schema.ErrorSerializer},
    )
    def delete(self, request: Request) -> Response:
        query = CleanupQuerySerializer(data=request.query_params)
        if not query.is_valid():
            raise InvalidInput("days: must be a whole number, 0 or more")
        days = query.validated_data.get("days", settings.OCR_RETENTION_DAYS)
        return Response(
            upkeep.purge_expired(retention_days=days, audit_retention_days=settings.OCR_AUDIT_RETENTION_DAYS)
        )
