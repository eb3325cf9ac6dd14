"""KServe V2 / Open Inference Protocol REST: server and model metadata, readiness, infer."""

from __future__ import annotations

import importlib.metadata

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.http import (
    JSON,
    begin,
    check_name,
    deadline,
    finish,
    json_response,
    not_ready,
    parse_version,
    read_body,
    registry,
    settings,
    until_done_or_disconnect,
)
from service.codec_v2 import check_requested_outputs, decode_request, encode_response, select_outputs
from service.registry import LoadedModel

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
    model = _lookup(request, name, version, ready_only=False)
    if model.runtime is None:
        raise not_ready(model)
    versions = [str(v) for v, m in sorted(registry(request).versions(name).items()) if m.ready]
    return json_response(
        {
            "name": model.name,
            "versions": versions,
            "platform": PLATFORMS[model.runtime.format],
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in model.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in model.outputs],
            "parameters": {"device": model.runtime.device, "degraded": model.runtime.degraded},
        }
    )


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """200 when the version takes requests, 503 (with the reason) otherwise."""
    model = _lookup(request, name, version, ready_only=False)
    if not model.ready:
        raise not_ready(model)
    return json_response({"name": model.name, "ready": True})


@router.get("/v2/models/{name}/config")
@router.get("/v2/models/{name}/versions/{version}/config")
async def model_config(request: Request, name: str, version: str | None = None) -> Response:
    """The effective configuration, in Triton's field names, plus tandem's own under 'tandem'."""
    model = _lookup(request, name, version, ready_only=False)
    limits = model.limits
    body: dict[str, object] = {
        "name": model.name,
        "platform": PLATFORMS.get(model.runtime.format, "") if model.runtime else "",
        "max_batch_size": limits.max_batch_size if limits else 0,
        "input": [_triton_tensor(s.name, s.datatype, s.shape, limits) for s in model.inputs],
        "output": [_triton_tensor(s.name, s.datatype, s.shape, limits) for s in model.outputs],
        "tandem": {
            "version": str(model.version),
            "state": model.state.value,
            "device": model.runtime.device if model.runtime else None,
            "degraded": model.runtime.degraded if model.runtime else None,
            "signature_name": model.runtime.signature_name if model.runtime else None,
            "limits": limits.__dict__ if limits else None,
            "version_policy": model.config.version_policy,
            "version_labels": model.config.version_labels,
            "default_version": registry(request).default_version(model.name),
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


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Decode, validate, batch, run and encode one inference request."""
    call = begin(request, "v2")
    reg = registry(request)
    wanted = parse_version(version, check_name(name))
    model = reg.get(name, wanted)
    call.bind(model)
    max_bytes = settings(request).max_body_bytes
    body = await read_body(request, max_bytes, decompress=True)
    request.app.state.metrics.request_body_bytes.labels("v2").observe(len(body))
    req = decode_request(body, request.headers.get("inference-header-content-length"), max_bytes)
    declared = [s.name for s in model.outputs]
    check_requested_outputs(req, declared, model.label)
    model, produced = await until_done_or_disconnect(
        request, reg.infer(name, wanted, req.inputs, deadline(request, model.limits, req.timeout_us))
    )
    call.bind(model)
    payload, header_length = encode_response(
        model.name, str(model.version), req.id, select_outputs(req, produced, declared, model.label)
    )
    finish(request.app.state.metrics, call, 200, "ok")
    if header_length is None:
        return Response(payload, media_type=JSON)
    return Response(
        payload,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


def _lookup(request: Request, name: str, version: str | None, *, ready_only: bool) -> LoadedModel:
    reg = registry(request)
    wanted = parse_version(version, check_name(name))
    if wanted is None and not ready_only:
        versions = reg.versions(name)
        if not any(m.ready for m in versions.values()):
            return versions[max(versions)]
    return reg.get(name, wanted)
