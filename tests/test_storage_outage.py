"""Uploads cannot be stored (media folder read-only, full or gone): a submit answers 503 with
a message saying so, never a 500, and leaves no task behind. `make chaos` makes a live
service's media folder immutable (`chattr +i`) while tasks run."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from ocr.models import OCRTask
from tests import factories


@pytest.mark.django_db
def test_a_submit_whose_upload_cannot_be_stored_is_a_503_and_no_task(settings, tmp_path, no_worker):
    media = tmp_path / "media"
    media.write_bytes(b"")  # a file where the folder should be: every write under it fails, as root too
    settings.MEDIA_ROOT = media
    body = {"file": SimpleUploadedFile("scan.png", factories.text_image())}
    response = APIClient().post("/v1/ocr/process", body, format="multipart")
    assert response.status_code == 503, response.content
    assert "could not be stored" in response.json()["detail"]
    assert response["Retry-After"]
    assert not OCRTask.objects.exists() and not no_worker
