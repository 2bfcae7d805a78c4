"""The last drf-spectacular hook: what the generator cannot infer, stated so that a client generated
from /api/schema/ is not misled (checked by tests/test_schema_fuzz.py with schemathesis).

- the `request` multipart part as `application/json` with each kind's own schema (`encoding`);
- every status code an operation really answers, with the error body and `Retry-After`;
- the SSE stream's events (`text/event-stream`, each event's `data` a TaskEvent);
- links from every answer that names a task (or a batch) to the operations on it;
- optional authentication while OCR_ALLOW_ANONYMOUS; `info.version`; deprecations.
"""

from __future__ import annotations

import re

from django.conf import settings

from .. import engine
from ..kinds import KINDS, Kind
from ..models import EventType, TaskStatus
from ..params import CALLBACK_EVENT_GROUPS, OUTPUT_FORMATS, PARAMETER_RANGES
from . import versioning
from .openapi_links import add_links, kind_of_submit

REF = "#/components/schemas/"
ERROR = {"$ref": f"{REF}Error"}
IMAGE_MEDIA_TYPES = "image/png, image/jpeg, image/bmp, image/tiff, image/webp"
ERROR_TEXT = {
    "400": "Bad input (the detail names the field)",
    "401": "Not authenticated: a bad token, or an anonymous call while OCR_ALLOW_ANONYMOUS is false",
    "403": "Not allowed (staff only, or a session call without its CSRF token)",
    "404": "Not found: unknown or malformed id, wrong kind for a typed path, or someone else's",
    "409": "Conflict (the detail says with what)",
    "410": "The task's input file is gone (retention)",
    "413": "File larger than OCR_MAX_IMAGE_BYTES / OCR_MAX_PDF_BYTES",
    "415": "Unsupported file type (judged by content)",
    "429": "Rate limit exceeded: RATE_LIMIT_REQUESTS for submits, OCR_CANCEL_RATE for cancels",
    "503": "The LLM kinds while no LLM server is configured, or MAX_CONCURRENT_TASKS reached",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}, "required": False}}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same caller and key within 24 h get the first answer again (a different file or "
    "`request` -> 409)",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the replayed first answer to the same Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
        "required": False,
    }
}


# --- The `request` part ---------------------------------------------------------------------


NO_NUL = "^[^\\x00]*$"  # a string without NUL characters


def _integer(name: str, **extra) -> dict:
    spec = PARAMETER_RANGES[name]
    return {"type": "integer", "minimum": spec["min"], **({"maximum": spec["max"]} if "max" in spec else {}), **extra}


def _languages_pattern(osd: bool) -> str:
    """Installed languages joined with '+' (or `auto` with the osd data): what `lang` accepts here."""
    names = "|".join(re.escape(name) for name in engine.tesseract_languages() if name != "osd") or "eng"
    return f"^({'auto|' if osd else ''}({names})(\\+({names}))*)$"


