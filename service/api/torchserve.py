"""TorchServe inference API: POST /predictions/{m}[/{v}], decoded per Content-Type (no handlers), E2 errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.http import JSON, TORCHSERVE_NOT_FOUND, VERSION_HEADER
from service.api.infer import Dialect, infer
from service.codec_torchserve import decode_body, encode_outputs
from service.inference import InferRequest, InferResponse
from service.model import ModelInfo

router = APIRouter()


def _decode(body: bytes, headers: Mapping[str, str], model: ModelInfo, max_bytes: int) -> tuple[InferRequest, Any]:
    arrays, instance = decode_body(body, headers.get("content-type"), model.inputs, model.label)
    return InferRequest(model.name, model.version, arrays), instance


def _encode(response: InferResponse, instance: bool) -> Response:
    payload = encode_outputs(response.outputs, list(response.outputs), instance)
    return Response(payload, media_type=JSON, headers={VERSION_HEADER: str(response.version)})


TORCHSERVE = Dialect("torchserve", _decode, _encode, not_found=TORCHSERVE_NOT_FOUND)


@router.post("/predictions/{name}")
@router.post("/predictions/{name}/{version}")
async def predictions(request: Request, name: str, version: str | None = None) -> Response:
    """Decode the body by Content-Type and the rank rule, run it, answer the outputs as JSON."""
    return await infer(request, TORCHSERVE, name, version)
