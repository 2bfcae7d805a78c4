"""Cancel tasks whose deadline passed while they waited in the queue (running ones are
watched by their worker). Safe to run on several hosts: each cancel is a conditional UPDATE."""

import logging
import signal
import threading

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from ocr import services

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Enforce task deadlines (deadline_seconds) for queued and running tasks."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=0.5)
        parser.add_argument("--once", action="store_true")

    def handle(self, *args, interval: float, once: bool, **options):
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while True:
            try:
                count = services.expire_deadlines()
                if count:
                    logger.info("sweeper: %d tasks cancelled on deadline", count)
            except Exception:
                logger.exception("sweeper: deadline pass failed")
            close_old_connections()
            if once or stop.wait(interval):
                return
