"""Who may call the API at all (per-task visibility lives in ocr.selectors)."""

from django.conf import settings
from rest_framework.permissions import BasePermission


class OCRAccess(BasePermission):
    """Anyone when OCR_ALLOW_ANONYMOUS is true, otherwise authenticated users only (401)."""

    def has_permission(self, request, view) -> bool:
        return settings.OCR_ALLOW_ANONYMOUS or bool(request.user and request.user.is_authenticated)
