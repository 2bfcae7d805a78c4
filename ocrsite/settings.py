"""Settings for ocrsite, read once from the environment through django-environ.

Defaults run locally: SQLite (WAL, IMMEDIATE transactions) in the project folder and
Redis at redis://127.0.0.1:6379/0. `DATABASE_URL` switches to PostgreSQL.
"""

import os
import socket
import tempfile
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env(
    DEBUG=(bool, False),
    ALLOWED_HOSTS=(list, ["*"]),
    OCR_WORKERS=(int, os.cpu_count() or 1),
    MAX_CONCURRENT_TASKS=(int, 0),
    RATE_LIMIT_REQUESTS=(str, "100/m"),
    OCR_CANCEL_RATE=(str, "20/m"),
    OCR_MAX_IMAGE_BYTES=(int, 10 * 1024 * 1024),
    OCR_MAX_PDF_BYTES=(int, 50 * 1024 * 1024),
    OCR_MAX_PDF_PAGES=(int, 500),
    OCR_ALLOW_ANONYMOUS=(bool, True),
    OCR_RETENTION_DAYS=(int, 30),
    OCR_LLM_BASE_URL=(str, ""),
    OCR_LLM_API_KEY=(str, ""),
    OCR_LLM_MODEL=(str, ""),
    OCR_LLM_VISION=(bool, False),
    OCR_LLM_CONNECT_TIMEOUT=(float, 5.0),
    OCR_LLM_READ_TIMEOUT=(float, 120.0),
    OCR_LLM_PAGE_TIMEOUT=(float, 600.0),
    OCR_LLM_MAX_RETRIES=(int, 2),
    OCR_LLM_MAX_TOKENS=(int, 0),
    OCR_LLM_TEMPERATURE=(float, 0.0),
    OCR_LLM_MAX_CHANGE=(float, 0.5),
    OCR_QUEUE_NAME=(str, "ocrsite"),
    OCR_JOB_TIMEOUT=(int, 3600),
    OCR_CANCEL_POLL_SECONDS=(float, 0.05),
    OCR_SYNC_TIMEOUT=(int, 3600),
    OCR_HEARTBEAT_SECONDS=(float, 2.0),
    OCR_WORKER_LOST_SECONDS=(float, 30.0),
    OCR_PENDING_REQUEUE_SECONDS=(float, 60.0),
    OCR_SLICE_PAGES=(int, 16),
    OCR_CANCEL_ALERT_RATE=(float, 0.5),
    OCR_CANCEL_ALERT_MINUTES=(int, 15),
    OCR_CANCEL_ALERT_MIN_TASKS=(int, 5),
    OCR_AUDIT_RETENTION_DAYS=(int, 0),
    OCR_SSE_KEEPALIVE_SECONDS=(float, 15.0),
    OCR_STREAM_RESYNC_SECONDS=(float, 2.0),
    OCR_FEED_REPLAY=(int, 50),
    OCR_FEED_GAP_SECONDS=(float, 10.0),
    OCR_TRUSTED_PROXIES=(int, 0),
    CSRF_TRUSTED_ORIGINS=(list, []),
    OCR_MAX_PAGE_PIXELS=(int, 50_000_000),
    OCR_TESSERACT_MAX_MEMORY_MB=(int, 2048),
    OCR_METRICS_TOKEN=(str, ""),
    OCR_NODE_NAME=(str, socket.gethostname()),
    OCR_METRICS_ALLOW=(list, ["127.0.0.1", "::1"]),
    OCR_WEBHOOK_ALLOWED_HOSTS=(list, []),
    OCR_WEBHOOK_SECRET=(str, ""),
    OCR_WEBHOOK_MAX_ATTEMPTS=(int, 6),
    OCR_WEBHOOK_TIMEOUT_SECONDS=(float, 10.0),
    OCR_WEBHOOK_BACKOFF_SECONDS=(float, 10.0),
    OCR_WEBHOOK_BACKOFF_MAX_SECONDS=(float, 3600.0),
    OCR_WEBHOOK_CONCURRENCY=(int, 4),
    OCR_HTTP_THREADS=(int, 8),
    OCR_WORKER_NICE=(int, 10),
)

