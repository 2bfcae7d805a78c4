from django.urls import path

from . import ui

urlpatterns = [
    path("", ui.index, name="ui-index"),
    path("tasks/<uuid:task_id>/", ui.task_page, name="ui-task"),
]