def request_schema(kind: Kind | None) -> dict:
    """The `request` JSON of a kind (None: a batch, whose files may be images or PDFs), as the
    kind's params serializer (ocr/api/requests.py) validates it on this server."""
    osd = engine.osd_available()
    limits = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            name: {"type": "integer", "minimum": 1} for name in ("max_processing_seconds", "max_cpu_seconds")
        },
    }
    properties = {
        "threshold": {
            "description": '"auto" (adaptive binarisation, default) or 0..1024 (a global cut, 0 = off)',
            "oneOf": [{"type": "string", "enum": ["auto"]}, _integer("threshold")],
        },
        "contrast_level": {"type": "number", "minimum": 0.1, "maximum": 5.0, "default": 1.3},
        "lang": {"type": "string", "pattern": _languages_pattern(osd), "maxLength": 200, "default": "eng"},
        "outputs": {
            "type": "array",
            "items": {"type": "string", "enum": list(OUTPUT_FORMATS)},
            "minItems": 1,
            "maxItems": len(OUTPUT_FORMATS),
            "default": ["text"],
        },
        "rotate": {"type": "string", "enum": ["none", "auto"] if osd else ["none"], "default": "none"},
        "deskew": {"type": "boolean", "default": False},
        "deadline_seconds": {"type": "integer", "minimum": 1, "nullable": True},
        "task_id": {
            "type": "string",
            "format": "uuid",
            "nullable": True,
            "description": "The client's own id (lets another client cancel a sync call); an existing one -> 409",
        },
        "priority": {"type": "string", "enum": list(PARAMETER_RANGES["priority"]["choices"]), "default": "normal"},
        "limits": limits,
        "callback_events": {
            "description": 'Webhook events: ["terminal"] (default) or ["terminal", "page"]',
            "type": "array",
            "items": {"type": "string", "enum": list(CALLBACK_EVENT_GROUPS)},
            "minItems": 1,
            "maxItems": len(CALLBACK_EVENT_GROUPS),
            "enum": [["terminal"], ["terminal", "page"], ["page", "terminal"]],
        },
    }
    if settings.OCR_WEBHOOK_ALLOWED_HOSTS and settings.OCR_WEBHOOK_SECRET:
        properties["callback_url"] = {
            "type": "string",
            "nullable": True,
            "pattern": "^https?://",
            "maxLength": 2000,
            "description": "Webhook target (API.md section 10): its host must be in OCR_WEBHOOK_ALLOWED_HOSTS",
        }
    if kind is None or kind.is_pdf:
        properties |= {
            "dpi": _integer("dpi", default=300),
            "page_select": {
                "description": "1-based pages to read (each must exist in the document, else 400)",
                "type": "array",
                "items": {"type": "integer", "minimum": 1},
                "minItems": 1,
                "maxItems": 10000,
                "nullable": True,
            },
            "text_layer": {"type": "string", "enum": ["auto", "ocr"], "default": "auto"},
        }
    llm_fields = {
        # DRF's CharField refuses NUL characters (400): the schema says so
        "prompt": {"type": "string", "minLength": 1, "maxLength": 20000, "nullable": True, "pattern": NO_NUL},
        "model": {"type": "string", "minLength": 1, "maxLength": 200, "nullable": True, "pattern": NO_NUL},
    }
    description = (
        "The `request` part (JSON). `outputs` are all written by the page's one tesseract run and downloaded from "
        "GET /v1/ocr/tasks/{id}/download?format=...; `rotate` auto: orientation detection; `deskew`: straighten up "
        'to 15 degrees; `lang`: installed languages joined with "+", or "auto" (script detection). '
        "Ranges: GET /v1/ocr/parameters."
    )
    if kind is not None:
        if kind.uses_llm:
            properties |= llm_fields
        return {"description": description, "type": "object", "additionalProperties": False, "properties": properties}
    # A batch: one request for every file; `"llm": true` makes llm / pdf_llm tasks, which alone take prompt and model
    plain = {"llm": {"type": "boolean", "enum": [False], "default": False}}
    refined = {"llm": {"type": "boolean", "enum": [True]}, **llm_fields}
    return {
        "description": description
        + ' A batch: `"llm": true` makes `llm` / `pdf_llm` tasks (and allows prompt, model).',
        "oneOf": [
            {"type": "object", "additionalProperties": False, "properties": properties | plain},
            {"type": "object", "additionalProperties": False, "required": ["llm"], "properties": properties | refined},
        ],
    }


def _request_component(kind: Kind | None) -> str:
    return "BatchParameters" if kind is None else f"{kind.slug.title().replace('_', '')}Parameters"


def _upload_body(kind: Kind | None) -> dict:
    media_type = IMAGE_MEDIA_TYPES if kind is not None and not kind.is_pdf else "application/pdf"
    if kind is None:
        media_type = f"{IMAGE_MEDIA_TYPES}, application/pdf"
        file_schema = {
            "type": "array",
            "items": {"type": "string", "format": "binary", "minLength": 1},
            "minItems": 1,
            "maxItems": 100,
            "description": "1..100 files, each judged by content (images -> ocr, PDFs -> pdf)",
        }
    else:
        file_schema = {"type": "string", "format": "binary", "minLength": 1, "description": "Judged by content"}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": file_schema, "request": {"$ref": f"{REF}{_request_component(kind)}"}},
                },
                "encoding": {"request": {"contentType": "application/json"}, "file": {"contentType": media_type}},
            }
        },
    }


# --- Events and errors ------------------------------------------------------------------------


def task_event_schema() -> dict:
    """One event of API.md section 5 (ocr.progress.TaskEventPayload)."""
    integer = {"type": "integer", "minimum": 0}
    return {
        "type": "object",
        "required": ["seq", "task_id", "type", "status", "total_pages", "processed_pages", "failed_pages"],
        "properties": {
            "seq": {"type": "integer", "minimum": 1},
            "task_id": {"type": "string", "format": "uuid"},
            "type": {"type": "string", "enum": list(EventType.values)},
            "status": {"type": "string", "enum": list(TaskStatus.values)},
            "current_page": {"type": "integer", "nullable": True},
            "total_pages": integer,
            "processed_pages": integer,
            "failed_pages": integer,
            "progress_percentage": {"type": "number"},
            "latest_page_result": {"type": "object", "nullable": True},
            "timestamp": {"type": "string", "format": "date-time"},
            "cancelled_at": {"type": "string", "format": "date-time", "nullable": True},
            "cancellation_reason": {"type": "string", "nullable": True},
            "cancelled_by": {"type": "string", "nullable": True},
            "error_message": {"type": "string", "nullable": True},
        },
    }


