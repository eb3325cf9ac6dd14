"""create_app(settings): the lifespan loads the registry, routers are mounted, errors get each dialect's body."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from service import logs, openapi
from service.api import health, management, tfserving, torchserve, v2, v2_repository
from service.api.http import finish_error, json_response
from service.control import LocalEngine
from service.engine import Engine
from service.errors import (
    BadRequestError,
    InternalError,
    MethodNotAllowedError,
    RouteNotFoundError,
    ServiceError,
    error_body_torchserve,
    error_body_v2,
)
from service.grpc.server import GrpcServer
from service.lifecycle import Lifecycle, every
from service.metrics import Metrics, exposition
from service.overload import Refusals
from service.registry import RuntimeLoader
from service.runtimes import load_runtime
from service.settings import Settings

log = logging.getLogger("tandem.app")
TORCHSERVE_PREFIXES = ("/ping", "/predictions", "/models")


def create_app(
    settings: Settings,
    loader: RuntimeLoader = load_runtime,
    engine_path: str | None = None,
    *,
    background_load: bool = False,
    grpc: bool = False,
) -> FrontDoor:
    """Build the ASGI app; nothing is loaded until the lifespan starts.

    With background_load (tandem serve) the lifespan returns at once and the repository loads once the socket
    listens, readiness answering 503 meanwhile; without it (in-process use) the lifespan waits for the load.
    With `grpc` (as `tandem serve` runs it), gRPC is served too on settings.grpc_port (unless 0).
    With `engine_path`, this is one of several worker processes: the models live in the engine process
    listening there, and this process never imports a runtime.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine_path is not None:
            async with _remote(app, settings, engine_path, grpc):
                yield
            return
        metrics = Metrics(CollectorRegistry())
        registry = LocalEngine(settings, metrics, loader)
        engine: Engine = registry
        app.state.settings, app.state.metrics, app.state.engine = settings, metrics, engine
        lifecycle: Lifecycle = app.state.lifecycle
        if grpc and settings.grpc_port:  # listens before models load: live at once, SERVING once ready
            lifecycle.add_listener(GrpcServer(settings, engine, metrics, lambda: _serving(lifecycle, engine)))
        await lifecycle.start(functools.partial(_load, registry, lifecycle))
        try:
            yield
        finally:
            await lifecycle.stop(registry.close)

    docs = settings.openapi  # /openapi.json and /docs (service.openapi)
    app = FastAPI(
        title="tandem",
        version=_version(),
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    openapi.install(app)
    if settings.otel:
        _enable_tracing()
    app.state.lifecycle = Lifecycle(settings, background_load=background_load)
    app.state.refusals = Refusals()
    for router in _routers():
        app.include_router(router)
    app.add_api_route("/metrics", _metrics, methods=["GET"])
    _install_error_handlers(app)
    return FrontDoor(app, access_log=settings.access_log)


@contextlib.asynccontextmanager
async def _remote(app: FastAPI, settings: Settings, engine_path: str, grpc: bool) -> AsyncIterator[None]:
    """A worker process's lifespan: connect to the engine; the engine loads, drains and frees the models."""
    from service.ipc.client import RemoteEngine

    remote = RemoteEngine(engine_path)
    metrics = Metrics(CollectorRegistry())
    app.state.settings, app.state.metrics, app.state.engine = settings, metrics, remote
    lifecycle: Lifecycle = app.state.lifecycle
    # Every worker listens on the gRPC port too; the kernel spreads connections over them (SO_REUSEPORT).
    server = GrpcServer(settings, remote, metrics, lambda: _serving(lifecycle, remote), reuse_port=True)
    if grpc and settings.grpc_port:
        await server.start()
    await remote.connect()
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        await server.stop(settings.drain_timeout_s)
        await remote.close()


def _serving(lifecycle: Lifecycle, engine: Engine) -> bool:
    return not lifecycle.shutting_down and engine.unready_reason() is None


async def _load(registry: LocalEngine, lifecycle: Lifecycle) -> None:
    """Load the repository; then start polling it, if asked."""
    await registry.load_all()
    # Objects made while loading (runtimes, TensorFlow graphs) live as long as the process: keep them out of
    # the collector's generations so full collections stay short under load (p99 latency).
    gc.collect()
    gc.freeze()
    if registry.settings.poll_interval_s > 0:
        lifecycle.spawn(every(registry.settings.poll_interval_s, registry.poll, "repository poll"))


def _enable_tracing() -> None:
    from service import tracing

    try:
        tracing.enable()
    except ImportError as exc:
        raise SystemExit(f"error: otel needs OpenTelemetry ({exc.name}): pip install 'tandem[otel]'") from None


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("tandem")


def _routers() -> list[Any]:
    # v2_repository first: its /v2/models/stats must win over v2's /v2/models/{name}.
    routers = [health.router, v2_repository.router, v2.router, tfserving.router, torchserve.router, management.router]
    return routers


async def _metrics(request: Request) -> Response:
    return Response(generate_latest(exposition(request.app.state.metrics)), media_type=CONTENT_TYPE_PLAIN_0_0_4)


def error_response(request: Request, err: ServiceError) -> Response:
    """The dialect's error body (E1 or E2) for the request's path, with the error's headers."""
    if request.url.path.startswith(TORCHSERVE_PREFIXES):
        body: dict[str, Any] = error_body_torchserve(err)
    else:
        body = error_body_v2(err)
    return json_response(body, status_code=err.status_code, headers=err.headers or None)


async def on_service_error(request: Request, exc: Exception) -> Response:
    """A domain error: counted, and answered in the dialect's body; internal causes are logged, not sent."""
    assert isinstance(exc, ServiceError)
    finish_error(request, exc)
    if isinstance(exc, InternalError) and exc.__cause__ is not None:
        log.error("request %s failed: %s", _request_id(request), exc.message, exc_info=exc.__cause__)
        exc = InternalError(f"internal error (request id {_request_id(request)})")
    return error_response(request, exc)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own validation errors become 400 in the dialect's body, never {"detail"}."""
    return await on_service_error(request, BadRequestError("request does not match the route's parameters"))


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 (no route) and 405 (wrong method), in the dialect's body."""
    assert isinstance(exc, StarletteHTTPException)
    err: ServiceError
    if exc.status_code == 405:
        err = MethodNotAllowedError(f"method {request.method} not allowed for {request.url.path[:200]}")
        err.headers.update(exc.headers or {})
    elif exc.status_code == 404:
        err = RouteNotFoundError(f"no route for {request.method} {request.url.path[:200]}")
    else:
        err = BadRequestError(str(exc.detail))
    return error_response(request, err)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: log it with the request id, answer a generic 500 that quotes the id."""
    log.error("request %s failed", _request_id(request), exc_info=exc)
    err = InternalError(f"internal error (request id {_request_id(request)})")
    finish_error(request, err)
    return error_response(request, err)


def _install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def _request_id(request: Request) -> str:
    return str(request.scope.get("tandem.request_id", ""))


Endpoint = Callable[..., Awaitable[Response]]
# The inference routes, served by FrontDoor without FastAPI's middleware stack (measured: it costs
# about a third of a request's CPU time). They are also mounted on FastAPI, which answers every
# other method and path; both paths share the same handlers and error handlers.
FAST_ROUTES: list[tuple[str, re.Pattern[str], Endpoint]] = [
    ("POST", re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer"), v2.infer),
    ("POST", re.compile(r"/(?P<v1>[vV]1)/(?P<path>.*)"), tfserving.dispatch),
    ("POST", re.compile(r"/predictions/(?P<name>[^/]+)(?:/(?P<version>[^/]+))?"), torchserve.predictions),
]


class FrontDoor:
    """Pure-ASGI entry: tags every response with X-Request-Id and serves FAST_ROUTES directly."""

    def __init__(self, app: FastAPI, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log
        self.state = app.state  # so callers can reach app.state through the wrapper
        self.request_ids = logs.RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route one ASGI connection event."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.request_ids.of(scope["headers"])
        scope["tandem.request_id"] = text_id = request_id.decode()
        logs.REQUEST_ID.set(text_id)  # this request's task only: every line it logs carries the id
        if self.access_log:
            receive, send = logs.access_wrapped(scope, receive, send)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        for method, pattern, endpoint in FAST_ROUTES:
            match = pattern.fullmatch(scope["path"]) if scope["method"] == method else None
            if match is not None:
                scope["app"] = self.app
                request = Request(scope, receive)
                response = await _serve(request, endpoint, match.groupdict())
                await response(scope, receive, send_with_id)
                return
        await self.app(scope, receive, send_with_id)


async def _serve(request: Request, endpoint: Endpoint, params: dict[str, str | None]) -> Response:
    try:
        return await endpoint(request, **params)
    except ServiceError as exc:
        return await on_service_error(request, exc)
    except Exception as exc:
        return await on_unexpected(request, exc)
