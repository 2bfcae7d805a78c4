"""The reaper as a django-q2 schedule, so that lost work is found even without ocr_sweeper."""

from django.db import migrations


def add_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="ocr-reaper",
        defaults={"func": "ocr.tasks.reap", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="ocr-reaper").delete()


class Migration(migrations.Migration):
    dependencies = [("ocr", "0002_worker_heartbeat"), ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more")]
    operations = [migrations.RunPython(add_schedule, remove_schedule)]
