"""Liveness and readiness in every dialect's form: live from the moment the socket listens until exit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.http import json_response
from service.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from service.engine import Engine

router = APIRouter()


@router.get("/v2/health/live")
async def live() -> Response:
    """The process answers (while models load, and through the whole shutdown)."""
    return json_response({"live": True})


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    """200 once the repository is loaded and warmed and has something to serve; 503 naming why not."""
    reason = unready_reason(request)
    if reason is not None:
        raise _unavailable(request, f"server is not ready: {reason}")
    return json_response({"ready": True})


@router.get("/")
async def root_live() -> Response:
    """KServe V1 liveness."""
    return json_response({"status": "alive"})


@router.get("/ping")
async def ping(request: Request) -> Response:
    """TorchServe health: 200 Healthy when ready, 503 Unhealthy otherwise."""
    if unready_reason(request) is not None:
        headers = _unavailable(request, "").headers
        return json_response({"status": "Unhealthy"}, status_code=503, headers=headers)
    return json_response({"status": "Healthy"})


def unready_reason(request: Request) -> str | None:
    """Why the server is not ready (shutting down, loading, nothing to serve), or None when it is."""
    state = request.app.state
    if state.lifecycle.shutting_down:
        return "shutting down"
    engine: Engine | None = getattr(state, "engine", None)
    return "loading the model repository" if engine is None else engine.unready_reason()


def _unavailable(request: Request, message: str) -> ServiceUnavailableError:
    """503 with Retry-After; while shutting down, the connection is closed too (a prober should look elsewhere)."""
    err = ServiceUnavailableError(message)
    if request.app.state.lifecycle.shutting_down:
        err.headers["Connection"] = "close"
    return err
