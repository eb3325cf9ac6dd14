"""grpc.health.v1 for Kubernetes gRPC probes and grpc_health_probe: SERVING exactly when the server is ready."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.grpc.infer import Context, Front
from service.grpc.protos import KSERVE, MODEL_SERVICE, PREDICTION

SERVICES = frozenset({"", KSERVE, PREDICTION, MODEL_SERVICE})  # "" is the server as a whole
# Readiness is a function of the models' states, which announce no changes: a Watch re-reads it this often,
# and at once when the server starts draining.
WATCH_RECHECK_S = 1.0


class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """SERVING while ready (as /v2/health/ready), NOT_SERVING while loading or draining; NOT_FOUND for other names."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self._changed = asyncio.Condition()

    def _status(self, service: str) -> Any:
        if service not in SERVICES:
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        ready = self.front.ready
        return health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: Any, context: Context) -> Any:
        """The status now."""
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service:.128}'")
        return health_pb2.HealthCheckResponse(status=self._status(request.service))

    async def Watch(self, request: Any, context: Context) -> None:
        """The status now, then each change, until the client leaves or the server stops."""
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), WATCH_RECHECK_S)

    async def changed(self) -> None:
        """Wake every Watch to re-read the status (the server started draining)."""
        async with self._changed:
            self._changed.notify_all()
