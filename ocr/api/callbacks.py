"""`request.callback_url` and `request.callback_events` (API.md section 10), for every kind."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from .. import webhook_policy
from ..params import CALLBACK_EVENT_GROUPS, DEFAULT_CALLBACK_EVENTS
from .fields import StrictCharField


class CallbackFieldsMixin(serializers.Serializer):
    callback_url = StrictCharField(required=False, allow_null=True, max_length=webhook_policy.MAX_URL_LENGTH)
    callback_events = serializers.ListField(
        child=serializers.ChoiceField(choices=CALLBACK_EVENT_GROUPS),
        default=list(DEFAULT_CALLBACK_EVENTS),
        allow_empty=False,
        max_length=len(CALLBACK_EVENT_GROUPS),
    )

    def validate_callback_url(self, value: str | None) -> str | None:
        if value is None:
            return None
        allow = webhook_policy.AllowList.parse(settings.OCR_WEBHOOK_ALLOWED_HOSTS)
        try:
            target = webhook_policy.parse_url(value)
            if not webhook_policy.check_host(target, allow):
                webhook_policy.checked_addresses(target, allow)  # admitted by `*`: public addresses only
        except webhook_policy.CallbackRefused as exc:
            raise serializers.ValidationError(str(exc)) from None
        if not settings.OCR_WEBHOOK_SECRET:
            raise serializers.ValidationError("webhooks are disabled on this server (OCR_WEBHOOK_SECRET is not set)")
        return value.strip()

    def validate_callback_events(self, value: list[str]) -> list[str]:
        if "terminal" not in value:
            raise serializers.ValidationError('must include "terminal" (["terminal"] or ["terminal", "page"])')
        return [group for group in CALLBACK_EVENT_GROUPS if group in value]
