"""The one inference path over gRPC: the hops of service.api.infer, with a protobuf message for a body.

Every handler takes and returns bytes, so a malformed message is parsed here (INVALID_ARGUMENT naming the
message type) instead of failing in grpcio's deserializer (which would answer INTERNAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from service.engine import Engine
from service.errors import (
    BadRequestError,
    DeadlineExceededError,
    InternalError,
    ModelNotReadyError,
    ServiceError,
    ShuttingDownError,
)
from service.grpc.status import CANCELLED_CODE, status_code, trailers
from service.inference import InferRequest, InferResponse, validate_for
from service.metrics import Metrics
from service.model import Limits, ModelInfo
from service.settings import Settings

log = logging.getLogger("tandem.grpc")
Context = grpc.aio.ServicerContext[bytes, bytes]
# message -> (model name, version or None, label or None), names and versions checked
Target = Callable[[Any], tuple[str, int | None, str | None]]
# decode(message, model, max_body_bytes) -> the request and what the encoder needs to answer it
Decode = Callable[[Any, ModelInfo, int], tuple[InferRequest, Any]]
# encode(response, what decode kept) -> the serialized response message
Encode = Callable[[InferResponse, Any], bytes]


@dataclass(frozen=True, slots=True)
class GrpcDialect:
    """One gRPC inference method's request type, its target, decoder and encoder, and its metric label."""

    name: str  # the `dialect` metric label
    request_type: Any  # the protobuf message class of the request
    target: Target
    decode: Decode
    encode: Encode


class Front:
    """What every gRPC handler shares: engine, metrics, settings, readiness, and the in-flight count for drains."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics, is_ready: Callable[[], bool]) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self._is_ready = is_ready
        self.draining = False
        self._body_bytes: dict[str, Any] = {}  # histogram children by dialect (hot path: no label lookups)
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        """Serving: the server is ready (as /v2/health/ready) and not draining."""
        return not self.draining and self._is_ready()

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no inference call is in flight, at most timeout_s; whether it got there."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def observe_body(self, dialect: str, size: int) -> None:
        """Count one request message's size."""
        child = self._body_bytes.get(dialect)
        if child is None:
            child = self._body_bytes[dialect] = self.metrics.request_body_bytes.labels(dialect)
        child.observe(size)

    @contextlib.contextmanager
    def tracked(self) -> Iterator[None]:
        """Count one inference call in flight while the block runs."""
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()


def parse(message_type: Any, data: bytes) -> Any:
    """A request message from its bytes; INVALID_ARGUMENT when they are not one."""
    try:
        return message_type.FromString(data)
    except (DecodeError, RecursionError, ValueError):
        raise BadRequestError(f"malformed {message_type.DESCRIPTOR.full_name} message") from None


async def infer(front: Front, dialect: GrpcDialect, data: bytes, context: Context) -> bytes:
    """Parse, look up, decode, validate, queue, run and encode one request, counted as the HTTP routes count."""
    call = _Call(dialect.name, time.perf_counter())
    try:
        with front.tracked():
            answer = await _infer(front, dialect, data, context, call)
    except ServiceError as exc:
        err = exc
    except asyncio.CancelledError:  # the client went away or its deadline passed: the request was dropped
        passed = call.deadline is not None and time.monotonic() >= call.deadline
        call.finish(front.metrics, *((504, "deadline") if passed else (CANCELLED_CODE, "cancelled")))
        raise
    except Exception:
        log.exception("%s request failed", dialect.name)
        err = InternalError("internal error")
    else:
        call.finish(front.metrics, 200, "ok")
        return answer
    call.finish(front.metrics, err.status_code, err.outcome)
    await end_with(context, err, dialect.name)


async def end_with(context: Context, err: ServiceError, what: str) -> NoReturn:
    """End the call with the error's status; an internal fault's cause is logged, never sent (as over HTTP)."""
    if isinstance(err, InternalError) and err.__cause__ is not None:
        log.error("%s failed: %s", what, err.message, exc_info=err.__cause__)
        err = InternalError("internal error")
    await context.abort(status_code(err), err.message, trailers(err))


async def _infer(front: Front, dialect: GrpcDialect, data: bytes, context: Context, call: _Call) -> bytes:
    if front.draining:
        raise ShuttingDownError()
    message = parse(dialect.request_type, data)
    front.observe_body(dialect.name, len(data))
    name, version, label = dialect.target(message)
    model = front.engine.get(name, version, label)
    call.bind(model.name, model.version)
    if not model.ready:
        raise not_ready(model)
    request, reply = dialect.decode(message, model, front.settings.max_body_bytes)
    validate_for(request, model)
    request.pinned = version is not None or label is not None
    request.deadline = call.deadline = deadline(
        model.limits, front.settings, request.parameters.get("timeout"), context.time_remaining()
    )
    if request.deadline <= time.monotonic():
        raise DeadlineExceededError(f"{model.label}: the request's deadline passed before it was queued")
    response = await front.engine.infer(request)
    call.bind(response.model, response.version)
    return dialect.encode(response, reply)


async def refuse(front: Front, dialect: GrpcDialect, err: ServiceError, context: Context) -> bytes:
    """An inference method tandem does not offer: counted (with no model) as the HTTP routes count it, then refused."""
    _Call(dialect.name, time.perf_counter()).finish(front.metrics, err.status_code, err.outcome)
    await end_with(context, err, dialect.name)


def deadline(limits: Limits | None, settings: Settings, timeout_us: int | None, remaining_s: float | None) -> float:
    """Absolute monotonic deadline: request_timeout_ms, shortened by the gRPC deadline or a V2 'timeout'."""
    timeout_ms = limits.request_timeout_ms if limits else settings.request_timeout_ms
    if timeout_us is not None:
        timeout_ms = min(timeout_ms, timeout_us / 1000)
    if remaining_s is not None:
        timeout_ms = min(timeout_ms, remaining_s * 1000)
    return time.monotonic() + timeout_ms / 1000


def not_ready(model: ModelInfo) -> ModelNotReadyError:
    """The UNAVAILABLE for a version that cannot serve, with its reason (the HTTP routes' 503)."""
    return ModelNotReadyError(f"{model.label} is not ready: {model.reason or model.state.value.lower()}")


Handler = Callable[[Any, Context], Awaitable[Any]]


def unary(request_type: Any, handler: Handler) -> Callable[[bytes, Context], Awaitable[bytes]]:
    """A non-inference method: parse the request, run `handler`, serialize its answer; errors become statuses."""
    method = request_type.DESCRIPTOR.full_name

    async def serve(data: bytes, context: Context) -> bytes:
        try:
            answer = await handler(parse(request_type, data), context)
            serialized: bytes = answer.SerializeToString()
            return serialized
        except ServiceError as exc:
            err = exc
        except Exception:
            log.exception("%s failed", method)
            err = InternalError("internal error")
        await end_with(context, err, method)

    return serve


@dataclass(slots=True)
class _Call:
    dialect: str
    started: float
    model: str = ""
    version: str = ""
    deadline: float | None = None

    def bind(self, name: str, version: int) -> None:
        self.model, self.version = name, str(version)

    def finish(self, metrics: Metrics, code: int, outcome: str) -> None:
        seconds = time.perf_counter() - self.started if code < 300 else None
        metrics.observe_request(self.dialect, self.model, self.version, code, outcome, seconds)
