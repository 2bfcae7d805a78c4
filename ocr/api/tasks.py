"""Reading tasks: one task (any kind, or a typed path's own kind) and the caller's list."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response

from .. import selectors
from ..kinds import KINDS, Kind
from ..models import TaskStatus
from . import schema
from .common import visible_task
from .serializers import TaskFilterSerializer, TaskSerializer


class TaskDetailView(generics.GenericAPIView):
    kind: Kind | None = None
    serializer_class = TaskSerializer

    @extend_schema(responses={200: TaskSerializer, 404: schema.ErrorSerializer})
    def get(self, request: Request, task_id: str) -> Response:
        task = visible_task(request, task_id, kind=self.kind)
        return Response(TaskSerializer(task, context={"request": request}).data)


@extend_schema(
    parameters=[
        # empty = no filter (what a browser's form sends for "any")
        OpenApiParameter("status", enum=[*TaskStatus.values, ""], required=False),
        OpenApiParameter("task_type", enum=[*KINDS, ""], required=False),
    ]
)
class TaskListView(generics.ListAPIView):
    serializer_class = TaskSerializer

    def get_queryset(self):
        filters = TaskFilterSerializer.parse(self.request.query_params)
        session_key = self.request.session.session_key if not self.request.user.is_authenticated else None
        return selectors.task_list_for(
            user=self.request.user,
            session_key=session_key,
            status=filters.get("status"),
            task_type=filters.get("task_type"),
        )