SECRET_KEY = env("SECRET_KEY", default="dev-insecure-change-me-in-production")  # refused by check --deploy
DEBUG = env("DEBUG")
ALLOWED_HOSTS = env("ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = env("CSRF_TRUSTED_ORIGINS")
# WebSocket handshakes with an Origin must come from the service's own host or one of these.
OCR_TRUSTED_ORIGINS = env.list("OCR_TRUSTED_ORIGINS", default=CSRF_TRUSTED_ORIGINS)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "channels",
    "django_q",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "ocr",
]

# WhiteNoise (sync only) comes last, against its docs' advice to put it second: under ASGI a
# sync middleware makes every middleware outside it run sync too, so the chain runs on one thread
# in one hop. In the second place it left the others async, and each Django middleware run async
# hops to a thread and back for its process_request and again for process_response: about ten
# hops per request, the larger part of daphne's CPU for a task GET (py-spy --gil). Most requests
# go through ocrsite.http_threads.SyncViewsHandler, sync whatever the order; the order still
# counts for the streams and the `-sync` submits (Django's own handler).
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "ocr.api.versioning.DeprecationMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
]

ROOT_URLCONF = "ocrsite.urls"
ASGI_APPLICATION = "ocrsite.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database --------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Plain SQLite settings make concurrent workers fail with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["ENGINE"] = "ocrsite.postgresql"  # its health check costs no round trip
# Persistent connections: opening one per request cost a cancel tens of milliseconds on
# PostgreSQL. Under daphne, requests run their sync code on up to OCR_HTTP_THREADS threads kept
# between requests (ocrsite/http_threads.py), so this is at most that many connections per web
# process (plus one per worker thread); CONN_HEALTH_CHECKS replaces a broken one.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: broker, channel layer, cache ----------------------------------------------
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
OCR_QUEUE_NAME = env("OCR_QUEUE_NAME")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"{OCR_QUEUE_NAME}:cache",
    }
}

# Redis pub/sub: a group send is one PUBLISH, and each web process gets it pushed on one
# subscribed connection. channels-redis's core layer took four round trips per group send and
# three per message received (a sorted set per channel, polled by each reader): in
# benchmarks/event_latency.py, page event -> WebSocket p95 31-41 ms with it, 24-27 ms with this.
# Pub/sub keeps nothing for a listener that is not subscribed: events are stored, and
# ocr/streams.py reads what a push did not bring (gaps, and every OCR_STREAM_RESYNC_SECONDS).
# ocr.channel_layer: that layer, forgetting the channels of ended streams and of failed joins.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "ocr.channel_layer.PubSubChannelLayer",
        "CONFIG": {
            # redis-py 8 defaults to a 5 s socket timeout: no limit for the subscribed connection.
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "prefix": f"{OCR_QUEUE_NAME}:asgi",
        },
    }
}

OCR_WORKERS = max(1, env("OCR_WORKERS"))
OCR_JOB_TIMEOUT = env("OCR_JOB_TIMEOUT")
Q_CLUSTER = {
    "name": OCR_QUEUE_NAME,
    "workers": OCR_WORKERS,
    "redis": REDIS_URL,
    "broker_class": "ocr.broker.RedisBroker",  # its pusher outlives a Redis restart
    "timeout": OCR_JOB_TIMEOUT,
    "retry": OCR_JOB_TIMEOUT + 60,
    "max_attempts": 1,
    "catch_up": False,
    # No django-q2 record of successful jobs (the task's row is the record; failures are kept):
    # with a limit, each finished job read every stored success row under a lock to prune one.
    # 600 jobs of cancelled tasks drained in 4.2 s instead of 10.7 s (9.5 against 24.3 ms of
    # qcluster CPU a job, PostgreSQL).
    "save_limit": -1,
    "ack_failures": True,
    "label": "Task queue",
    # Jobs a busy cluster takes from Redis ahead of a free worker (default workers**2, plus one in
    # the pusher's hand): held there, they wait while another node's free workers have none.
    "queue_limit": 1,
}

