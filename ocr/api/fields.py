"""Strict JSON fields: a JSON number, string or boolean of the right type, never a coerced one."""

from __future__ import annotations

from rest_framework import serializers

__all__ = ["StrictBooleanField", "StrictCharField", "StrictFloatField", "StrictIntegerField"]


class StrictIntegerField(serializers.IntegerField):
    """An integer in JSON, not a string, a boolean or a float."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false in JSON, not "yes", 1 or "true"."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data
