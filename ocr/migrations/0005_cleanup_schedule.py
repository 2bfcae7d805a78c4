"""Retention as a daily django-q2 schedule."""

from django.db import migrations


def add_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.update_or_create(
        name="ocr-cleanup",
        defaults={"func": "ocr.tasks.cleanup", "schedule_type": "D", "repeats": -1},
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="ocr-cleanup").delete()


class Migration(migrations.Migration):
    dependencies = [("ocr", "0004_work_stopped_at")]
    operations = [migrations.RunPython(add_schedule, remove_schedule)]
