"""The API's version in the schema and the answers, and how a deprecation is announced
(docs/versioning.md): `Deprecation` (RFC 9745), `Sunset` (RFC 8594), `Link rel="deprecation"`."""

from datetime import UTC, datetime

import pytest
from django.test import Client

from ocr.api.versioning import API_VERSION

pytestmark = pytest.mark.django_db

DELIVERIES = {
    "path": r"/v1/ocr/tasks/[^/]+/deliveries",
    "methods": ["GET"],
    "deprecated_at": datetime(2027, 1, 1, tzinfo=UTC),
    "sunset_at": datetime(2027, 7, 1, tzinfo=UTC),
    "link": "https://example.org/ocrsite/changes#deliveries",
}


def schema(client: Client) -> dict:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def test_the_schema_and_every_answer_carry_the_version_and_nothing_is_deprecated_today():
    client = Client()
    document = schema(client)
    assert document["info"]["version"] == API_VERSION and API_VERSION.startswith("1.")
    assert all(path.startswith("/v1/") for path in document["paths"])
    assert not [
        (path, method) for path, ops in document["paths"].items() for method, op in ops.items() if op.get("deprecated")
    ]
    answer = client.get("/v1/ocr/parameters")
    assert answer.status_code == 200 and answer["API-Version"] == API_VERSION
    assert "Deprecation" not in answer and "Sunset" not in answer
    assert client.get("/v1/ocr/service-info").json()["schema_version"] == API_VERSION
    assert client.get("/v1/ocr/tasks/nope").status_code == 404  # errors carry it too
    assert client.get("/v1/ocr/tasks/nope")["API-Version"] == API_VERSION


def test_a_deprecated_operation_announces_itself_in_headers_and_schema(settings):
    settings.OCR_DEPRECATIONS = [DELIVERIES]
    client = Client()
    answer = client.get("/v1/ocr/tasks/0b4e7a0e-0000-4000-8000-000000000000/deliveries")
    assert answer.status_code == 404  # an error of a deprecated operation is announced as well
    assert answer["Deprecation"] == "@1798761600"  # 2027-01-01T00:00:00Z as an RFC 9745 date
    assert answer["Sunset"] == "Thu, 01 Jul 2027 00:00:00 GMT"
    assert answer["Link"] == '<https://example.org/ocrsite/changes#deliveries>; rel="deprecation"; type="text/html"'
    for other in (client.get("/v1/ocr/tasks/0b4e7a0e-0000-4000-8000-000000000000"), client.get("/v1/ocr/parameters")):
        assert "Deprecation" not in other and "Sunset" not in other and "Link" not in other
    operations = schema(client)["paths"]
    assert operations["/v1/ocr/tasks/{task_id}/deliveries"]["get"]["deprecated"] is True
    assert "deprecated" not in operations["/v1/ocr/tasks/{task_id}"]["get"]
