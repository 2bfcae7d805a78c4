"""OpenAPI links (ocr/api/openapi.py): from every submit's answer to the paths of the task it
created, so that a client generated from the schema (and schemathesis' stateful phase) can follow
a submit to its task."""

from __future__ import annotations

from ..kinds import KINDS, Kind


def _operation_ids(paths: dict) -> dict[tuple[str, str], str]:
    return {(path, method): op["operationId"] for path, ops in paths.items() for method, op in ops.items()}


def _task_links(ids: dict, prefix: str, task_id: str) -> dict:
    """Links from an answer naming a task (`task_id` at that runtime expression) to its operations."""
    links = {}
    for suffix, method, name in (
        ("", "get", "Get"),
        ("/cancel", "post", "Cancel"),
        ("/resume", "post", "Resume"),
        ("/download", "get", "Download"),
        ("/deliveries", "get", "Deliveries"),
    ):
        operation_id = ids.get((f"/v1/ocr/{prefix}/{{task_id}}{suffix}", method))
        if operation_id:
            links[f"{name}Task{'' if prefix == 'tasks' else prefix.title().replace('-', '')}"] = {
                "operationId": operation_id,
                "parameters": {"task_id": task_id},
            }
    return links


def _submit_links(ids: dict, kind: Kind | None, *, streaming: bool = False) -> dict:
    """A submit's answer: the universal task paths, the kind's typed ones, a streaming task's stream."""
    task_id = "$response.body#/task_id"
    links = _task_links(ids, "tasks", task_id)
    if kind is not None and kind.typed_prefix:
        links |= _task_links(ids, kind.typed_prefix, task_id)
    if streaming:
        for path, method, name in (
            ("/v1/ocr/stream/{task_id}", "get", "Events"),
            ("/v1/ocr/stream/{task_id}/cancel", "post", "CancelStream"),
        ):
            links[name] = {"operationId": ids[(path, method)], "parameters": {"task_id": task_id}}
    return links


def _batch_links(ids: dict) -> dict:
    links = _task_links(ids, "tasks", "$response.body#/tasks/0/task_id")
    for name, suffix, method in (("GetBatch", "", "get"), ("CancelBatch", "/cancel", "post")):
        links[name] = {
            "operationId": ids[(f"/v1/ocr/batches/{{batch_id}}{suffix}", method)],
            "parameters": {"batch_id": "$response.body#/batch_id"},
        }
    return links


def kind_of_submit(path: str) -> Kind | None:
    slug = path.removeprefix("/v1/ocr/").removesuffix("-sync").removesuffix("-stream")
    return next((kind for kind in KINDS.values() if kind.submit_slug == slug), None)


def add_links(paths: dict) -> None:
    ids = _operation_ids(paths)
    for path, ops in paths.items():
        for operation in ops.values():
            responses = operation["responses"]
            success = responses.get("202") or responses.get("200")
            kind = kind_of_submit(path)
            if success is None:
                continue
            if kind is not None:
                success["links"] = _submit_links(ids, kind, streaming=path.endswith("-stream"))
            elif path.endswith("/resume"):  # the new task: same kind, read on the universal paths
                success["links"] = _submit_links(ids, None)
            elif path == "/v1/ocr/batches":
                success["links"] = _batch_links(ids)
