"""Routes of the browser UI (mounted at the site root)."""

from django.urls import path

from . import ui

urlpatterns = [
    path("", ui.index, name="ui-index"),
    path("tasks/", ui.task_list, name="ui-tasks"),
    path("tasks/<uuid:task_id>/", ui.task_page, name="ui-task"),
]
