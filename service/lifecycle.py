"""The server's life: listen first, then load; on SIGTERM, not ready -> grace -> stop accepting -> drain -> exit.

`Lifecycle` holds the phase every front reads (the HTTP health routes, the HTTP protocol's `Connection: close`)
and runs the steps that do not depend on HTTP: starting other fronts, loading the repository in the background,
and the grace period. `service.server` drives the HTTP side of each phase.

Another front (a gRPC server, say) joins with `add_listener`: its `start()` runs before models load, next to the
HTTP socket, and its `stop(timeout_s)` runs when the HTTP server stops accepting, before the engine drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from service.settings import Settings

log = logging.getLogger("tandem.lifecycle")


class Phase(enum.StrEnum):
    """Where the server stands; each later phase implies the earlier ones happened."""

    SERVING = "serving"  # accepting and serving (models may still be loading: readiness says so)
    GRACE = "grace"  # a stop was asked: ready answers 503, everything else is served, connections are accepted
    DRAINING = "draining"  # no longer accepting; what was accepted is answered, each response with Connection: close


class Listener(Protocol):
    """A front that starts and stops with the HTTP server (the gRPC server)."""

    async def start(self) -> None:
        """Bind and begin accepting (called before models load)."""
        ...

    async def stop(self, timeout_s: float) -> None:
        """Stop accepting, answer what was accepted within timeout_s, then close."""
        ...


class Lifecycle:
    """The phase, the shutdown steps' timing, and the other fronts; one per server process."""

    def __init__(self, settings: Settings, *, background_load: bool = False) -> None:
        self.settings = settings
        self.background_load = background_load  # tandem serve: load once the socket listens; in-process: at once
        self.phase = Phase.SERVING
        self.forced = False  # a signal during the drain: stop waiting, fail what is left
        self.deadline: float | None = None  # time.monotonic() at which the drain gives up
        self._listeners: list[Listener] = []
        self._listeners_stopped = False
        self._stop_asked = asyncio.Event()
        self._skip_grace = asyncio.Event()
        self._listening = asyncio.Event()
        self._changed = asyncio.Event()  # something the drain waits on changed
        self._tasks: set[asyncio.Task[None]] = set()

    # ----- what the fronts read ---------------------------------------------------------------------
    @property
    def shutting_down(self) -> bool:
        """A stop was asked: readiness answers 503 from now on."""
        return self.phase is not Phase.SERVING

    @property
    def draining(self) -> bool:
        """No longer accepting: every response closes its connection."""
        return self.phase is Phase.DRAINING

    def drain_left_s(self) -> float:
        """Seconds left for draining: all of drain_timeout_s until the drain starts, then what remains of it."""
        if self.deadline is None:
            return self.settings.drain_timeout_s
        return max(0.0, self.deadline - time.monotonic())

    # ----- start-up ---------------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Start and stop another front with this server."""
        self._listeners.append(listener)

    async def start(self, load: Callable[[], Awaitable[None]]) -> None:
        """Start the other fronts, then load: at once in process, or in the background once HTTP listens."""
        for listener in self._listeners:
            await listener.start()
        if self.background_load:
            self.spawn(self._load_when_listening(load))
        else:
            await load()

    def listening(self) -> None:
        """The HTTP socket is bound and accepting: the repository may start loading."""
        self._listening.set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work in the background until it ends or the server stops (it is cancelled then)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load_when_listening(self, load: Callable[[], Awaitable[None]]) -> None:
        await self._listening.wait()
        try:
            await load()
        except Exception:  # readiness reports what is missing; the process keeps answering live
            log.exception("loading the model repository failed")

    # ----- shutdown ---------------------------------------------------------------------------------
    def on_signal(self, signum: int) -> None:
        """SIGTERM starts the grace; SIGINT or a second SIGTERM skips it; a signal during the drain forces the end."""
        name = signal.Signals(signum).name
        if self.phase is Phase.SERVING:
            self.phase = Phase.GRACE
            self._stop_asked.set()
            if signum == signal.SIGINT or self.settings.shutdown_grace_s == 0:
                self._skip_grace.set()
                log.info("%s: not ready; stopping without a grace period", name)
            else:
                grace = self.settings.shutdown_grace_s
                log.info("%s: not ready; still accepting and serving for %.1f s (shutdown_grace_s)", name, grace)
        elif self.phase is Phase.GRACE:
            self._skip_grace.set()
            log.info("%s again: grace period skipped", name)
        else:
            self.forced = True
            self.notify()
            log.warning("%s during the drain: failing what is left and exiting", name)

    async def wait_for_stop(self) -> None:
        """Return once a stop was asked and its grace period is over (or skipped)."""
        await self._stop_asked.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._skip_grace.wait(), self.settings.shutdown_grace_s)

    def begin_drain(self) -> None:
        """Enter the drain: every response closes its connection from now on, and the drain deadline runs."""
        self.phase = Phase.DRAINING
        self.deadline = time.monotonic() + self.settings.drain_timeout_s

    def notify(self) -> None:
        """Something the drain waits on changed: a response finished, a connection closed, a front stopped."""
        self._changed.set()

    async def wait_until(self, done: Callable[[], bool], deadline: float, *, forceable: bool = True) -> bool:
        """Wait until done() holds, time.monotonic() passes deadline, or (if forceable) a signal forces the end."""
        while not done():
            left = deadline - time.monotonic()
            if left <= 0 or (forceable and self.forced):
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def stop_listeners(self) -> None:
        """Stop the other fronts (once), giving them what is left of the drain."""
        if self._listeners_stopped:
            return
        self._listeners_stopped = True
        await asyncio.gather(*(listener.stop(self.drain_left_s()) for listener in self._listeners))

    async def stop(self, close_engine: Callable[[float], Awaitable[None]]) -> None:
        """The lifespan's end: cancel background work, stop the other fronts, drain the engine in the time left."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.stop_listeners()
        await close_engine(0.0 if self.forced else self.drain_left_s())


async def every(interval_s: float, work: Callable[[], Awaitable[None]], what: str) -> None:
    """Run work every interval_s until cancelled; a failed round is logged and the next one runs anyway."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await work()
        except Exception:
            log.exception("%s failed", what)
