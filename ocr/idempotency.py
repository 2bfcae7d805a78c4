"""Idempotent submits: the first answer to a submit with an `Idempotency-Key` is kept 24 hours
and replayed to the same caller; the same key with other content is a conflict.

The unique constraint on (caller, key) decides which of two concurrent submits does the work:
the other waits for its answer and replays it. A claim whose answer never came (its process died
between the claim and the answer: a web node killed or restarted mid-submit) is taken over by
the next call once it is CLAIM_STALE_SECONDS old, so a client's retry after a crash gets its task
instead of a 409 for 24 hours.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from .exceptions import TaskConflict
from .models import IdempotencyRecord

logger = logging.getLogger(__name__)

REPLAY_WINDOW = timedelta(hours=24)
WAIT_FOR_FIRST_SECONDS = 30.0
# Far longer than a claim lasts (the upload is in hand; storing it and the task's INSERT remain).
CLAIM_STALE_SECONDS = 60.0


def idempotency_claim(
    *, caller: str, key: str, fingerprint: str, wait_seconds: float = WAIT_FOR_FIRST_SECONDS
) -> IdempotencyRecord:
    """The record to answer from: this call's own claim (`status_code` None: this call does the
    work, then calls `idempotency_store` or `idempotency_release` with it), or the first call's
    record, whose answer is to be replayed. TaskConflict (409) when the key came with another
    request or file."""
    IdempotencyRecord.objects.filter(caller=caller, key=key, created_at__lt=timezone.now() - REPLAY_WINDOW).delete()
    give_up_at = time.monotonic() + wait_seconds
    while True:
        try:
            with transaction.atomic():
                return IdempotencyRecord.objects.create(caller=caller, key=key, fingerprint=fingerprint)
        except IntegrityError:
            pass
        record = IdempotencyRecord.objects.filter(caller=caller, key=key).first()
        if record is None:  # the first call failed and let the key go: try again
            continue
        if record.fingerprint != fingerprint:
            logger.info("idempotency key %r of %s reused with other content", key, caller)
            raise TaskConflict(f"Idempotency-Key {key!r} was already used with another file or request")
        if record.status_code is not None:
            body = record.body if isinstance(record.body, dict) else {}
            first = body.get("task_id") or f"batch {body.get('batch_id')}"
            logger.info("task %s: idempotency key %r of %s, first answer replayed", first, key, caller)
            return record
        if record.created_at < timezone.now() - timedelta(seconds=CLAIM_STALE_SECONDS):
            # Its call died unanswered (a live one answers within seconds): take the key over. A
            # task it may have created is not known here; this call creates its own.
            taken = IdempotencyRecord.objects.filter(pk=record.pk, status_code__isnull=True).delete()[0]
            if taken:
                logger.warning(
                    "idempotency key %r of %s: claim of %s never answered, taken over",
                    key,
                    caller,
                    record.created_at.isoformat(),
                )
            continue
        if time.monotonic() >= give_up_at:
            raise TaskConflict(f"Idempotency-Key {key!r}: the first request with this key is still being handled")
        time.sleep(0.05)


def idempotency_store(claim: IdempotencyRecord, *, status_code: int, body: dict) -> None:
    """Keep the first call's answer for replays (unless its claim was taken over meanwhile)."""
    IdempotencyRecord.objects.filter(pk=claim.pk, status_code__isnull=True).update(status_code=status_code, body=body)


def idempotency_release(claim: IdempotencyRecord) -> None:
    """The first call failed (bad input, busy): the key is free for a corrected retry."""
    IdempotencyRecord.objects.filter(pk=claim.pk, status_code__isnull=True).delete()
