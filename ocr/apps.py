from django.apps import AppConfig


class OcrConfig(AppConfig):
    name = "ocr"
    verbose_name = "OCR"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from . import checks  # noqa: F401  (registers the system checks)

        post_spawn.connect(worker_spawned, dispatch_uid="ocr-worker-nice")


def worker_spawned(sender, proc_name: str = "", **kwargs) -> None:
    """A qcluster worker process has started: it runs at OCR_WORKER_NICE, and so does its
    qcluster's session (processes.lower_own_priority). Its Python (renders, writes, events) then
    yields the CPU to the web processes and the nodes' killers at once: a cancel's answer on a
    machine whose cores all run OCR waited for a worker rendering the next page."""
    from django.conf import settings

    from .processes import lower_own_priority

    if settings.OCR_WORKER_NICE:
        lower_own_priority(settings.OCR_WORKER_NICE, session_of="qcluster")
