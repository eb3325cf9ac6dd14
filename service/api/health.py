"""Liveness and readiness in every dialect's form; liveness stays 200 while draining."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.http import engine, json_response
from service.errors import ServiceUnavailableError

router = APIRouter()


@router.get("/v2/health/live")
async def live() -> Response:
    """The process answers."""
    return json_response({"live": True})


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    """Every repository model has a READY version and the server is not draining."""
    if not _is_ready(request):
        raise ServiceUnavailableError("server is not ready")
    return json_response({"ready": True})


@router.get("/")
async def root_live() -> Response:
    """KServe V1 liveness."""
    return json_response({"status": "alive"})


@router.get("/ping")
async def ping(request: Request) -> Response:
    """TorchServe health: 200 Healthy when ready, 503 Unhealthy otherwise."""
    if not _is_ready(request):
        return json_response({"status": "Unhealthy"}, status_code=503, headers={"Retry-After": "1"})
    return json_response({"status": "Healthy"})


def _is_ready(request: Request) -> bool:
    state = request.app.state
    return bool(getattr(state, "started", False)) and engine(request).ready
