"""TensorFlow Serving REST (also KServe V1): model status, metadata, :predict, and the model list.

The verb attaches to the last path segment (`/v1/models/m/versions/3:predict`), which path parameters cannot
express, so one catch-all route per method family parses TF Serving's grammar itself. The fixed words match
case-insensitively, as in TF Serving; model names and labels stay case-sensitive.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.convertors import Convertor, register_url_convertor

from service.api.http import JSON, VERSION_HEADER, begin, check_name, engine, json_response, not_ready
from service.api.infer import Dialect, infer
from service.codec_tfserving import PredictRequest, decode_predict, encode_predict, signature_def
from service.errors import (
    BadRequestError,
    MethodNotAllowedError,
    ModelNotReadyError,
    NotImplementedFeatureError,
)
from service.inference import InferRequest, InferResponse
from service.model import ModelInfo, ModelState
from service.repository import LABEL, parse_version

if TYPE_CHECKING:
    from service.engine import Engine

_GRAMMAR = re.compile(
    r"(?i:models)(?:/(?P<name>[^/:]+)"
    r"(?:/(?i:versions)/(?P<version>[^/:]+)|/(?i:labels)/(?P<label>[^/:]+))?"
    r"(?:/(?P<metadata>(?i:metadata))|:(?P<verb>[^/:]+))?)?"
)
_VERBS = frozenset({"predict", "classify", "regress"})
_STATES = {
    ModelState.LOADING: "LOADING",
    ModelState.READY: "AVAILABLE",
    ModelState.UNLOADING: "UNLOADING",
    ModelState.UNAVAILABLE: "END",
}
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class _V1(Convertor[str]):
    """The `v1` path prefix in any letter case."""

    regex = "[vV]1"

    def convert(self, value: str) -> str:
        """As matched."""
        return value

    def to_string(self, value: str) -> str:
        """As given."""
        return value


register_url_convertor("tfserving_v1", _V1())
router = APIRouter()


@dataclass(frozen=True, slots=True)
class Target:
    """What a /v1 path asks for: the model list, or one model's status, metadata or a verb."""

    kind: str  # "list", "status", "metadata", "predict", "classify" or "regress"
    name: str = ""
    version: int | None = None
    label: str | None = None


def parse_path(method: str, path: str) -> Target:
    """Parse the part after /v1/ by TF Serving's grammar; 400 "Malformed request" when it does not fit."""
    match = _GRAMMAR.fullmatch(path)
    verb = (match["verb"] or "").lower() if match else ""
    if match is None or (verb and verb not in _VERBS):
        raise BadRequestError(f"Malformed request: {method} /v1/{path[:200]}")
    if match["name"] is None:
        return _allow(method, Target("list"))
    name, version, label = check_name(match["name"]), match["version"], match["label"]
    if version is not None and not (version.isascii() and version.isdigit()):
        raise BadRequestError(f"Malformed request: {method} /v1/{path[:200]}")
    if label is not None and not LABEL.fullmatch(label):
        raise BadRequestError("label must match [A-Za-z0-9_]+")
    kind = verb or ("metadata" if match["metadata"] else "status")
    return _allow(method, Target(kind, name, parse_version(version, name), label))


def _allow(method: str, target: Target) -> Target:
    wanted = "POST" if target.kind in _VERBS else "GET"
    if method != wanted and not (wanted == "GET" and method == "HEAD"):
        raise MethodNotAllowedError(f"method {method} not allowed here; use {wanted}", headers={"Allow": wanted})
    return target


@router.api_route("/{v1:tfserving_v1}", methods=_METHODS)
@router.api_route("/{v1:tfserving_v1}/{path:path}", methods=_METHODS)
async def dispatch(request: Request, v1: str, path: str = "") -> Response:
    """Route a /v1 request by TF Serving's grammar."""
    target = parse_path(request.method, path)
    if target.kind in _VERBS:
        return await predict(request, target)
    if target.kind == "list":
        return json_response({"models": engine(request).names()})
    if target.kind == "metadata":
        return metadata(request, target)
    return status(request, target)


def status(request: Request, target: Target) -> Response:
    """TF Serving's model status, plus KServe V1's name and ready."""
    found = engine(request)
    if target.version is None and target.label is None:
        models = sorted(found.versions(target.name).values(), key=lambda m: m.version, reverse=True)
        ready = _serving(found, target.name)
    else:
        models = [found.get(target.name, target.version, target.label)]
        ready = models[0].ready
    return json_response({"name": target.name, "ready": ready, "model_version_status": [_status(m) for m in models]})


def _serving(found: Engine, name: str) -> bool:
    try:
        return found.get(name).ready
    except ModelNotReadyError:
        return False


def _status(model: ModelInfo) -> dict[str, object]:
    failed = model.state is ModelState.UNAVAILABLE and model.reason not in (None, "unloaded")
    return {
        "version": str(model.version),
        "state": _STATES[model.state],
        "status": {"error_code": "UNKNOWN" if failed else "OK", "error_message": model.reason if failed else ""},
    }


def metadata(request: Request, target: Target) -> Response:
    """The model spec and its serving signature as a SignatureDefMap."""
    model = engine(request).get(target.name, target.version, target.label)
    if model.signature_name is None:
        raise not_ready(model)
    signatures = signature_def(model.signature_name, model.inputs, model.outputs)
    body = {
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": signatures}},
    }
    return json_response(body, headers={VERSION_HEADER: str(model.version)})


def _decode(body: bytes, headers: Mapping[str, str], model: ModelInfo, max_bytes: int) -> tuple[InferRequest, Any]:
    decoded = decode_predict(body, model.inputs, model.signature_name or "", model.label)
    return InferRequest(model.name, model.version, decoded.arrays), decoded


def _encode(response: InferResponse, decoded: PredictRequest) -> Response:
    label = f"model '{response.model}' version {response.version}"
    payload = encode_predict(decoded, response.outputs, list(response.outputs), label)
    return Response(payload, media_type=JSON, headers={VERSION_HEADER: str(response.version)})


TFSERVING = Dialect("tfserving", _decode, _encode)


async def predict(request: Request, target: Target) -> Response:
    """:predict in row (instances -> predictions) or columnar (inputs -> outputs) format."""
    if target.kind != "predict":
        begin(request, TFSERVING.name)
        raise NotImplementedFeatureError(f":{target.kind} is not supported; use :predict")
    return await infer(request, TFSERVING, target.name, target.version, target.label)
