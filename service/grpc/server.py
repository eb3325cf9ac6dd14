"""The gRPC server: its own port, the HTTP server's event loop and engine; started and stopped with the app."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.engine import Engine
from service.grpc.health import Health
from service.grpc.infer import Front
from service.grpc.kserve import KServe
from service.grpc.protos import HEALTH, KSERVE, MODEL_SERVICE, PREDICTION, pool
from service.grpc.tfserving import TFServing
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("tandem.grpc")
FLUSH_S = 1.0  # after the last call returned, how long answers get to reach their clients before the server closes


class GrpcServer:
    """KServe V2 and TF Serving over gRPC, with health checking and reflection, beside the HTTP server."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        metrics: Metrics,
        is_ready: Callable[[], bool],
        *,
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        self._reuse_port = reuse_port
        self.front = Front(settings, engine, metrics, is_ready)
        self.health = Health(self.front)
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Listen on settings.host:settings.grpc_port; refuses to start (naming the address) when it cannot bind."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.settings.max_body_bytes),
                # A second server on the same port must fail to start, as with HTTP, not share the traffic;
                # the worker processes of one server share it on purpose.
                ("grpc.so_reuseport", int(self._reuse_port)),
            ]
        )
        server.add_generic_rpc_handlers([KServe(self.front).handler(), *TFServing(self.front).handlers()])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        services = [KSERVE, PREDICTION, MODEL_SERVICE, HEALTH, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(services, server, pool=pool())
        host = self.settings.host
        address = f"[{host}]:{self.settings.grpc_port}" if ":" in host else f"{host}:{self.settings.grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if not port:
            raise RuntimeError(f"cannot listen for gRPC on {address}: is the port in use? (set --grpc-port)")
        await server.start()
        self._server, self.port = server, port
        log.info("gRPC (KServe V2, TF Serving) listening on %s", address)

    async def stop(self, timeout_s: float) -> None:
        """Drain: NOT_SERVING and no new inference at once, wait (at most timeout_s) for calls in flight, then close."""
        if self._server is None:
            return
        self.front.draining = True
        await self.health.changed()
        if not await self.front.drained(timeout_s):
            log.warning("gRPC calls still in flight after %.1f s; closing", timeout_s)
        # A call counts as done when its handler returns, before gRPC has sent its answer: give answers FLUSH_S to
        # leave (ending at once would cancel them on the wire), then end what is left (health Watch streams).
        await self._server.stop(grace=FLUSH_S)
        self._server = None
