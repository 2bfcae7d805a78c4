"""System checks: tesseract present, Redis reachable."""

import shutil

from django.conf import settings
from django.core.checks import Error, Warning, register

from .llm import redact_url


@register()
def tesseract_installed(app_configs, **kwargs):
    if shutil.which("tesseract") is None:
        return [Warning("tesseract is not on PATH", hint="apt-get install tesseract-ocr", id="ocr.W001")]
    return []


@register(deploy=True)
def redis_reachable(app_configs, **kwargs):
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1).ping()
    except Exception as exc:
        return [Warning(f"Redis at {redact_url(settings.REDIS_URL)} does not answer: {exc}", id="ocr.W002")]
    return []


DEV_SECRET_KEY = "dev-insecure-change-me-in-production"


@register(deploy=True)
def secret_key_set(app_configs, **kwargs):
    """`manage.py check --deploy` refuses the development SECRET_KEY when DEBUG is off."""
    if not settings.DEBUG and settings.SECRET_KEY == DEV_SECRET_KEY:
        return [
            Error(
                "SECRET_KEY is the development default",
                hint="Set SECRET_KEY in the environment to a long random value (python -c 'import secrets; "
                "print(secrets.token_urlsafe(50))').",
                id="ocr.E001",
            )
        ]
    return []
