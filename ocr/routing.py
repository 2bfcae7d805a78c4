from django.urls import path

from . import consumers

websocket_urlpatterns = [
    path("ws/ocr/tasks/<str:task_id>/", consumers.TaskEventsConsumer.as_asgi()),
    path("ws/ocr/events/", consumers.OperatorFeedConsumer.as_asgi()),
]
