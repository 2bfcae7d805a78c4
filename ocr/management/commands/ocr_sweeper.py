"""Enforce deadlines of queued tasks (running ones are watched by their worker) and reap lost
work (tasks whose worker died, jobs lost by the broker, orphan tesseracts on this host).
Safe to run on several hosts: every change is a conditional UPDATE."""

import logging
import signal
import threading
import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from ocr import services, tasks

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Enforce task deadlines (deadline_seconds) for queued and running tasks."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=0.5, help="deadline pass every N s")
        parser.add_argument("--reap-interval", type=float, default=5.0, help="lost-work pass every N s")
        parser.add_argument("--once", action="store_true")

    def handle(self, *args, interval: float, reap_interval: float, once: bool, **options):
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        next_reap = 0.0
        while True:
            if time.monotonic() >= next_reap:
                try:
                    report = tasks.reap()
                    if any(report.values()):
                        logger.warning("sweeper: lost work %s", report)
                except Exception:
                    logger.exception("sweeper: reaper pass failed")
                next_reap = time.monotonic() + reap_interval
            try:
                count = services.expire_deadlines()
                if count:
                    logger.info("sweeper: %d tasks cancelled on deadline", count)
            except Exception:
                logger.exception("sweeper: deadline pass failed")
            close_old_connections()
            if once or stop.wait(interval):
                return
