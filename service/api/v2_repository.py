"""V2 extensions beyond inference: model_repository (index, load, unload) and statistics, in Triton's shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.http import check_name, engine, json_response, read_body, require_control
from service.codec import parse_json
from service.errors import BadRequestError, ModelNotFoundError
from service.model import ModelInfo
from service.repository import parse_version

if TYPE_CHECKING:
    from service.engine import Engine

router = APIRouter()
_CONTROL_BODY_BYTES = 64 * 1024


@router.post("/v2/repository/index")
async def index(request: Request) -> Response:
    """Every model version the server knows, plus repository models not loaded; `ready: true` keeps READY ones."""
    body = await _json_object(request)
    ready_only = body.get("ready", False)
    if not isinstance(ready_only, bool):
        raise BadRequestError("'ready' must be true or false")
    found = engine(request)
    entries = [_index_entry(m) for m in found.all_models() if m.ready or not ready_only]
    if not ready_only:
        known = set(found.names())
        names = await found.repository_names()
        entries += [{"name": n, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} for n in names - known]
    entries.sort(key=lambda e: (e["name"], int(e["version"] or 0)))
    return json_response(entries)


def _index_entry(model: ModelInfo) -> dict[str, str]:
    entry = {"name": model.name, "version": str(model.version) if model.version else "", "state": model.state.value}
    if model.reason and not model.ready:
        entry["reason"] = model.reason
    return entry


@router.post("/v2/repository/models/{name}/load")
async def load(request: Request, name: str) -> Response:
    """(Re)load a repository model by name and wait for it; 400 with the reason when it fails."""
    require_control(request)
    check_name(name)
    params = _parameters(await _json_object(request))
    if "config" in params or any(key.startswith("file:") for key in params):
        raise BadRequestError("config overrides and file uploads are not supported: load from the repository")
    await engine(request).load(name)
    return Response(status_code=200)


@router.post("/v2/repository/models/{name}/unload")
async def unload(request: Request, name: str) -> Response:
    """Stop admitting requests, drain, free the runtimes; `unload_dependents` is accepted and ignored."""
    require_control(request)
    check_name(name)
    params = _parameters(await _json_object(request))
    if not isinstance(params.get("unload_dependents", False), bool):
        raise BadRequestError("parameter 'unload_dependents' must be true or false")
    found = engine(request)
    try:
        await found.unload(name)
    except ModelNotFoundError:
        if not await found.in_repository(name):
            raise
    return Response(status_code=200)


@router.get("/v2/models/stats")
@router.get("/v2/models/{name}/stats")
@router.get("/v2/models/{name}/versions/{version}/stats")
async def statistics(request: Request, name: str | None = None, version: str | None = None) -> Response:
    """Cumulative per-version statistics: every model, every version of one, or one version."""
    found = engine(request)
    await found.sync()
    if name is None:
        models = [m for m in found.all_models() if m.version]
    else:
        models = _versions_of(found, check_name(name), parse_version(version, name))
    return json_response({"model_stats": [m.stats.as_json(m.name, m.version) for m in models]})


def _versions_of(found: Engine, name: str, version: int | None) -> list[ModelInfo]:
    if version is not None:
        return [found.get(name, version)]
    return [m for v, m in sorted(found.versions(name).items()) if v]


async def _json_object(request: Request) -> dict[str, Any]:
    """A control body: empty (as tritonclient sends it) or a JSON object."""
    body = await read_body(request, _CONTROL_BODY_BYTES)
    if not body.strip():
        return {}
    value = parse_json(body)
    if not isinstance(value, dict):
        raise BadRequestError("request body must be a JSON object")
    return value


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequestError("'parameters' must be an object")
    return params
