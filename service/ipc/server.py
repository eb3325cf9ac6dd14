"""The engine's side: one connection per worker process; requests run on the registry, answers go back framed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from service.control import LocalEngine
from service.errors import BadRequestError, ServiceError
from service.inference import InferRequest
from service.ipc import wire
from service.ipc.arena import Reader
from service.ipc.views import describe

log = logging.getLogger("tandem.engine")
# Control operations a worker may call, by name; each maps to the registry method of that name.
CALLS = frozenset({"load", "register", "unload", "scale", "set_default", "in_repository", "repository_names"})


class EngineServer:
    """Serves the registry to worker processes over a Unix socket and tells them every change."""

    def __init__(self, registry: LocalEngine) -> None:
        self.registry = registry
        self._writers: set[asyncio.StreamWriter] = set()
        self._pending_push = False
        self.loaded = False  # the repository's first load is done: until then the server is not ready
        registry.listeners.append(self._schedule_push)

    async def start(self, path: str) -> asyncio.AbstractServer:
        """Listen on the socket path."""
        return await asyncio.start_unix_server(self._serve, path)

    def snapshot(self, dynamic: bool = False) -> dict[str, Any]:
        """Everything a worker needs to answer lookups and readiness by itself."""
        models, defaults = self.registry.snapshot()
        return {
            "op": "snapshot",
            "models": [describe(m, dynamic) for versions in models.values() for m in versions.values()],
            "defaults": defaults,
            "registered": sorted(self.registry.registered),
            "ready": self.loaded and self.registry.ready,
            "unready": self.registry.unready_reason() if self.loaded else "loading the model repository",
        }

    def mark_loaded(self) -> None:
        """The first load is done: workers may report ready."""
        self.loaded = True
        self._schedule_push()

    def _schedule_push(self) -> None:
        # Changes come in bursts (a load touches several versions): send one snapshot for the burst.
        if not self._pending_push:
            self._pending_push = True
            asyncio.get_running_loop().call_soon(self._push)

    def _push(self) -> None:
        self._pending_push = False
        message = self.snapshot()
        for writer in list(self._writers):
            wire.write_frame(writer, message)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = wire.Frames(reader)
        arrived = await frames.read()
        hello, _ = arrived.pop(0)
        shared = Reader(hello["arena"])
        cancelled: set[int] = set()
        tasks: set[asyncio.Task[None]] = set()
        self._writers.add(writer)
        wire.write_frame(writer, self.snapshot())
        try:
            while True:
                for header, payload in arrived:
                    op = header["op"]
                    if op == "cancel":
                        cancelled.add(header["id"])
                        continue
                    work = self._infer if op == "infer" else self._call
                    task = asyncio.get_running_loop().create_task(work(writer, header, payload, shared, cancelled))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                arrived = await frames.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker went away; its requests still finish, their answers are dropped
        finally:
            self._writers.discard(writer)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            with contextlib.suppress(BufferError):
                shared.close()

    async def _infer(
        self, writer: asyncio.StreamWriter, header: dict[str, Any], payload: memoryview, shared: Reader, gone: set[int]
    ) -> None:
        ident = header["id"]
        try:
            request = InferRequest(
                header["model"],
                header["version"],
                wire.unpack(header["inputs"], payload, shared),
                tuple(header["outputs"]) if header["outputs"] is not None else None,
                pinned=header["pinned"],
                deadline=header["deadline"],
                id=header["request_id"],
                rows=header["rows"],
                parts=header.get("parts", 1),
            )
            response = await self.registry.infer(request, lambda: ident in gone)
        except ServiceError as exc:
            answer: dict[str, Any] = {"id": ident, **wire.error_header(exc)}
            parts: list[bytes] = []
        else:
            refs, parts = wire.pack(response.outputs, None)
            answer = {"id": ident, "model": response.model, "version": response.version, "outputs": refs}
            answer["queue_s"], answer["compute_s"] = response.queue_s, response.compute_s
            answer["batch_id"] = response.batch_id
        finally:
            gone.discard(ident)
        if not writer.is_closing():
            wire.write_frame(writer, answer, parts)

    async def _call(
        self, writer: asyncio.StreamWriter, header: dict[str, Any], payload: memoryview, shared: Reader, gone: set[int]
    ) -> None:
        method, args, kwargs = header["op"], header.get("args", []), header.get("kwargs", {})
        answer: dict[str, Any] = {"id": header["id"]}
        try:
            if method == "sync":
                answer["result"] = self.snapshot(dynamic=True)
            elif method in CALLS:
                result = getattr(self.registry, method)(*args, **kwargs)
                result = await result if asyncio.iscoroutine(result) else result
                answer["result"] = _plain(result)
            else:
                raise BadRequestError(f"unknown engine operation '{method}'")
        except ServiceError as exc:
            answer.update(wire.error_header(exc))
        except Exception:  # a bug must reach the worker as a 500, not leave it waiting
            log.exception("engine operation %s failed", method)
            answer.update({"error": "InternalError", "message": "internal error in the engine", "headers": {}})
        if not writer.is_closing():
            wire.write_frame(writer, answer)


def _plain(result: Any) -> Any:
    if isinstance(result, set):
        return sorted(result)
    if hasattr(result, "batcher"):  # a LoadedModel
        return describe(result, dynamic=False)
    return result
