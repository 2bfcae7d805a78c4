"""Delete finished tasks older than OCR_RETENTION_DAYS (files, pages, events) and cancel audits
older than OCR_AUDIT_RETENTION_DAYS. Also scheduled daily in django-q2."""

import json

from django.conf import settings
from django.core.management.base import BaseCommand

from ocr import upkeep


class Command(BaseCommand):
    help = "Delete old finished tasks and their files (retention)."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None, help="override OCR_RETENTION_DAYS")
        parser.add_argument("--audit-days", type=int, default=None, help="override OCR_AUDIT_RETENTION_DAYS")
        parser.add_argument("--dry-run", action="store_true")

    def handle(self, *args, days, audit_days, dry_run, **options):
        report = upkeep.purge_expired(
            retention_days=days if days is not None else settings.OCR_RETENTION_DAYS,
            audit_retention_days=audit_days if audit_days is not None else settings.OCR_AUDIT_RETENTION_DAYS,
            dry_run=dry_run,
        )
        self.stdout.write(json.dumps(report))
