"""Routes of the browser UI (mounted at the site root)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from . import ui

urlpatterns = [
    # any user signs in here (the admin's login is for staff only)
    path("accounts/login/", auth_views.LoginView.as_view(template_name="ocr/login.html"), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", ui.index, name="ui-index"),
    path("tasks/", ui.task_list, name="ui-tasks"),
    path("tasks/<uuid:task_id>/", ui.task_page, name="ui-task"),
]
