"""A worker process's engine: lookups from the engine's last snapshot, requests and control calls over the socket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from service.errors import ModelNotFoundError, ServiceUnavailableError
from service.inference import InferRequest, InferResponse
from service.ipc import gather, wire
from service.ipc.arena import Arena
from service.ipc.views import ModelView, view
from service.model import resolve

log = logging.getLogger("tandem.worker")
GONE_CHECK_S = 0.05  # how often waiting requests' connections are checked for a client that left
Answer = asyncio.Future[tuple[dict[str, Any], memoryview]]


class EngineUnavailableError(ServiceUnavailableError):
    """The engine process is gone or restarting; requests get 503 until it is back."""


class RemoteEngine:
    """The Engine protocol, served by the engine process: one per worker, one socket, one shared-memory arena."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._arena = Arena()
        self._ids = itertools.count(1)
        self._waiting: dict[
            int, tuple[asyncio.Future[tuple[dict[str, Any], memoryview]], Callable[[], bool] | None]
        ] = {}
        self._gathering = gather.Gathering()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._gone_timer: asyncio.TimerHandle | None = None
        self._snapshot_seen = asyncio.Event()
        self._models: dict[str, dict[int, ModelView]] = {}
        self._defaults: dict[str, int] = {}
        self._engine_ready = False
        self._unready: str | None = "the engine process is not available"
        self.registered: set[str] = set()
        self.closing = False

    # ----- connection --------------------------------------------------------------------------------
    async def connect(self, timeout_s: float | None = None) -> None:
        """Connect (retrying while the engine starts or restarts) and wait for its first snapshot."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self._path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if deadline is not None and loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        self._snapshot_seen.clear()
        self._writer = writer
        wire.write_frame(writer, {"op": "hello", "arena": self._arena.name})
        self._reader_task = loop.create_task(self._read(reader))
        await asyncio.wait_for(self._snapshot_seen.wait(), timeout_s)

    async def close(self) -> None:
        """Stop reading, fail what waits, free the arena."""
        self.closing = True
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
        self._arena.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            frames = wire.Frames(reader)
            while True:
                for header, payload in await frames.read():
                    if header.get("op") == "snapshot":
                        self._apply(header)
                        continue
                    entry = self._waiting.pop(header["id"], None)
                    if entry is not None and not entry[0].done():
                        entry[0].set_result((header, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            log.error("lost the engine process: not ready until it is back")
        finally:
            self._engine_ready = False
            self._snapshot_seen.clear()
            for future, _ in self._waiting.values():
                if not future.done():
                    future.set_exception(EngineUnavailableError("the engine process is restarting"))
            self._waiting.clear()
        if not self.closing:  # the supervisor restarts the engine: connect again when it listens
            asyncio.get_running_loop().create_task(self.connect())

    def _apply(self, snapshot: dict[str, Any]) -> None:
        models: dict[str, dict[int, ModelView]] = {}
        for entry in snapshot["models"]:
            model = view(entry)
            old = self._models.get(model.name, {}).get(model.version)
            if old is not None:  # keep this worker's own counters across snapshots
                model.inflight, model.admitting = old.inflight, old.admitting
            models.setdefault(model.name, {})[model.version] = model
        self._models, self._defaults = models, {k: int(v) for k, v in snapshot["defaults"].items()}
        self.registered = set(snapshot["registered"])
        self._engine_ready = bool(snapshot["ready"])
        self._unready = snapshot["unready"]
        self._snapshot_seen.set()

    # ----- lookups ------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """The engine is connected and ready, and this worker is not draining."""
        return self._engine_ready and not self.closing

    def unready_reason(self) -> str | None:
        """Why not ready (the engine's own reason, or that it is unreachable); None when ready."""
        if not self._snapshot_seen.is_set():
            return "the engine process is not available"
        return self._unready

    def names(self) -> list[str]:
        """Known model names, sorted."""
        return sorted(self._models)

    def versions(self, name: str) -> Mapping[int, ModelView]:
        """Every known version of a model; 404 when unknown."""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFoundError(f"model '{name}' not found")
        return versions

    def get(self, name: str, version: int | None = None, label: str | None = None) -> ModelView:
        """The version asked (by number or label), else the default one."""
        return resolve(name, self.versions(name), version, label, self._defaults.get(name))

    def describe(self, name: str, version: int | None = None) -> ModelView:
        """Like get, but a model with no ready version gives its highest version instead of 503."""
        versions = self.versions(name)
        if version is None and not any(m.ready for m in versions.values()):
            return versions[max(versions)]
        return self.get(name, version)

    def default_version(self, name: str) -> int | None:
        """The set-default pin, if any."""
        return self._defaults.get(name)

    def all_models(self) -> Sequence[ModelView]:
        """Every version of every model."""
        return [m for name in self.names() for _, m in sorted(self._models[name].items())]

    def serving(self, name: str) -> bool:
        """Whether any version of the model takes requests."""
        return any(m.ready for m in self._models.get(name, {}).values())

    # ----- requests -----------------------------------------------------------------------------------
    async def infer(self, request: InferRequest, gone: Callable[[], bool] | None = None) -> InferResponse:
        """Send a validated request to the engine (tensors through shared memory) and wait for its answer.

        Requests of one pass of the loop that would batch together travel as one message (service.ipc.gather).
        """
        model = self._models.get(request.model, {}).get(request.version)
        max_rows = model.limits.max_batch_size if model is not None and model.limits is not None else 0
        key = gather.key_of(request, max_rows)
        part = gather.Part(request, asyncio.get_running_loop().create_future(), gone)
        if key is None:
            self._send_parts([part])
        else:
            if not self._gathering.groups:
                asyncio.get_running_loop().call_soon(self._send_gathered)
            self._gathering.add(key, part, max_rows)
        if model is not None:
            model.inflight += 1
        try:
            answer, outputs = await part.future
        finally:
            if model is not None:
                model.inflight -= 1
        timing = answer["queue_s"], answer["compute_s"], answer["batch_id"]
        return InferResponse(answer["model"], answer["version"], outputs, *timing)

    def _send_gathered(self) -> None:
        for parts in self._gathering.take():
            self._send_parts(parts)

    def _send_parts(self, parts: list[gather.Part]) -> None:
        """One message for the parts; when its answer comes, each part gets its rows (or the error)."""
        request = gather.merge(parts)
        refs, payload = wire.pack(request.inputs, self._arena)
        header = {
            "op": "infer",
            "model": request.model,
            "version": request.version,
            "outputs": list(request.outputs) if request.outputs is not None else None,
            "pinned": request.pinned,
            "deadline": request.deadline,
            "request_id": request.id,
            "rows": request.rows,
            "parts": len(parts),
            "inputs": refs,
        }
        try:
            answered = self._post(header, payload, gather.all_gone(parts))
        except EngineUnavailableError as exc:
            answered = asyncio.get_running_loop().create_future()
            answered.set_exception(exc)
        answered.add_done_callback(lambda done: self._release(refs))
        answered.add_done_callback(lambda done: gather.deliver(done, parts))

    def _release(self, refs: list[dict[str, Any]]) -> None:
        for offset in wire.released(refs):
            self._arena.release(offset)

    async def _send(self, header: dict[str, Any]) -> tuple[dict[str, Any], memoryview]:
        answer, data = await self._post(header)
        if "error" in answer:
            raise wire.error_from(answer)
        return answer, data

    def _post(
        self, header: dict[str, Any], payload: list[bytes] | None = None, gone: Callable[[], bool] | None = None
    ) -> Answer:
        """Queue a message for the engine; the future its answer resolves."""
        if self._writer is None or self._writer.is_closing() or not self._snapshot_seen.is_set():
            raise EngineUnavailableError("the engine process is not available")
        ident = header["id"] = next(self._ids)
        future: Answer = asyncio.get_running_loop().create_future()
        self._waiting[ident] = (future, gone)
        wire.write_frame(self._writer, header, payload or ())
        if gone is not None and self._gone_timer is None:
            self._gone_timer = asyncio.get_running_loop().call_later(GONE_CHECK_S, self._check_gone)
        return future

    def _check_gone(self) -> None:
        # One timer per worker, not per request: tell the engine about clients that left, so it drops them.
        self._gone_timer = None
        watched = False
        for ident, (future, gone) in list(self._waiting.items()):
            if gone is None or future.done():
                continue
            if gone() and self._writer is not None:
                wire.write_frame(self._writer, {"op": "cancel", "id": ident})
                self._waiting[ident] = (future, None)
            else:
                watched = True
        if watched:
            self._gone_timer = asyncio.get_running_loop().call_later(GONE_CHECK_S, self._check_gone)

    # ----- control operations -----------------------------------------------------------------------
    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        answer, _ = await self._send({"op": method, "args": list(args), "kwargs": kwargs})
        return answer.get("result")

    async def sync(self) -> None:
        """Fetch a snapshot with queue depths and statistics before a route reports them."""
        self._apply(await self._call("sync"))

    async def in_repository(self, name: str) -> bool:
        """Whether the repository holds a model of that name."""
        return bool(await self._call("in_repository", name))

    async def repository_names(self) -> set[str]:
        """Every model name in the repository."""
        return set(await self._call("repository_names"))

    async def load(self, name: str) -> ModelView:
        """(Re)load a repository model by name; its default version."""
        return view(await self._call("load", name))

    async def register(
        self, name: str, overrides: dict[str, float], workers: int | None, *, wait: bool
    ) -> ModelView | None:
        """Load a model that is not serving yet, waiting for it or not."""
        result = await self._call("register", name, overrides, workers, wait=wait)
        return view(result) if result is not None else None

    async def unload(self, name: str, version: int | None = None) -> None:
        """Drain and free one version, or every version."""
        await self._call("unload", name, version)

    async def scale(self, name: str, version: int, workers: int) -> None:
        """Set the batches a version may run at once; 0 pauses it."""
        await self._call("scale", name, version, workers)

    async def set_default(self, name: str, version: int) -> None:
        """Pin the version that version-less requests use."""
        await self._call("set_default", name, version)
