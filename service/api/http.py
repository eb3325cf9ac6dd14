"""HTTP plumbing every dialect shares: body limits, deadlines, request accounting, client disconnects."""

from __future__ import annotations

import hmac
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response
from starlette.types import Receive

from service.codec import dumps
from service.errors import (
    BadRequestError,
    ClientGoneError,
    ForbiddenError,
    ModelNotReadyError,
    PayloadTooLargeError,
    ServiceError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from service.repository import MODEL_NAME

if TYPE_CHECKING:
    from service.engine import Engine
    from service.metrics import Metrics
    from service.model import Limits, ModelInfo
    from service.settings import Settings

JSON = "application/json"
TIMEOUT_HEADER = "x-request-timeout-ms"
CALL_KEY = "tandem.call"
TORCHSERVE_NOT_FOUND = "Model not found: {name}"  # TorchServe's wording for an unknown model
VERSION_HEADER = "X-Model-Version"  # which version answered, on TF Serving and TorchServe responses


@dataclass(slots=True)
class Call:
    """Per-request accounting: which dialect and model it reached, and when it arrived."""

    dialect: str
    started: float
    model: str = ""
    version: str = ""
    queue_s: float = 0.0  # for the access log: waiting for a batch, and the batch's runtime call
    compute_s: float = 0.0

    def bind(self, name: str, version: int) -> None:
        """Label metrics with the registry's names, never the raw path."""
        self.model, self.version = name, str(version)


def begin(request: Request, dialect: str) -> Call:
    """Start accounting for a model route."""
    call = Call(dialect, time.perf_counter())
    request.scope[CALL_KEY] = call
    return call


def finish(metrics: Metrics, call: Call, code: int, outcome: str) -> None:
    """Count the request by final status; time it when it succeeded."""
    seconds = time.perf_counter() - call.started if code < 300 else None
    metrics.observe_request(call.dialect, call.model, call.version, code, outcome, seconds)


def finish_error(request: Request, err: ServiceError) -> None:
    """Count a failed request if it reached a model route."""
    call = request.scope.get(CALL_KEY)
    if call is not None:
        finish(request.app.state.metrics, call, err.status_code, err.outcome)


def engine(request: Request) -> Engine:
    """The app's engine (the in-process registry)."""
    found: Engine = request.app.state.engine
    return found


def settings(request: Request) -> Settings:
    """The app's settings."""
    s: Settings = request.app.state.settings
    return s


async def read_body(request: Request, max_bytes: int, *, decompress: bool = False) -> bytes:
    """The request body, refused with 413 past max_bytes: by Content-Length, streamed, and decoded."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise BadRequestError("Content-Length is not a number")
        if int(length) > max_bytes:
            raise PayloadTooLargeError(f"request body of {length} bytes exceeds max_body_bytes={max_bytes}")
    body = await _receive_body(request.receive, max_bytes)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if not decompress or encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaTypeError(f"Content-Encoding '{encoding:.40}' is not supported")
    return _inflate(body, encoding, max_bytes)


async def _receive_body(receive: Receive, max_bytes: int) -> bytes:
    # The ASGI messages read directly: a body that arrived whole (the common case) is one message, and no
    # stream generator is needed to take it.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError("the client closed the connection while sending the request body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"request body exceeds max_body_bytes={max_bytes}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)  # one chunk: that object itself, joining copies nothing


def _inflate(body: bytes, encoding: str, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error:
        raise BadRequestError(f"body is not valid {encoding} data") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise PayloadTooLargeError(f"decoded request body exceeds max_body_bytes={max_bytes}")
    return out


def deadline(request: Request, limits: Limits | None, timeout_us: int | None = None) -> float:
    """Absolute monotonic deadline: request_timeout_ms, shortened by the header or V2 'timeout'."""
    timeout_ms = limits.request_timeout_ms if limits else settings(request).request_timeout_ms
    header = request.headers.get(TIMEOUT_HEADER)
    if header is not None:
        try:
            asked = float(header)
        except ValueError:
            asked = -1.0
        if not asked > 0:
            raise BadRequestError(f"{TIMEOUT_HEADER} must be a positive number of milliseconds")
        timeout_ms = min(timeout_ms, asked)
    if timeout_us is not None:
        timeout_ms = min(timeout_ms, timeout_us / 1000)
    return time.monotonic() + timeout_ms / 1000


def disconnected(receive: Receive) -> Callable[[], bool]:
    """A cheap probe of whether the client has left, for a request whose body was read in full.

    It steps the ASGI `receive` once: a server answers at once with `http.disconnect` when the connection is
    gone, and otherwise would wait, in which case the step is abandoned. No task or timer per request. Where
    `receive` belongs to uvicorn's request cycle, which keeps a `disconnected` flag that the connection's loss
    sets, the probe reads the flag instead (the same answer, without a future made and dropped per probe).
    """
    cycle: Any = getattr(receive, "__self__", None)
    if isinstance(getattr(cycle, "disconnected", None), bool):
        return lambda: bool(cycle.disconnected)

    def gone() -> bool:
        step = receive().__await__()
        try:
            next(step)
        except StopIteration as done:
            return bool(done.value.get("type") == "http.disconnect")
        finally:
            close = getattr(step, "close", None)
            if close is not None:
                close()
        return False

    return gone


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A strict-JSON response with exactly 'application/json' (no charset), as KServe's client expects."""
    return Response(dumps(content), status_code=status_code, headers=headers, media_type=JSON)


def check_name(name: str) -> str:
    """A model name from any dialect's path; 400 before any lookup when it is not a valid name."""
    if not MODEL_NAME.fullmatch(name):
        raise BadRequestError("model name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
    return name


def not_ready(model: ModelInfo) -> ModelNotReadyError:
    """The 503 for a version that cannot serve, naming its state (LOADING, UNLOADING, UNAVAILABLE) and reason."""
    reason = f" ({model.reason})" if model.reason else ""
    return ModelNotReadyError(f"{model.label} is not ready: {model.state.value}{reason}")


def require_control(request: Request) -> None:
    """403 while model control is off; with an admin token, 401 unless `Authorization: Bearer <token>` matches."""
    config = settings(request)
    if not config.enable_model_control:
        raise ForbiddenError("model control is disabled; start the server with --enable-model-control")
    if config.admin_token is None:  # only possible on a loopback host (Settings refuses it elsewhere)
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = config.admin_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise UnauthorizedError()
