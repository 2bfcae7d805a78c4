from django.conf import settings


def test_tests_run_on_their_own_queue_and_database():
    assert settings.OCR_QUEUE_NAME.startswith("ocrtest")
    assert settings.Q_CLUSTER["name"] == settings.OCR_QUEUE_NAME
    assert settings.OCR_QUEUE_NAME in str(settings.DATABASES["default"]["TEST"]["NAME"])
