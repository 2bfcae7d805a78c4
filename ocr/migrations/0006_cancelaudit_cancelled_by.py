from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("ocr", "0005_cleanup_schedule")]

    operations = [
        # one name for who cancelled: `cancelled_by`, as on the task and in its event
        migrations.RenameField(model_name="cancelaudit", old_name="source", new_name="cancelled_by"),
    ]
