"""`GET /v1/ocr/tasks/{id}/deliveries`: every webhook attempt for a task (API.md section 10)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from .. import selectors
from ..models import WebhookDelivery
from . import schema
from .common import visible_task


class DeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = [
            "seq",
            "type",
            "attempt",
            "webhook_id",
            "outcome",
            "status_code",
            "error",
            "duration_ms",
            "attempted_at",
            "delivered_at",
            "next_retry_at",
        ]


class DeliveryListView(generics.GenericAPIView):
    serializer_class = DeliverySerializer

    @extend_schema(
        responses={
            200: inline_serializer(
                "TaskDeliveries",
                {
                    "task_id": serializers.UUIDField(),
                    "callback_url": serializers.CharField(allow_null=True),
                    "deliveries": DeliverySerializer(many=True),
                },
            ),
            404: schema.ErrorSerializer,
        }
    )
    def get(self, request: Request, task_id: str) -> Response:
        task = visible_task(request, task_id)
        deliveries = selectors.deliveries_of(task)
        return Response(
            {
                "task_id": str(task.pk),
                "callback_url": task.parameters.callback_url,
                "deliveries": DeliverySerializer(deliveries, many=True).data,
            }
        )