SSE_EVENT = {
    "description": "One server-sent event: `id` = seq, `event` = the event type, `data` = the TaskEvent JSON",
    "type": "object",
    "required": ["data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string", "enum": list(EventType.values)},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": f"{REF}TaskEvent"},
        },
    },
}


def _stream_operation(operation: dict) -> None:
    operation["parameters"] = [
        {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0}},
        {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
    ]
    operation["responses"]["200"] = {
        "description": "The task's events, stored ones first; ends after the one terminal event",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    }


def _error_response(code: str) -> dict:
    response = {"description": ERROR_TEXT[code], "content": {"application/json": {"schema": ERROR}}}
    if code in ("429", "503"):
        response["headers"] = RETRY_AFTER
    return response


def _status_codes(path: str, method: str, operation: dict) -> set[str]:
    """Every error status the operation really answers (besides those its view declares)."""
    codes = {"401"}  # a bad `Authorization: Token`, or anonymous while OCR_ALLOW_ANONYMOUS is false
    if method != "get":
        codes.add("403")  # a session call without its CSRF token
    if "{" in path or path == "/v1/ocr/tasks":  # ids; a list page past the end
        codes.add("404")
    if method != "get" or any(param["in"] != "path" for param in operation.get("parameters", [])):
        codes.add("400")
    if "multipart/form-data" in operation.get("requestBody", {}).get("content", {}):
        codes |= {"409", "413", "415", "429", "503"}  # 409: a task_id or Idempotency-Key conflict
    if path.endswith("/resume"):
        codes |= {"429", "503"}
    if path.endswith("/cancel"):
        codes.add("429")
    return codes


# --- The hook ---------------------------------------------------------------------------------


def _oas31(schema):
    """`nullable: true` (written above, and by DRF's paginator) as OpenAPI 3.1 says it: "null" among the types."""
    if isinstance(schema, list):
        return [_oas31(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _oas31(value) for key, value in schema.items()}
    if schema.pop("nullable", False):
        if "type" in schema:
            schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    return schema


def _drop_empty_alternatives(schema) -> None:
    """drf-spectacular writes a nullable JSONField as `oneOf: [{}, {"type": "null"}]`, which `null`
    matches twice (so no value is valid); `{}` among the alternatives means anything goes."""
    if isinstance(schema, list):
        for item in schema:
            _drop_empty_alternatives(item)
    elif isinstance(schema, dict):
        if {} in schema.get("oneOf", []):
            del schema["oneOf"]
        for value in schema.values():
            _drop_empty_alternatives(value)


def complete_schema(result: dict, generator, request, public) -> dict:
    result.setdefault("info", {})["version"] = versioning.API_VERSION
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["TaskEvent"] = task_event_schema()
    for kind in [*KINDS.values(), None]:
        schemas[_request_component(kind)] = request_schema(kind)
    _drop_empty_alternatives(schemas)
    schemas["Task"]["properties"]["result"] = {
        "type": ["object", "null"],
        "description": "null until the task ends; then its text, or for PDFs its pages (API.md section 3)",
    }
    # either ids or a filter (ocr/api/bulk.py BulkCancelInputSerializer.validate)
    schemas["BulkCancelInputRequest"]["oneOf"] = [
        {"required": ["task_ids"], "not": {"required": ["filter"]}},
        {"required": ["filter"], "not": {"required": ["task_ids"]}},
    ]
    cancel_refused = schemas.get("CancelRefused")
    if cancel_refused:  # `status` only when the task had finished; a bad reason's 400 has `detail` only
        cancel_refused["required"] = ["detail"]
    paths = result.get("paths", {})
    deprecated = versioning.deprecations()
    for path, ops in paths.items():
        for method, operation in ops.items():
            if path == "/v1/ocr/stream/{task_id}":
                _stream_operation(operation)
            kind = kind_of_submit(path)
            if kind is not None or path == "/v1/ocr/batches":
                operation["requestBody"] = _upload_body(kind)
                operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY)
                success = operation["responses"].get("202") or operation["responses"].get("200")
                success["headers"] = REPLAYED
            responses = operation.setdefault("responses", {})
            for code in sorted(_status_codes(path, method, operation)):
                responses.setdefault(code, _error_response(code))
            for code in ("429", "503"):
                if code in responses:
                    responses[code].setdefault("headers", RETRY_AFTER)
            security = operation.setdefault("security", [{"tokenAuth": []}, {"cookieAuth": []}])
            if settings.OCR_ALLOW_ANONYMOUS and {} not in security and not path.endswith("/cleanup"):
                security.append({})
            example_path = re.sub(r"\{[^}]+\}", "x", path)
            if any(entry.matches(method, example_path) for entry in deprecated):
                operation["deprecated"] = True
    add_links(paths)
    result["components"]["schemas"] = _oas31(schemas)  # DRF's pagination schema says `nullable` too
    return result
