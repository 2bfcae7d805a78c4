"""Who may call the API at all, and who may read the operator feed (per-task visibility lives in
ocr.selectors)."""

from django.conf import settings
from rest_framework.permissions import BasePermission


class OCRAccess(BasePermission):
    """Anyone when OCR_ALLOW_ANONYMOUS is true, otherwise authenticated users only (401)."""

    def has_permission(self, request, view) -> bool:
        return settings.OCR_ALLOW_ANONYMOUS or bool(request.user and request.user.is_authenticated)


def is_operator(user) -> bool:
    """Who may read the operator feed (every user's tasks): active staff, whatever
    OCR_ALLOW_ANONYMOUS says."""
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)
