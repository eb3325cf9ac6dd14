"""`tandem serve --workers N`: N HTTP worker processes on one port, feeding one engine process that owns the models.

The supervisor (this process) binds the port, starts the engine and the workers, replaces a worker that dies,
restarts an engine that dies (workers answer 503 and report not ready meanwhile), and on SIGTERM stops the
workers first (each takes the grace period, then drains what it accepted), then the engine (which drains its
batches), and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path

from service.balance import Shares
from service.settings import Settings

log = logging.getLogger("tandem.workers")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_TIMEOUT_S = 30.0  # beyond the grace and the drain, what a process gets to exit


def run(settings: Settings, count: int) -> int:
    """Supervise one engine and `count` HTTP workers until SIGTERM or SIGINT; the exit code."""
    import uvicorn

    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="tandem-") as private:
        metrics_dir = Path(private, "metrics")
        metrics_dir.mkdir()
        os.environ[MULTIPROC_ENV] = str(metrics_dir)  # inherited: every process writes its metrics there
        path = str(Path(private, "engine.sock"))
        config = uvicorn.Config("service.app:create_app", host=settings.host, port=settings.port, log_config=None)
        listener = config.bind_socket()
        stop_read, stop_write = os.pipe()
        os.set_blocking(stop_write, False)
        signal.set_wakeup_fd(stop_write)
        stopping: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: stopping.append(signum))
        engine = _start(spawn, "tandem-engine", engine_main, settings, path)
        shares = Shares(spawn, count)
        workers = [_start_worker(spawn, i, settings, path, listener, shares) for i in range(count)]
        log.info("serving on %s:%d with %d workers and one engine", settings.host, settings.port, count)
        while not stopping:
            wait([stop_read, engine.sentinel, *(w.sentinel for w in workers)])
            if stopping:
                break
            if not engine.is_alive():
                log.error("the engine exited (%s): restarting it", engine.exitcode)
                _forget(engine)
                engine = _start(spawn, "tandem-engine", engine_main, settings, path)
            for index, worker in enumerate(workers):
                if not worker.is_alive():
                    log.error("worker %d exited (%s): replacing it", index, worker.exitcode)
                    _forget(worker)
                    shares.retire(index)
                    workers[index] = _start_worker(spawn, index, settings, path, listener, shares)
        return _stop(workers, engine, listener, settings, lambda: len(stopping))


def _start(spawn: multiprocessing.context.SpawnContext, name: str, target: object, *args: object) -> BaseProcess:
    process: BaseProcess = spawn.Process(target=target, args=args, name=name, daemon=False)  # type: ignore[arg-type]
    process.start()
    return process


def _start_worker(
    spawn: multiprocessing.context.SpawnContext,
    index: int,
    settings: Settings,
    path: str,
    listener: socket.socket,
    shares: Shares,
) -> BaseProcess:
    return _start(spawn, f"tandem-worker-{index}", worker_main, settings, path, listener, shares.of(index))


def _forget(process: BaseProcess) -> None:
    """A dead process's live gauges must not count any more."""
    from prometheus_client import multiprocess

    if process.pid is not None:
        multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]


def _stop(
    workers: list[BaseProcess],
    engine: BaseProcess,
    listener: socket.socket,
    settings: Settings,
    signals: Callable[[], int],
) -> int:
    """Workers first (each takes its grace, then finishes what it accepted), then the engine (it drains its batches).

    A further signal to the supervisor meanwhile is passed on: the workers skip the rest of their grace.
    """
    # The workers hold their own copies of the listening socket: it closes when the last one stops accepting.
    # Kept open here, it would go on completing handshakes nobody accepts, and those clients would be reset.
    listener.close()
    for worker in workers:
        _signal(worker)
    deadline = time.monotonic() + settings.shutdown_grace_s + settings.drain_timeout_s + STOP_TIMEOUT_S
    seen = signals()
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        wait([*(w.sentinel for w in workers if w.is_alive())], timeout=0.2)
        if signals() > seen:
            seen = signals()
            for worker in workers:
                _signal(worker)
    _signal(engine)
    engine.join(STOP_TIMEOUT_S)
    failed = [p.name for p in (*workers, engine) if p.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        log.error("processes that did not stop cleanly: %s", ", ".join(str(name) for name in failed))
    return 0 if not failed else 1


def _signal(process: BaseProcess) -> None:
    if process.is_alive() and process.pid is not None:
        os.kill(process.pid, signal.SIGTERM)


def worker_main(settings: Settings, path: str, listener: socket.socket, shares: Shares) -> None:
    """One HTTP worker: decode and validate here, run in the engine; it never imports a runtime.

    It is served like a single process (service.server): bounded request heads, the overload line, and on
    SIGTERM the grace (ready 503, still serving), then the drain, then exit 0.
    """
    import uvicorn

    from service.app import create_app
    from service.cli import configure_logging
    from service.http_protocol import protocol_class
    from service.server import Server

    configure_logging(settings)
    app = create_app(settings, engine_path=path, grpc=True)
    lifecycle = app.state.lifecycle
    config = uvicorn.Config(
        app,
        http=protocol_class(settings, lifecycle, app.state.refusals, app.request_ids, shares),
        ws="none",
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        log_config=None,  # uvicorn's loggers go through configure_logging's handler
        server_header=False,
        timeout_keep_alive=settings.keep_alive_timeout_s,
    )
    Server(config, lifecycle, shares).run(sockets=[listener])


def engine_main(settings: Settings, path: str) -> None:
    """The engine: the registry, its batchers and runtimes, served to the workers over `path`."""
    import uvloop

    from service.cli import configure_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when the engine stops
    configure_logging(settings)
    uvloop.run(_engine(settings, path))


async def _engine(settings: Settings, path: str) -> None:
    from prometheus_client import CollectorRegistry

    from service.control import LocalEngine
    from service.ipc.server import EngineServer
    from service.lifecycle import every
    from service.metrics import Metrics

    registry = LocalEngine(settings, Metrics(CollectorRegistry()))
    server = EngineServer(registry)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(FileNotFoundError):  # left by an engine that died
        os.unlink(path)
    listening = await server.start(path)
    await registry.load_all()
    gc.collect()
    gc.freeze()
    server.mark_loaded()
    poller = None
    if settings.poll_interval_s > 0:
        poller = asyncio.create_task(every(settings.poll_interval_s, registry.poll, "repository poll"))
    await stop.wait()
    if poller is not None:
        poller.cancel()
    await registry.close(settings.drain_timeout_s)
    listening.close()
