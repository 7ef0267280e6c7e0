"""The gateway's OpenAPI 3.1 document, served at `/openapi.json`.

Each dialect describes its own routes (`Dialect.openapi()`, tagged with its name), and
request bodies are generated from the msgspec types those name, the types the dialects
decode and the neurons validate (`msgspec.json.schema_components`), so the document
cannot drift from what is accepted; it describes the public client routes only (not
`/admin`). Fuzzers read it (tests/e2e/test_fuzz.py runs schemathesis against a live
gateway).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from typing import Any

import msgspec

from cortex.dialect import Dialect, Operation

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"

#: The gateway's own routes, beside the dialects'.
_GATEWAY = (Operation(method="get", path="/health",
                      summary="Liveness and the number of live neurons"),)

_ERRORS = {
    "400": "malformed body, invalid UTF-8, JSON nested too deeply, or what a neuron rejects",
    "401": "an API key is required or wrong",
    "404": "no such model or route",
    "413": "body over `max_body_bytes`, or tools over `max_tools_bytes`",
    "429": "too many requests wait for the model, or the key's rate limit",
    "502": "a neuron failed and no retry was left",
    "503": "no live node may serve the model now",
    "504": "the model was not ready within `load_timeout`",
}

_ERROR_SCHEMA: dict[str, Any] = {
    "description": "The OpenAI envelope (`{\"error\": {...}}`) on OpenAI routes, the "
                   "Anthropic one (`{\"type\": \"error\", \"error\": {...}}`) on /v1/messages",
    "type": "object",
}


def _operation(op: Operation, tag: str) -> dict[str, Any]:
    method, path, body = op.method, op.path, op.body
    responses: dict[str, Any] = {"200": {"description": "OK; `text/event-stream` when streamed",
                                         "content": {"application/json": {"schema": {}}}}}
    for status, why in _ERRORS.items():
        responses[status] = {"description": why, "content": {"application/json": {
            "schema": {"$ref": _REF.format(name="Error")}}}}
    operation: dict[str, Any] = {"summary": op.summary, "tags": [tag], "responses": responses,
                                 "operationId": f"{method}_{path.strip('/')}".replace(
                                     "/", "_").replace("{", "").replace("}", "")}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": _REF.format(name=body.__name__)}}}}
    if "{id}" in path:
        operation["parameters"] = [{"name": "id", "in": "path", "required": True,
                                    "schema": {"type": "string"}}]
    return operation


def openapi_document(dialects: Iterable[Dialect]) -> dict[str, Any]:
    """The document: every public client route, request bodies from the wire types."""
    try:
        version = importlib.metadata.version("cortex")
    except importlib.metadata.PackageNotFoundError:
        version = "0.0.0"
    operations = [(op, dialect.name) for dialect in dialects for op in dialect.openapi()]
    operations += [(op, "gateway") for op in _GATEWAY]
    bodies = list(dict.fromkeys(op.body for op, _ in operations if op.body is not None))
    refs, components = msgspec.json.schema_components(bodies, ref_template=_REF)
    for ref, kind in zip(refs, bodies, strict=True):
        if ref["$ref"] != _REF.format(name=kind.__name__):  # a name both dialects use
            components[kind.__name__] = {"$ref": ref["$ref"]}
    components["Error"] = _ERROR_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for op, tag in operations:
        paths.setdefault(op.path, {})[op.method] = _operation(op, tag)
    return {
        "openapi": "3.1.0",
        "info": {"title": "cortex gateway", "version": version,
                 "description": "OpenAI- and Anthropic-compatible API over a fleet of "
                                "llama.cpp neurons. Unknown fields are ignored."},
        "paths": paths,
        "components": {"schemas": components},
    }
