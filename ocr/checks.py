"""System checks: tesseract present, Redis reachable."""

import shutil

from django.conf import settings
from django.core.checks import Warning, register


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
        return [Warning(f"Redis at {settings.REDIS_URL} does not answer: {exc}", id="ocr.W002")]
    return []
