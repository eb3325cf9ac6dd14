"""TorchServe management on the main port: list and describe; register, scale, set-default, unregister (gated)."""

from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import repository
from service.api.http import TORCHSERVE_NOT_FOUND, check_name, engine, json_response, require_control
from service.errors import BadRequestError, ModelNotFoundError, ModelNotReadyError
from service.model import ModelInfo
from service.repository import parse_version

if TYPE_CHECKING:
    from service.engine import Engine

log = logging.getLogger("tandem.management")
router = APIRouter()
RUNTIMES = {"onnx": "onnxruntime", "savedmodel": "tensorflow"}
MAX_PAGE = 100
MAX_WORKERS = 64
_REFUSED_PARAMS = ("handler", "runtime", "s3_sse_kms")


def lookup(found: Engine, name: str, version: int | None, *, describe: bool = False) -> ModelInfo:
    """Engine.get (or Engine.describe) with TorchServe's wording for an unknown model."""
    try:
        return found.describe(name, version) if describe else found.get(name, version)
    except ModelNotFoundError as exc:
        if type(exc) is ModelNotFoundError:
            raise ModelNotFoundError(TORCHSERVE_NOT_FOUND.format(name=name)) from None
        raise


# ----- read-only ------------------------------------------------------------------------------------


@router.get("/models")
async def list_models(request: Request) -> Response:
    """Model names, sorted, paginated by offset tokens."""
    query = request.query_params
    limit = min(max(_int(query.get("limit"), "limit", default=MAX_PAGE), 1), MAX_PAGE)
    start = _int(query.get("next_page_token"), "next_page_token", default=0, low=0)
    names = engine(request).names()
    body: dict[str, Any] = {}
    if start + limit < len(names):
        body["nextPageToken"] = str(start + limit)
    body["models"] = [{"modelName": name, "modelUrl": name} for name in names[start : start + limit]]
    return json_response(body)


@router.get("/models/{name}")
@router.get("/models/{name}/{version}")
async def describe(request: Request, name: str, version: str | None = None) -> Response:
    """Always a JSON array: the default version, the one named, or every version for `all`."""
    found = engine(request)
    check_name(name)
    await found.sync()
    if version == "all":
        models = [m for _, m in sorted(found.versions(name).items())]
    else:
        models = [lookup(found, name, parse_version(version, name), describe=True)]
    return json_response([_describe(m, name not in found.registered) for m in models])


def _describe(model: ModelInfo, at_startup: bool) -> dict[str, Any]:
    limits = model.limits
    workers = limits.max_concurrent_batches if limits and model.ready else 0
    started = datetime.datetime.fromtimestamp(model.loaded_at, datetime.UTC).isoformat()
    gpu = (model.device or "").startswith("cuda")
    pending = model.queue_depth
    queue = limits.max_queue_size if limits else 0
    return {
        "modelName": model.name,
        "modelVersion": str(model.version),
        "modelUrl": f"{model.name}/{model.version}",
        "runtime": RUNTIMES.get(model.format or "", ""),
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": limits.max_batch_size if limits else 0,
        "maxBatchDelay": _number(limits.max_batch_delay_ms) if limits else 0,
        "responseTimeout": _number(limits.request_timeout_ms / 1000) if limits else 0,
        "loadedAtStartup": at_startup,
        "status": model.state.value,
        "workers": [
            {"id": str(9000 + i), "startTime": started, "status": "READY", "gpu": gpu, "memoryUsage": 0}
            for i in range(workers)
        ],
        "jobQueueStatus": {"remainingCapacity": max(queue - pending, 0), "pendingRequests": pending},
    }


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


# ----- control ----------------------------------------------------------------------------------------


@router.post("/models")
async def register(request: Request) -> Response:
    """Load a model directory of the repository, named by `url` (never a URL or a path)."""
    require_control(request)
    query = request.query_params
    name = model_url(query.get("url"))
    refused = [key for key in _REFUSED_PARAMS if key in query]
    if refused:
        raise BadRequestError(f"parameter(s) {refused} are not supported: models are loaded from the repository")
    if query.get("model_name", name) != name:
        raise BadRequestError("model_name must equal url: models keep their repository directory name")
    overrides, workers = _load_overrides(query)
    synchronous = _bool(query.get("synchronous"), "synchronous")
    model = await engine(request).register(name, overrides, workers, wait=synchronous)
    if model is None:
        return json_response({"status": "Processing worker updates..."}, status_code=202)
    count = model.limits.max_concurrent_batches if model.limits else 0
    return json_response({"status": f'Model "{name}" Version: {model.version} registered with {count} initial workers'})


