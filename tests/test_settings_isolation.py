from django.conf import settings
from django.db import connection


def test_tests_run_on_their_own_queue_and_database(django_db_setup):
    assert settings.OCR_QUEUE_NAME.startswith("ocrtest")
    assert settings.Q_CLUSTER["name"] == settings.OCR_QUEUE_NAME
    assert settings.OCR_QUEUE_NAME in str(connection.settings_dict["NAME"])
