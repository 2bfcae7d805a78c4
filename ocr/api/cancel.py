"""Cancel endpoints: POST .../{id}/cancel on the universal, typed and stream paths."""

from __future__ import annotations

import logging

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import metrics, selectors, services
from ..exceptions import InvalidInput, TaskNotFound
from ..kinds import Kind
from ..models import CancelledBy, OCRTask
from . import schema, throttles
from .common import client_ip, visible_task
from .serializers import cancel_body, cancel_reason, parse_json_body

logger = logging.getLogger(__name__)


class CancelView(APIView):
    """One view for every cancel path; the service does the work."""

    throttle_scope = throttles.CANCEL_SCOPE
    kind: Kind | None = None
    streaming_only: bool = False

    @extend_schema(
        request={"application/json": schema.CancelRequestSerializer},
        responses=schema.CANCEL_RESPONSES,
        description="Cancel a pending or processing task: its worker stops within a fraction of a second "
        "(mid-page), pages finished before are kept. Missing or blank reason: `User requested cancellation`.",
    )
    def post(self, request: Request, task_id: str) -> Response:
        """The cancel's first statement is the UPDATE that stops the task (the client waits for
        it, and it wakes the worker): no read before it. 404 before 400 for a bad body."""
        pk, client = selectors.parse_task_id(task_id), client_ip(request)
        logger.info("task %s: cancel requested from %s", pk, client)
        try:
            reason = cancel_reason(parse_json_body(request._request.body))  # JSON whatever its Content-Type
        except InvalidInput:
            visible_task(request, pk, kind=self.kind, streaming_only=self.streaming_only)  # 404 goes first
            raise
        lookup = selectors.task_lookup(
            user=request.user, task_id=pk, task_type=self.kind and self.kind.slug, streaming_only=self.streaming_only
        )
        try:
            outcome = services.task_cancel_visible(
                lookup=lookup, reason=reason, cancelled_by=CancelledBy.USER, user=request.user, client=client
            )
        except OCRTask.DoesNotExist:
            raise TaskNotFound(pk) from None
        body = cancel_body(outcome.task, newly_cancelled=outcome.newly_cancelled, via_stream=self.streaming_only)
        return Response(body, status=200)

    def finalize_response(self, request, response, *args, **kwargs):
        metrics.count_cancel_request(response.status_code)
        return super().finalize_response(request, response, *args, **kwargs)
