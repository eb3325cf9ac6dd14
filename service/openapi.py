"""/openapi.json: FastAPI's description of the routes, completed with the bodies the inference routes read raw.

The inference routes parse their own bodies (for speed), so FastAPI sees no request model; the schemas in
service.openapi_models are added here, with the status codes, the dialects' error bodies and the binary
extension's header. TF Serving's catch-all route is described as the paths its grammar accepts.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.openapi_models import DOC_MODELS

JSON = "application/json"
BINARY = "application/octet-stream"
PROM = "text/plain; version=0.0.4"
REF = "#/components/schemas/{model}"
TORCHSERVE_PREFIXES = ("/ping", "/predictions", "/models")
HEADER_LENGTH = "Inference-Header-Content-Length"
ERRORS = {
    "400": "Malformed request: the message names the problem",
    "401": "Control endpoint without the admin token",
    "403": "Model control is off, or the token is wrong",
    "404": "No such model, version or route",
    "405": "Method not allowed",
    "413": "Body larger than max_body_bytes",
    "415": "Unsupported Content-Type or Content-Encoding",
    "429": "Too many requests",
    "499": "The client left before its batch ran",
    "500": "Internal error; the message quotes the request id",
    "503": "Model not ready, queue full (Retry-After) or queue timeout",
    "504": "The request's deadline passed",
}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
LABEL = {"name": "label", "in": "path", "required": True, "schema": {"type": "string"}}


def install(app: FastAPI) -> None:
    """Make `app.openapi()` return the completed description (built once, then cached by FastAPI's contract)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI) -> dict[str, Any]:
    """The whole document: every route, every dialect."""
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes, description=__doc__)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in DOC_MODELS:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    paths: dict[str, Any] = doc["paths"]
    for path in [p for p in paths if p.startswith("/{v1}")]:
        del paths[path]
    paths.update(_tfserving_paths())
    for path, item in paths.items():
        for operation in item.values():
            _errors(path, operation)
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        _v2_infer(paths[path]["post"])
    metrics = {"schema": {"type": "string"}}
    paths["/metrics"]["get"]["responses"]["200"] = {"description": "Prometheus text format", "content": {PROM: metrics}}
    for path in ("/predictions/{name}", "/predictions/{name}/{version}"):
        _torchserve(paths[path]["post"])
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)  # FastAPI's 422: this server answers 400 in the dialect's body instead
    return doc


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _errors(path: str, operation: dict[str, Any]) -> None:
    """Each error status in the dialect's body, replacing FastAPI's 422."""
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)
    body = _ref("TorchServeError" if path.startswith(TORCHSERVE_PREFIXES) else "V2Error")
    for status, description in ERRORS.items():
        responses.setdefault(status, {"description": description, "content": {JSON: {"schema": body}}})


def _v2_infer(operation: dict[str, Any]) -> None:
    """JSON or the binary tensor extension (a JSON header of Inference-Header-Content-Length bytes, then data)."""
    header = {
        "name": HEADER_LENGTH,
        "in": "header",
        "required": False,
        "description": "Binary extension: length of the JSON header that starts the body.",
        "schema": {"type": "integer", "minimum": 0},
    }
    operation.setdefault("parameters", []).append(header)
    binary = {"schema": {"type": "string", "format": "binary"}}
    operation["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref("V2InferRequest")}, BINARY: binary}}
    length = {"description": "Set when the body carries binary outputs", "schema": {"type": "integer"}}
    operation["responses"]["200"] = {
        "description": "The outputs",
        "headers": {HEADER_LENGTH: length},
        "content": {JSON: {"schema": _ref("V2InferResponse")}, BINARY: binary},
    }


def _torchserve(operation: dict[str, Any]) -> None:
    """TorchServe bodies: JSON, raw bytes (one tensor) or a form; the outputs come back as JSON."""
    operation["requestBody"] = {
        "required": True,
        "content": {
            JSON: {"schema": {}},
            BINARY: {"schema": {"type": "string", "format": "binary"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
    operation["responses"]["200"] = {"description": "The outputs", "content": {JSON: {"schema": {}}}}


def _tfserving_paths() -> dict[str, Any]:
    """Status, metadata and :predict for a model, a version and a label; the model list."""
    predict = {
        "tags": ["tfserving"],
        "summary": "TF Serving predict (row or columnar form)",
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"oneOf": [_ref("TFPredictRow"), _ref("TFPredictColumnar")]}}},
        },
        "responses": {"200": {"description": "The outputs", "content": {JSON: {"schema": _ref("TFPredictResponse")}}}},
    }
    status = {
        "tags": ["tfserving"],
        "summary": "TF Serving model status",
        "responses": {"200": {"description": "Version states", "content": {JSON: {"schema": {"type": "object"}}}}},
    }
    metadata = copy.deepcopy(status) | {"summary": "TF Serving model metadata (signature)"}
    paths: dict[str, Any] = {
        "/v1/models": {"get": _with(status, [], "tfserving_list") | {"summary": "TF Serving model list"}}
    }
    for suffix, params in (("", [NAME]), ("/versions/{version}", [NAME, VERSION]), ("/labels/{label}", [NAME, LABEL])):
        base = "/v1/models/{name}" + suffix
        op = suffix.replace("/", "_").replace("{", "").replace("}", "")
        paths[base] = {"get": _with(status, params, f"tfserving_status{op}")}
        paths[base + "/metadata"] = {"get": _with(metadata, params, f"tfserving_metadata{op}")}
        paths[base + ":predict"] = {"post": _with(predict, params, f"tfserving_predict{op}")}
    return paths


def _with(operation: dict[str, Any], params: list[dict[str, Any]], operation_id: str) -> dict[str, Any]:
    return copy.deepcopy(operation) | {"parameters": copy.deepcopy(params), "operationId": operation_id}
