"""Owns what is loaded: name -> versions -> LoadedModel; lookups, the infer path, load, swap, unload, control."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from service import readiness, repository
from service.batching import Timing
from service.errors import (
    ModelNotFoundError,
    ModelNotReadyError,
    ServiceError,
    ShuttingDownError,
    VersionNotFoundError,
)
from service.inference import InferRequest, InferResponse, select, validate
from service.loading import Loader, RuntimeLoader
from service.metrics import Metrics
from service.model import LoadedModel, ModelState, resolve
from service.repository import ModelConfig, ModelSource
from service.runtimes import load_runtime
from service.settings import Settings

__all__ = ["Registry", "RuntimeLoader"]
log = logging.getLogger("tandem.registry")
# Batches run on these threads (runtimes release the GIL); each batcher bounds its own concurrency.
BATCH_THREADS = 64


class Registry:
    """Loads the repository, answers lookups, runs requests, and swaps versions without dropping any."""

    def __init__(self, settings: Settings, metrics: Metrics, loader: RuntimeLoader = load_runtime) -> None:
        self.settings = settings
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=BATCH_THREADS, thread_name_prefix="tandem-batch")
        self._loader = Loader(settings, metrics, loader, self._executor)
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._default: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self.registered: set[str] = set()  # models loaded through the control API rather than at start-up
        self.listeners: list[Callable[[], None]] = []  # told after every change of what is loaded or its state
        self.closing = False
        self.loaded = False  # the start-up load has finished, whatever its outcome
        self._scan_error: str | None = None  # why the repository could not be read

    # ----- lookups (hot path) -------------------------------------------------------------------
    def names(self) -> list[str]:
        """Known model names, sorted."""
        return sorted(self._models)

    def versions(self, name: str) -> dict[int, LoadedModel]:
        """Every known version of `name`; 404 for an unknown model (or one whose last version is unloading)."""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFoundError(f"model '{name}' not found")
        return versions

    def get(self, name: str, version: int | None = None, label: str | None = None) -> LoadedModel:
        """The asked version (or the one a `version_labels` label names), else the pinned default, else the latest."""
        return resolve(name, self.versions(name), version, label, self._default.get(name))

    def describe(self, name: str, version: int | None = None) -> LoadedModel:
        """Like get, but a model with no ready version gives its highest version (to report why) instead of 503."""
        if version is None and not any(m.ready for m in self.versions(name).values()):
            versions = self.versions(name)
            return versions[max(versions)]
        return self.get(name, version)

    def default_version(self, name: str) -> int | None:
        """The set-default pin, if any."""
        return self._default.get(name)

    def all_models(self) -> list[LoadedModel]:
        """Every version of every model, by name then version."""
        return [m for name in self.names() for _, m in sorted(self._models[name].items())]

    @property
    def ready(self) -> bool:
        """Server readiness: unready_reason() has nothing to say."""
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        """Why the server is not ready (draining, loading, no models, a model with no ready version), or None."""
        return readiness.unready_reason(self._models, self.closing, self.loaded, self._scan_error, self.settings)

    async def infer(self, request: InferRequest, gone: Callable[[], bool] | None = None) -> InferResponse:
        """Run a validated request; a version-less one caught by a version swap retries on the new default.

        `gone` tells whether the client has left; such a request is dropped before it runs.
        """
        if self.closing:
            raise ShuttingDownError()
        model = self.versions(request.model).get(request.version)
        if model is None or not model.ready:  # retired since the request was validated (another process's view)
            model = self.get(request.model, request.version) if request.pinned else self._switch(request, model)
        try:
            return await self._run(model, request, gone)
        except (ShuttingDownError, ModelNotReadyError):
            if self.closing or request.pinned:
                raise
            retry = self._switch(request, model)
            if retry is model:
                raise
            return await self._run(retry, request, gone)

    def _switch(self, request: InferRequest, old: LoadedModel | None) -> LoadedModel:
        """Move a version-less request to the current default, validating it again if the signature changed."""
        model = self.get(request.model)
        if old is None or model.inputs != old.inputs or model.outputs != old.outputs:
            validate(request, model.inputs, model.outputs, _max_rows(model), model.label)
        request.version = model.version
        return model

    async def _run(self, model: LoadedModel, request: InferRequest, gone: Callable[[], bool] | None) -> InferResponse:
        """Queue for a batch; the outcome counts in the version's stats."""
        batcher, limits = model.batcher, model.limits
        if model.state is not ModelState.READY or batcher is None or limits is None:
            raise ModelNotReadyError(f"{model.label} is not ready ({model.state.value.lower()})")
        started = time.perf_counter_ns()
        timing = Timing()
        queue_deadline = time.monotonic() + limits.queue_timeout_ms / 1000 if limits.queue_timeout_ms > 0 else None
        try:
            produced = await batcher.submit(
                request.inputs,
                rows=request.rows,
                deadline=request.deadline,
                queue_deadline=queue_deadline,
                gone=gone,
                timing=timing,
            )
        except ServiceError:
            for _ in range(request.parts):
                model.stats.request_finished(False, started)
            raise
        for _ in range(request.parts):
            model.stats.request_finished(True, started)
        outputs = select(produced, model.outputs, request.outputs)
        return InferResponse(model.name, model.version, outputs, timing.queue_s, timing.compute_s, timing.batch_id)

    # ----- loading and unloading ----------------------------------------------------------------
    async def load_all(self) -> None:
        """Load every model in the repository, each LOADING until done; one failing model never stops the others."""
        sources, self._scan_error = await asyncio.to_thread(repository.scan_or_reason, self.settings.models_dir)
        if self._scan_error:
            log.error("%s", self._scan_error)
        for source in sources.values():
            wanted = [] if source.error else repository.select_versions(source.config, list(source.versions))
            self._models[source.name] = {v: LoadedModel(source.name, v, source.config) for v in wanted}
        await asyncio.gather(*(self.load_source(source) for source in sources.values()))
        self.loaded = True

    async def load_source(self, source: ModelSource, overrides: dict[str, float] | None = None) -> list[LoadedModel]:
        """Load the versions the policy selects, warm them, then retire versions no longer wanted."""
        async with self._lock:
            current = self._models.setdefault(source.name, {})
            if source.error is not None:
                self._loader.source_failed(source.name, source.error)
                if not current:
                    current[0] = LoadedModel(source.name, 0, ModelConfig(), ModelState.UNAVAILABLE, source.error)
                return []
            config = source.config.model_copy(update=overrides or {})
            wanted = repository.select_versions(config, list(source.versions))
            loaded = await asyncio.gather(
                *(self._loader.load_version(source, config, v) for v in wanted if not _is_ready(current.get(v)))
            )
            for model in loaded:
                current[model.version] = model
            for version in [v for v in current if v not in wanted]:
                await self._retire(current.pop(version), self.settings.drain_timeout_s)
            if self._default.get(source.name) not in current:
                self._default.pop(source.name, None)
            self.changed()
            return [current[v] for v in wanted if v in current]

    async def poll(self) -> None:
        """One rescan: load new models and versions, retire removed ones (run every poll_interval_s)."""
        sources = await asyncio.to_thread(repository.scan, self.settings.models_dir)
        for name, source in sources.items():
            loaded = {v for v, m in self._models.get(name, {}).items() if m.ready}
            wanted = set(repository.select_versions(source.config, list(source.versions)))
            if source.error is None and wanted != loaded:
                await self.load_source(source)
        for name in [n for n in self._models if n not in sources]:
            await self.unload(name)

    async def unload(self, name: str, version: int | None = None) -> None:
        """Stop admitting requests, drain in-flight batches, free the runtimes."""
        async with self._lock:
            versions = self.versions(name)
            targets = [version] if version is not None else list(versions)
            for v in targets:
                if v not in versions:
                    raise VersionNotFoundError(f"model '{name}' has no version {v}")
                await self._retire(versions.pop(v), self.settings.drain_timeout_s)
            if self._default.get(name) in targets:
                del self._default[name]
            if not versions:
                del self._models[name]
                self.registered.discard(name)
            self.changed()

    async def close(self, timeout_s: float) -> None:
        """Drain every batcher (bounded by timeout_s), then free runtimes and threads."""
        self.closing = True
        self.changed()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(self._retire(m, timeout_s) for m in self.all_models()))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _retire(self, model: LoadedModel, timeout_s: float) -> None:
        if model.state is ModelState.READY and model.batcher is not None:
            model.state = ModelState.UNLOADING
            await model.batcher.stop(drain=True, timeout_s=timeout_s)
        model.state = ModelState.UNAVAILABLE
        model.reason = model.reason or "unloaded"
        self._loader.close_runtime(model)
        self.changed()

    def changed(self) -> None:
        """Tell the listeners (a worker-process bridge) that what is loaded, or its state, changed."""
        for listener in self.listeners:
            listener()

    def snapshot(self) -> tuple[dict[str, dict[int, LoadedModel]], dict[str, int]]:
        """Every version by name, and the default pins: what another process needs to answer lookups."""
        return self._models, self._default


def _is_ready(model: LoadedModel | None) -> bool:
    return model is not None and model.ready


def _max_rows(model: LoadedModel) -> int:
    return model.limits.max_batch_size if model.limits else 0
