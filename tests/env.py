"""Loaded with `-p tests.env` before pytest-django reads the settings: each test run gets its
own queue, channel prefix, tesseract slots and test database, so that a `make run` or another
test run on the same Redis never takes its jobs."""

import os
import tempfile

os.environ.setdefault("OCR_QUEUE_NAME", f"ocrtest{os.getpid()}")
os.environ.setdefault("MEDIA_ROOT", tempfile.mkdtemp(prefix="ocrsite-media-"))
os.environ.setdefault("OCR_WORKERS", "2")
# Lost workers are noticed within seconds in tests (production: 30 s).
os.environ.setdefault("OCR_HEARTBEAT_SECONDS", "0.5")
os.environ.setdefault("OCR_WORKER_LOST_SECONDS", "3")
