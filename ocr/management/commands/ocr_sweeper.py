"""Enforce deadlines of queued tasks (running ones are watched by their worker), reap lost
work (tasks whose worker died, jobs lost by the broker, orphan tesseracts on this host), queue
due webhook retries and run webhook deliveries (a thread pool of their own, off the OCR workers);
and be this node's killer of cancelled tasks' OCR processes (ocr/killer.py, a thread).
Safe to run on several hosts: every change is a conditional UPDATE."""

import gc
import logging
import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections
from django.utils import timezone

from ocr import engine, killer, pipeline, queue, tasks, upkeep, webhooks

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Enforce task deadlines (deadline_seconds) for queued and running tasks."

    def add_arguments(self, parser):
        parser.add_argument(
            "--interval", type=float, default=5.0, help="longest sleep between passes (woken earlier when due)"
        )
        parser.add_argument("--reap-interval", type=float, default=5.0, help="lost-work pass every N s")
        parser.add_argument("--once", action="store_true")
        parser.add_argument("--print-slot-dir", action="store_true", help="print OCR_SLOT_DIR and exit")
        parser.add_argument(
            "--orphans-only",
            action="store_true",
            help="only kill this instance's orphan tesseracts and remove their page images, then exit",
        )

    def handle(self, *args, interval: float, reap_interval: float, once: bool, orphans_only: bool, **options):
        if options["print_slot_dir"]:
            self.stdout.write(settings.OCR_SLOT_DIR)
            return
        if orphans_only:
            killed = engine.kill_orphans(pipeline.pages_dir())
            removed = engine.remove_orphan_pages(pipeline.pages_dir())
            self.stdout.write(f"killed {killed} orphan tesseracts, removed {removed} page images")
            return

        def leave(*_):
            raise SystemExit(0)  # interrupts the wait at once

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, leave)
        # A full collection over the start-up objects took 40-130 ms here, and the killer thread
        # must not stall in one: only what is made from now on is scanned (as in ocrsite.asgi).
        gc.collect()
        gc.freeze()
        wakeups = queue.subscribe_sweeper_wakeups()
        deliverer = node_killer = None
        if not once:
            node_killer = killer.NodeKiller(pipeline.pages_dir())
            node_killer.start()
            deliverer = webhooks.Deliverer(settings.OCR_WEBHOOK_CONCURRENCY)
            deliverer.start()
        try:
            self.loop(wakeups, interval=interval, reap_interval=reap_interval, once=once)
        finally:
            if deliverer is not None:
                deliverer.stop()
            if node_killer is not None:
                node_killer.stop()

    def loop(self, wakeups, *, interval: float, reap_interval: float, once: bool) -> None:
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
            sleep = min(interval, max(0.0, next_reap - time.monotonic()))
            try:
                count = upkeep.expire_deadlines()
                if count:
                    logger.info("sweeper: %d tasks cancelled on deadline", count)
                due = upkeep.next_deadline()
                if due is not None:
                    sleep = min(sleep, max(0.0, (due - timezone.now()).total_seconds()))
            except Exception:
                logger.exception("sweeper: deadline pass failed")
            try:
                webhooks.retry_due()
                due = webhooks.next_retry()
                if due is not None:
                    sleep = min(sleep, max(0.0, (due - timezone.now()).total_seconds()))
            except Exception:
                logger.exception("sweeper: webhook retry pass failed")
            close_old_connections()
            if once:
                return
            # asleep until the next deadline or reap is due, or a submit announces a new deadline
            sleep = max(sleep, 0.05)
            if wakeups is not None:
                queue.wait_for_wakeup(wakeups, timeout=sleep)
            else:
                time.sleep(sleep)
