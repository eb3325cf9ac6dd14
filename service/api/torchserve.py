"""TorchServe inference API: POST /predictions/{m}[/{v}], decoded per Content-Type (no handlers), E2 errors."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.http import (
    JSON,
    VERSION_HEADER,
    begin,
    check_name,
    deadline,
    finish,
    not_ready,
    parse_version,
    read_body,
    registry,
    settings,
    until_done_or_disconnect,
)
from service.codec_torchserve import decode_body, encode_outputs
from service.errors import ModelNotFoundError
from service.registry import LoadedModel, Registry

router = APIRouter()


def lookup(reg: Registry, name: str, version: int | None) -> LoadedModel:
    """Registry.get with TorchServe's wording for an unknown model."""
    try:
        return reg.get(name, version)
    except ModelNotFoundError as exc:
        if type(exc) is ModelNotFoundError:
            raise ModelNotFoundError(f"Model not found: {name}") from None
        raise


@router.post("/predictions/{name}")
@router.post("/predictions/{name}/{version}")
async def predictions(request: Request, name: str, version: str | None = None) -> Response:
    """Decode the body by Content-Type and the rank rule, run it, answer the outputs as JSON."""
    call = begin(request, "torchserve")
    reg = registry(request)
    wanted = parse_version(version, check_name(name))
    model = lookup(reg, name, wanted)
    call.bind(model)
    if model.runtime is None:
        raise not_ready(model)
    body = await read_body(request, settings(request).max_body_bytes)
    metrics = request.app.state.metrics
    metrics.request_body_bytes.labels("torchserve").observe(len(body))
    arrays, instance = decode_body(body, request.headers.get("content-type"), model.inputs, model.label)
    work = reg.infer(name, wanted, arrays, deadline(request, model.limits))
    model, produced = await until_done_or_disconnect(request, work)
    call.bind(model)
    payload = encode_outputs(produced, [spec.name for spec in model.outputs], instance)
    finish(metrics, call, 200, "ok")
    return Response(payload, media_type=JSON, headers={VERSION_HEADER: str(model.version)})
