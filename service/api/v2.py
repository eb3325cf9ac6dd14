"""KServe V2 / Open Inference Protocol REST: server and model metadata, readiness, infer."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.http import JSON, check_name, engine, json_response, not_ready
from service.api.infer import Dialect
from service.api.infer import infer as serve_infer
from service.codec_v2 import V2Request, decode_request, encode_response, select_outputs
from service.inference import InferRequest, InferResponse
from service.model import ModelInfo
from service.repository import parse_version

router = APIRouter()
PLATFORMS = {"onnx": "onnx_onnxv1", "savedmodel": "tensorflow_savedmodel"}
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]


@router.get("/v2")
async def server_metadata() -> Response:
    """Server name, version and the protocol extensions it implements."""
    return json_response({"name": "tandem", "version": importlib.metadata.version("tandem"), "extensions": EXTENSIONS})


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    """Name, loaded versions, platform and the input/output signature."""
    model = _lookup(request, name, version)
    if model.format is None or model.device is None:
        raise not_ready(model)
    versions = [str(v) for v, m in sorted(engine(request).versions(name).items()) if m.ready]
    return json_response(
        {
            "name": model.name,
            "versions": versions,
            "platform": PLATFORMS[model.format],
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in model.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in model.outputs],
            "parameters": {"device": model.device, "degraded": model.degraded, "state": model.state.value},
        }
    )


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """200 when the version takes requests, 503 (with the reason) otherwise."""
    model = _lookup(request, name, version)
    if not model.ready:
        raise not_ready(model)
    return json_response({"name": model.name, "ready": True})


@router.get("/v2/models/{name}/config")
@router.get("/v2/models/{name}/versions/{version}/config")
async def model_config(request: Request, name: str, version: str | None = None) -> Response:
    """The effective configuration, in Triton's field names, plus tandem's own under 'tandem'."""
    model = _lookup(request, name, version)
    limits = model.limits
    body: dict[str, object] = {
        "name": model.name,
        "platform": PLATFORMS.get(model.format or "", "") if model.device else "",
        "max_batch_size": limits.max_batch_size if limits else 0,
        "input": [_triton_tensor(s.name, s.datatype, s.shape, limits) for s in model.inputs],
        "output": [_triton_tensor(s.name, s.datatype, s.shape, limits) for s in model.outputs],
        "tandem": {
            "version": str(model.version),
            "state": model.state.value,
            "device": model.device,
            "degraded": model.degraded,
            "signature_name": model.signature_name,
            "limits": limits.__dict__ if limits else None,
            "version_policy": model.config.version_policy,
            "version_labels": model.config.version_labels,
            "default_version": engine(request).default_version(model.name),
        },
    }
    if limits and limits.max_batch_size > 1:
        body["dynamic_batching"] = {
            "preferred_batch_size": list(limits.preferred_batch_sizes),
            "max_queue_delay_microseconds": int(limits.max_batch_delay_ms * 1000),
        }
    return json_response(body)


def _triton_tensor(name: str, datatype: str, shape: tuple[int, ...], limits: object) -> dict[str, object]:
    batched = getattr(limits, "max_batch_size", 0) > 1
    dims = list(shape[1:]) if batched and shape else list(shape)
    return {"name": name, "data_type": f"TYPE_{'STRING' if datatype == 'BYTES' else datatype}", "dims": dims}


def _decode(body: bytes, headers: Mapping[str, str], model: ModelInfo, max_bytes: int) -> tuple[InferRequest, Any]:
    req = decode_request(body, headers.get("inference-header-content-length"), max_bytes)
    outputs = None if req.outputs is None else tuple(name for name, _ in req.outputs)
    parameters = {"timeout": req.timeout_us} if req.timeout_us is not None else {}
    return InferRequest(model.name, model.version, req.inputs, outputs, id=req.id, parameters=parameters), req


def _encode(response: InferResponse, req: V2Request) -> Response:
    chosen = select_outputs(req, response.outputs)
    payload, header_length = encode_response(response.model, str(response.version), req.id, chosen)
    if header_length is None:
        return Response(payload, media_type=JSON)
    return Response(
        payload,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


V2 = Dialect("v2", _decode, _encode, decompress=True)


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Decode, validate, batch, run and encode one V2 inference request."""
    return await serve_infer(request, V2, name, version)


def _lookup(request: Request, name: str, version: str | None) -> ModelInfo:
    return engine(request).describe(name, parse_version(version, check_name(name)))
