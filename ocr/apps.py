from django.apps import AppConfig


class OcrConfig(AppConfig):
    name = "ocr"
    verbose_name = "OCR"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