def model_url(url: str | None) -> str:
    """The repository directory a TorchServe `url` names; URLs, absolute paths and `..` get 400."""
    if not url:
        raise BadRequestError("parameter 'url' is required: the name of a model directory in the repository")
    if "://" in url or url.startswith(("/", "\\")) or ".." in url or (len(url) > 1 and url[1] == ":"):
        raise BadRequestError("'url' must name a model directory in the repository, not a URL or a path")
    if not repository.MODEL_NAME.fullmatch(url):
        raise BadRequestError("'url' must be a model name matching [A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
    return url


def _load_overrides(query: Any) -> tuple[dict[str, float], int | None]:
    overrides: dict[str, float] = {}
    if "batch_size" in query:
        overrides["max_batch_size"] = _int(query["batch_size"], "batch_size", low=0, high=1 << 20)
    if "max_batch_delay" in query:
        overrides["max_batch_delay_ms"] = _int(query["max_batch_delay"], "max_batch_delay", low=0, high=10_000)
    if "response_timeout" in query:
        overrides["request_timeout_ms"] = 1000 * _int(query["response_timeout"], "response_timeout", low=1)
    workers = query.get("initial_workers")
    if workers is None:
        return overrides, None
    count = _int(workers, "initial_workers", low=0, high=MAX_WORKERS)
    if count:
        overrides["max_concurrent_batches"] = count
    return overrides, count


@router.put("/models/{name}")
@router.put("/models/{name}/{version}")
async def scale_workers(request: Request, name: str, version: str | None = None) -> Response:
    """Scale one version (the default when none is named): workers = execution slots."""
    require_control(request)
    found = engine(request)
    model = lookup(found, check_name(name), parse_version(version, name))
    query = request.query_params
    high = _int(query.get("max_worker"), "max_worker", default=-1, low=0, high=MAX_WORKERS)
    low = _int(query.get("min_worker"), "min_worker", default=high if high >= 0 else 1, low=0, high=MAX_WORKERS)
    if high >= 0 and high < low:
        raise BadRequestError(f"max_worker {high} is below min_worker {low}")
    _int(query.get("timeout"), "timeout", default=-1, low=-1)
    await found.scale(model.name, model.version, low)
    if not _bool(query.get("synchronous"), "synchronous"):
        return json_response({"status": "Processing worker updates..."}, status_code=202)
    suffix = f", version: {model.version}" if version is not None else ""
    return json_response({"status": f"Workers scaled to {low} for model: {name}{suffix}"})


@router.put("/models/{name}/{version}/set-default")
async def set_default(request: Request, name: str, version: str) -> Response:
    """Pin the version that version-less URLs use, in every dialect."""
    require_control(request)
    found = engine(request)
    model = lookup(found, check_name(name), parse_version(version, name))
    await found.set_default(name, model.version)
    return json_response({"status": f'Default version successfully updated for model "{name}" to "{model.version}"'})


@router.delete("/models/{name}")
@router.delete("/models/{name}/{version}")
async def unregister(request: Request, name: str, version: str | None = None) -> Response:
    """Drain and unload one version (the default when none is named); a model with none ready goes whole."""
    require_control(request)
    found = engine(request)
    wanted = parse_version(version, check_name(name))
    if wanted is None:
        try:
            wanted = lookup(found, name, None).version
        except ModelNotReadyError:
            wanted = None
    else:
        lookup(found, name, wanted)
    await found.unload(name, wanted)
    return json_response({"status": f'Model "{name}" unregistered'})


# ----- query parsing ------------------------------------------------------------------------------------


def _int(text: str | None, key: str, *, default: int = 0, low: int | None = None, high: int | None = None) -> int:
    if text is None:
        return default
    value = text.strip()
    if not (value.isascii() and value.lstrip("-").isdigit()) or len(value) > 12:
        raise BadRequestError(f"parameter '{key}' must be an integer")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise BadRequestError(f"parameter '{key}' must lie in [{low}, {high if high is not None else '...'}]")
    return number


def _bool(text: str | None, key: str) -> bool:
    if text is None:
        return False
    if text.lower() not in ("true", "false"):
        raise BadRequestError(f"parameter '{key}' must be true or false")
    return text.lower() == "true"
