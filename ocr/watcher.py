"""The worker's cancel watcher: `CancelWatcher` polls the task's row (the database is the truth)
every OCR_CANCEL_POLL_SECONDS, woken at once by the task's Redis wake-up channel, and once the
task is no longer `processing` in its attempt (cancelled by anyone, failed, or taken over by
another worker) kills the task's tesseract processes through the CancelScope. It also enforces
the deadline and the limits, and heartbeats. `run_watched` runs a job's work under one.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from . import engine, queue, services, upkeep
from .models import CancelledBy, OCRTask, TaskStatus

logger = logging.getLogger(__name__)


LOCK_WAIT_MS = 2000  # a cancel transaction holds the task's row for milliseconds


class CancelWatcher(threading.Thread):
    """Watches one attempt of a task; on cancel (or deadline) kills its tesseract processes.

    Between polls it listens on the task's Redis wake-up channel, so that a cancel is seen at
    once; the row stays the truth, and polling alone still works when Redis does not answer."""

    def __init__(self, task: OCRTask, scope: engine.CancelScope) -> None:
        super().__init__(name=f"cancel-watcher-{task.pk}", daemon=True)
        self.task = task
        self.scope = scope
        self.stopped = threading.Event()
        self.detected_at: float | None = None
        self._poll_sql: str | None = None
        self.limits = task.parameters.limits or {}
        self._poll_pk = None
        self.next_beat = 0.0

    def run(self) -> None:
        poll = settings.OCR_CANCEL_POLL_SECONDS
        self.next_beat = time.monotonic() + settings.OCR_HEARTBEAT_SECONDS
        wakeups = queue.subscribe_task_wakeups(self.task.pk)
        database_lost = False
        try:
            while not self.stopped.is_set():
                woke = None
                if wakeups is not None:
                    woke = queue.wait_for_wakeup(wakeups, timeout=poll)
                else:
                    self.stopped.wait(poll)
                if self.stopped.is_set():
                    return
                if woke == queue.WAKE_IN_FLIGHT and connection.vendor == "postgresql":
                    self.stop_in_flight()
                    return
                try:
                    if self.check():
                        return
                except (OperationalError, InterfaceError) as exc:  # a database restart: keep watching
                    if not database_lost:
                        logger.warning("task %s: cancel watcher lost the database (%s)", self.task.pk, exc)
                    database_lost = True
                    connection.close()  # the next poll opens a new connection
                    continue
                if database_lost:
                    logger.info("task %s: cancel watcher reached the database again", self.task.pk)
                    database_lost = False
        except Exception:
            logger.exception("task %s: cancel watcher failed", self.task.pk)
        finally:
            if wakeups is not None:
                wakeups.close()
            connection.close()

    def stop_in_flight(self) -> None:
        """A cancel has changed the task's row and woken us before its commit (PostgreSQL, see
        queue.wake_task_worker): kill now, then confirm on the commit (poll_row waits for it).

        Only a cancel that changed the row sends this wake-up, so the kill does not wait for the
        rest of its transaction (the event, result, audit and feed rows, the durable commit).
        Should that transaction roll back after all, the attempt is re-queued at once (pages
        done are kept) instead of stopped; re-queuing is conditional on the committed row, so a
        cancel that commits late still wins. A database lost meanwhile leaves the attempt to
        the sweeper's lost-work path, as for any dead worker."""
        self.detected_at = time.monotonic()
        killed = self.scope.cancel()
        try:
            row = self.poll_row(wait_for_commit=True)
            ours, running = self.standing(row)
            if running:
                logger.warning(
                    "task %s: the cancel that stopped attempt %d rolled back", self.task.pk, self.task.attempt
                )
                self.requeue()
                return
        except DatabaseError as exc:
            logger.warning("task %s: stop not confirmed, database lost (%s)", self.task.pk, exc)
            return
        why = row[0] if ours else "attempt taken over by another worker"
        logger.info("task %s: stop detected in flight (%s), killed %d tesseract", self.task.pk, why, killed)

    def standing(self, row: tuple[str, int] | None) -> tuple[bool, bool]:
        """(ours, running) from a polled row: ours while the row's attempt is this one (re-queued
        as lost, it is another worker's now), running while it is also `processing`."""
        ours = row is not None and row[1] == self.task.attempt
        return ours, ours and row[0] == TaskStatus.PROCESSING

    def requeue(self) -> None:
        """Hand the stopped attempt back to the queue (pages done are kept)."""
        services.task_requeue(task_id=self.task.pk, attempt=self.task.attempt)

    def check(self) -> bool:
        """One look at the task's row: deadline, limits, heartbeat; True once the task is no
        longer running in this attempt and its tesseracts were killed (the watcher is done)."""
        row = self.poll_row()
        ours, running = self.standing(row)
        deadline = self.task.deadline_at
        if running and deadline and timezone.now() >= deadline:
            upkeep.task_cancel_if_expired(task=self.task)
            return False  # the next poll sees the cancel
        breach = self.limit_exceeded() if running else None
        if breach:
            logger.info("task %s: %s", self.task.pk, breach)
            services.task_cancel_if_active(task_id=self.task.pk, reason=breach, cancelled_by=CancelledBy.SYSTEM)
            return False
        if running:
            if time.monotonic() >= self.next_beat:
                self.heartbeat()
                self.next_beat = time.monotonic() + settings.OCR_HEARTBEAT_SECONDS
            return False
        if self.stopped.is_set():
            return True
        self.detected_at = time.monotonic()
        killed = self.scope.cancel()
        why = row[0] if ours else "attempt taken over by another worker"
        logger.info("task %s: stop detected (%s), killed %d tesseract", self.task.pk, why, killed)
        return True

    def heartbeat(self) -> None:
        services.task_heartbeat(task_id=self.task.pk, attempt=self.task.attempt)

    def cpu_seconds(self) -> float:
        """CPU seconds of the task's OCR processes so far (those of this job)."""
        return self.scope.cpu_seconds()

    def limit_exceeded(self) -> str | None:
        """The cancel reason when the task went past one of its `request.limits`, else None."""
        limits = self.limits
        max_seconds = limits.get("max_processing_seconds")
        if max_seconds and self.task.started_at:
            if (timezone.now() - self.task.started_at).total_seconds() > max_seconds:
                return f"Limit exceeded: max_processing_seconds={max_seconds}"
        max_cpu = limits.get("max_cpu_seconds")
        if max_cpu and self.cpu_seconds() > max_cpu:
            return f"Limit exceeded: max_cpu_seconds={max_cpu}"
        return None

    def poll_query(self) -> tuple[str, list, str]:
        """The row poll: SQL, its parameters, and the clause that makes it wait for a lock on
        the task's row. Plain SQL: this runs 20 times a second per task, and the ORM's query
        building cost about 3x the CPU of the query itself."""
        if self._poll_sql is None:
            table = connection.ops.quote_name(OCRTask._meta.db_table)
            self._poll_sql = f"SELECT status, attempt FROM {table} WHERE id = %s"  # noqa: S608
            self._poll_pk = OCRTask._meta.pk.get_db_prep_value(self.task.pk, connection)
        return self._poll_sql, [self._poll_pk], "FOR SHARE"

    def poll_row(self, *, wait_for_commit: bool = False) -> tuple[str, int] | None:
        """(status, attempt) of the task.

        `wait_for_commit` (PostgreSQL): a transaction that changed the row has woken us before
        its commit; FOR SHARE waits for its lock on the row and then reads the committed row
        (see stop_in_flight). Bounded by LOCK_WAIT_MS; after it (or on any error) the plain read."""
        sql, params, lock = self.poll_query()
        if wait_for_commit and connection.vendor == "postgresql":
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT_MS}ms'")
                    cursor.execute(f"{sql} {lock}", params)
                    return cursor.fetchone()
            except DatabaseError as exc:
                logger.info("task %s: lock-waiting read failed (%s), plain read", self.task.pk, exc)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    def stop(self) -> None:
        self.stopped.set()


def run_watched(task: OCRTask, watcher: CancelWatcher, work, finish) -> None:
    """Run `work()` under `watcher`, then `finish()` unless a cancel stopped the work first;
    no tesseract outlives this call, whatever ended it."""
    watcher.start()
    try:
        work()
        watcher.stop()
        finish()  # guarded: a no-op when a cancel won
    except engine.Cancelled:
        pass
    finally:
        watcher.stop()
        watcher.scope.cancel()
    if watcher.detected_at is not None:
        stopped_ms = (time.monotonic() - watcher.detected_at) * 1000
        # A stop seen in flight is confirmed by the watcher once the cancel commits; before
        # that, the conditional UPDATE below would see the row still `processing`.
        watcher.join(LOCK_WAIT_MS / 1000 + 5)
        logger.info("task %s: work stopped %.0f ms after the cancel was detected", task.pk, stopped_ms)
    # The work is over: a cancelled task records when (a no-op for any other), also after a
    # cancel that landed as the work ended, unseen by the stopped watcher (its finish refused).
    services.task_work_stopped(task_id=task.pk)
