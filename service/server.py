"""The HTTP server process: listen first, then load; on SIGTERM, the shutdown phases; exit 0 when drained.

| Phase | Starts | Listening socket | Connections | /v2/health/ready |
|---|---|---|---|---|
| serving | socket bound (models load in the background) | accepting | kept alive | 503 until loaded, then 200 |
| grace | first SIGTERM | accepting | served as usual | 503 |
| draining | shutdown_grace_s later, a second SIGTERM, or SIGINT | closed | each answered with Connection: close | 503 |
| exit 0 | connections gone, or drain_timeout_s passed | — | queued work past the deadline gets 503 | — |

A signal during the drain ends it at once (what is still queued is answered 503).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from service.balance import BalancedListener, Shares
from service.http_protocol import BoundedHttpProtocol, protocol_class

if TYPE_CHECKING:
    from service.app import FrontDoor
    from service.lifecycle import Lifecycle
    from service.settings import Settings

log = logging.getLogger("tandem.server")
FLUSH_S = 1.0  # after the engine failed what was left, how long its 503s get to reach their clients


class Server(uvicorn.Server):
    """uvicorn's server with tandem's start-up order and shutdown phases."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, shares: Shares | None = None) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.shares = shares  # a worker's: it accepts on the shared socket only within its share (service.balance)
        self._listeners: list[BalancedListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Run until stopped; signals are handled on the event loop, and never re-raised afterwards."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: hand the signal to the lifecycle on the loop (uvicorn's own flags are not used)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.lifecycle.on_signal, sig)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Lifespan start (fast: other fronts start, nothing loads yet), bind, then let the repository load."""
        if self.shares is None or not sockets:
            await super().startup(sockets)
        else:  # a worker: uvicorn starts no server of its own; the listeners accept for it
            await super().startup([])
            if self.started:
                backlog = self.config.backlog
                self._listeners = [BalancedListener(s, self.shares, self._new_connection, backlog) for s in sockets]
        if self.started:
            self.lifecycle.listening()

    def _new_connection(self) -> asyncio.Protocol:
        config = self.config
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=self._loop
        )

    async def main_loop(self) -> None:
        """Serve until a stop was asked and its grace period is over."""
        ticks = asyncio.create_task(super().main_loop())  # uvicorn's tick keeps the Date header current
        try:
            await self.lifecycle.wait_for_stop()
        finally:
            self.should_exit = True
            await ticks

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, answer what was accepted within drain_timeout_s, drain the engine, close the rest."""
        self.lifecycle.begin_drain()
        for listener in self._listeners:
            listener.close()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        log.info("no longer accepting connections; draining for up to %.1f s", self.lifecycle.drain_left_s())
        for connection in self._connections():
            connection.close_after_response()
        others = asyncio.create_task(self.lifecycle.stop_listeners())
        others.add_done_callback(lambda _: self.lifecycle.notify())
        deadline = self.lifecycle.deadline or time.monotonic()
        await self.lifecycle.wait_until(lambda: not self.server_state.connections and others.done(), deadline)
        others.cancel()  # a front that did not stop in time
        await self.lifespan.shutdown()  # the engine drains in what is left, then fails the rest with 503
        flushed = time.monotonic() + FLUSH_S
        await self.lifecycle.wait_until(lambda: not any(c.busy for c in self._connections()), flushed, forceable=False)
        left = len(self.server_state.connections)
        for connection in self._connections():
            connection.abort()
        for task in list(self.server_state.tasks):
            task.cancel()
        for server in self.servers:
            await server.wait_closed()
        log.info("stopped%s", f"; closed {left} connection(s) left open" if left else "")

    def _connections(self) -> list[BoundedHttpProtocol]:
        return [c for c in self.server_state.connections if isinstance(c, BoundedHttpProtocol)]


def run(app: FrontDoor, settings: Settings) -> None:
    """Serve `app` on the configured address until a signal stops it and the drain ends."""
    lifecycle: Lifecycle = app.state.lifecycle
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(settings, lifecycle, app.state.refusals, app.request_ids),
        ws="none",
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        log_config=None,  # uvicorn's loggers go through configure_logging's handler
        server_header=False,
        timeout_keep_alive=settings.keep_alive_timeout_s,
    )
    Server(config, lifecycle).run()