# --- REST ------------------------------------------------------------------------------
OCR_ALLOW_ANONYMOUS = env("OCR_ALLOW_ANONYMOUS")
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["ocr.permissions.OCRAccess"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "ocr.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_CLASSES": ["ocr.api.throttles.OCRRateThrottle"],  # rates: RATE_LIMIT_REQUESTS, OCR_CANCEL_RATE
    # Rate limits key anonymous callers by IP: X-Forwarded-For is believed only behind this many proxies.
    "NUM_PROXIES": env("OCR_TRUSTED_PROXIES"),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "ocrsite OCR API",
    "DESCRIPTION": "Images and PDFs in, text out: async, sync or streamed, with real cancellation. "
    "Live events: WebSocket ws://HOST/ws/ocr/tasks/{task_id}/?after=SEQ (same JSON as the SSE stream).",
    # info.version is ocr.api.versioning.API_VERSION, set by the hook below (docs/versioning.md)
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "OAS_VERSION": "3.1.0",  # JSON Schema 2020-12: the SSE events' `data` is typed with contentSchema
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "ocr.api.schema.add_async_views",
        "ocr.api.openapi.complete_schema",
    ],
}

# --- OCR limits and behaviour -----------------------------------------------------------
MAX_CONCURRENT_TASKS = env("MAX_CONCURRENT_TASKS")
RATE_LIMIT_REQUESTS = env("RATE_LIMIT_REQUESTS")
OCR_CANCEL_RATE = env("OCR_CANCEL_RATE")
OCR_MAX_IMAGE_BYTES = env("OCR_MAX_IMAGE_BYTES")
OCR_MAX_PDF_BYTES = env("OCR_MAX_PDF_BYTES")
OCR_MAX_PDF_PAGES = env("OCR_MAX_PDF_PAGES")
# Pixels of one page as rendered or decoded (a tiny PDF can declare a huge page); larger: refused
# at submit when the size is known there, else that page fails.
OCR_MAX_PAGE_PIXELS = env("OCR_MAX_PAGE_PIXELS")
# Address-space limit of each tesseract process (0: none), so one page can never take the host down.
OCR_TESSERACT_MAX_MEMORY_MB = env("OCR_TESSERACT_MAX_MEMORY_MB")
# GET /metrics (Prometheus): from these addresses, or with `Authorization: Bearer <OCR_METRICS_TOKEN>`.
OCR_METRICS_TOKEN = env("OCR_METRICS_TOKEN")
OCR_METRICS_ALLOW = env("OCR_METRICS_ALLOW")
OCR_RETENTION_DAYS = env("OCR_RETENTION_DAYS")
# Cancel audits are kept this long (0: as long as OCR_RETENTION_DAYS).
OCR_AUDIT_RETENTION_DAYS = env("OCR_AUDIT_RETENTION_DAYS") or OCR_RETENTION_DAYS
# Dashboard banner and WARNING log when cancelled / finished over the last N minutes exceeds this.
OCR_CANCEL_ALERT_RATE = env("OCR_CANCEL_ALERT_RATE")
OCR_CANCEL_ALERT_MINUTES = env("OCR_CANCEL_ALERT_MINUTES")
OCR_CANCEL_ALERT_MIN_TASKS = env("OCR_CANCEL_ALERT_MIN_TASKS")
OCR_LLM_BASE_URL = env("OCR_LLM_BASE_URL")
OCR_LLM_API_KEY = env("OCR_LLM_API_KEY")
OCR_LLM_MODEL = env("OCR_LLM_MODEL")
# LLM refinement (ocr/llm.py): send the page image too (vision models); timeouts in seconds
# (read: longest silence in the stream; page: longest answer); retries on connection errors,
# 408/429/5xx; max_tokens 0 = from the page length; answers changing more than MAX_CHANGE of the
# OCR text's characters (edit distance / length) are not used (0 turns that check off).
OCR_LLM_VISION = env("OCR_LLM_VISION")
OCR_LLM_CONNECT_TIMEOUT = env("OCR_LLM_CONNECT_TIMEOUT")
OCR_LLM_READ_TIMEOUT = env("OCR_LLM_READ_TIMEOUT")
OCR_LLM_PAGE_TIMEOUT = env("OCR_LLM_PAGE_TIMEOUT")
OCR_LLM_MAX_RETRIES = env("OCR_LLM_MAX_RETRIES")
OCR_LLM_MAX_TOKENS = env("OCR_LLM_MAX_TOKENS")
OCR_LLM_TEMPERATURE = env("OCR_LLM_TEMPERATURE")
OCR_LLM_MAX_CHANGE = env("OCR_LLM_MAX_CHANGE")
OCR_CANCEL_POLL_SECONDS = env("OCR_CANCEL_POLL_SECONDS")
OCR_SYNC_TIMEOUT = env("OCR_SYNC_TIMEOUT")
OCR_SSE_KEEPALIVE_SECONDS = env("OCR_SSE_KEEPALIVE_SECONDS")
# A stream without a push for this long re-joins its group and reads the database (Redis restarts).
OCR_STREAM_RESYNC_SECONDS = env("OCR_STREAM_RESYNC_SECONDS")
# Operator feed (ocr/feed.py): items replayed to a reader without a cursor; how long a reader
# waits for a missing id (a transaction not yet committed) before taking it for a rollback.
OCR_FEED_REPLAY = max(0, env("OCR_FEED_REPLAY"))
OCR_FEED_GAP_SECONDS = env("OCR_FEED_GAP_SECONDS")
# A processing task whose worker sent no heartbeat for this long is re-queued once, then failed.
OCR_HEARTBEAT_SECONDS = env("OCR_HEARTBEAT_SECONDS")
OCR_WORKER_LOST_SECONDS = env("OCR_WORKER_LOST_SECONDS")
OCR_PENDING_REQUEUE_SECONDS = env("OCR_PENDING_REQUEUE_SECONDS")
# A PDF of more pages is split into slices of this many that workers on any node take (ocr/slices.py).
OCR_SLICE_PAGES = max(1, env("OCR_SLICE_PAGES"))
# Webhooks (ocr/webhooks.py): hosts a callback_url may name (host or host:port; `*`: any host that
# resolves to public addresses only); empty = callbacks off. Secret `whsec_<base64>` (Standard
# Webhooks); attempts per event, each timing out after TIMEOUT s, retried after BACKOFF * 2**(n-1) s.
OCR_WEBHOOK_ALLOWED_HOSTS = env("OCR_WEBHOOK_ALLOWED_HOSTS")
OCR_WEBHOOK_SECRET = env("OCR_WEBHOOK_SECRET")
OCR_WEBHOOK_MAX_ATTEMPTS = max(1, env("OCR_WEBHOOK_MAX_ATTEMPTS"))
OCR_WEBHOOK_TIMEOUT_SECONDS = env("OCR_WEBHOOK_TIMEOUT_SECONDS")
OCR_WEBHOOK_BACKOFF_SECONDS = env("OCR_WEBHOOK_BACKOFF_SECONDS")
OCR_WEBHOOK_BACKOFF_MAX_SECONDS = env("OCR_WEBHOOK_BACKOFF_MAX_SECONDS")
# deliveries at once per sweeper (their own threads: a slow receiver never holds an OCR worker)
OCR_WEBHOOK_CONCURRENCY = max(1, env("OCR_WEBHOOK_CONCURRENCY"))
# Threads (each with its database connection) kept by each daphne process for the sync code of
# HTTP requests; a request finding none free gets a thread of its own (ocrsite/http_threads.py).
OCR_HTTP_THREADS = max(0, env("OCR_HTTP_THREADS"))
# Niceness of the qcluster's worker processes (and of its session's scheduling group): the OCR
# work's own Python yields the CPU to the API and the cancel killers (ocr/apps.py). 0: unchanged.
OCR_WORKER_NICE = min(19, max(0, env("OCR_WORKER_NICE")))
# This node's name in the task JSON (`worker_node`) and in metrics (several nodes: API.md section 12).
OCR_NODE_NAME = env("OCR_NODE_NAME")
# Node-local tesseract slots (flock files): never more tesseract processes than OCR_WORKERS.
OCR_SLOT_DIR = env("OCR_SLOT_DIR", default=os.path.join(tempfile.gettempdir(), f"{OCR_QUEUE_NAME}-slots"))
# Deprecated operations (docs/versioning.md), none today: each a dict with `path` (regex of the
# request path), `methods`, `deprecated_at` and `sunset_at` (aware datetimes) and `link` (why, what instead).
OCR_DEPRECATIONS: list[dict] = []

# Uploads larger than this go to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "ui-index"
LOGOUT_REDIRECT_URL = "login"

# --- Static, media, i18n -----------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = env("STATIC_ROOT", default=None)
# daphne serves no static files itself: WhiteNoise does, straight from the apps' static
# folders (no collectstatic step needed to run).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(BASE_DIR / "media")))
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "filters": {"quiet_repeats": {"()": "ocr.channel_layer.QuietRepeats"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django_q": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        # a traceback a second while Redis is down: one a minute, with the count of the others
        "channels_redis.pubsub": {"filters": ["quiet_repeats"]},
    },
}
