"""Owns what is loaded: name -> versions -> LoadedModel(config, runtime, batcher); load, swap, unload."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service import repository
from service.batcher import DynamicBatcher
from service.codec import check_inputs
from service.errors import (
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServiceError,
    ShuttingDownError,
    VersionNotFoundError,
)
from service.metrics import Metrics
from service.repository import ModelConfig, ModelSource
from service.runtimes import Runtime, RuntimeOptions, TensorSpec, load_runtime
from service.settings import Settings
from service.stats import ModelStats, Observers

log = logging.getLogger("tandem.registry")
RuntimeLoader = Callable[[str, Path, RuntimeOptions], Runtime]


class ModelState(enum.StrEnum):
    """Lifecycle of one model version (V2 repository-index names)."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class Limits:
    """The effective batching and timeout values of one model: model.json over server settings."""

    max_batch_size: int
    max_batch_delay_ms: float
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int
    queue_timeout_ms: float
    request_timeout_ms: float
    max_concurrent_batches: int

    @classmethod
    def resolve(cls, config: ModelConfig, settings: Settings, batched: bool) -> Limits:
        """Merge per-model overrides onto server defaults; a model without a batch dim never batches."""

        def pick(name: str) -> float:
            value = getattr(config, name)
            return value if value is not None else getattr(settings, name)  # type: ignore[no-any-return]

        return cls(
            max_batch_size=int(pick("max_batch_size")) if batched else 0,
            max_batch_delay_ms=pick("max_batch_delay_ms"),
            preferred_batch_sizes=tuple(config.preferred_batch_sizes),
            max_queue_size=int(pick("max_queue_size")),
            queue_timeout_ms=pick("queue_timeout_ms"),
            request_timeout_ms=pick("request_timeout_ms"),
            max_concurrent_batches=int(pick("max_concurrent_batches")),
        )


@dataclass(eq=False)
class LoadedModel:
    """One model version as served: its signature, limits, runtime and batcher."""

    name: str
    version: int
    config: ModelConfig
    state: ModelState = ModelState.LOADING
    reason: str | None = None
    runtime: Runtime | None = None
    batcher: DynamicBatcher | None = None
    limits: Limits | None = None
    labels: list[str] | None = None
    loaded_at: float = field(default_factory=time.time)
    stats: ModelStats = field(default_factory=ModelStats)

    @property
    def label(self) -> str:
        """How messages name this version."""
        return f"model '{self.name}' version {self.version}"

    @property
    def inputs(self) -> list[TensorSpec]:
        """Input signature (empty until loaded)."""
        return self.runtime.inputs if self.runtime else []

    @property
    def outputs(self) -> list[TensorSpec]:
        """Output signature (empty until loaded)."""
        return self.runtime.outputs if self.runtime else []

    @property
    def ready(self) -> bool:
        """Whether the version takes requests."""
        return self.state is ModelState.READY

    async def infer(self, arrays: dict[str, np.ndarray], deadline: float | None) -> dict[str, np.ndarray]:
        """Validate against the signature, then queue for a batch; the outcome counts in the version's stats."""
        if self.state is not ModelState.READY or self.batcher is None:
            raise ModelNotReadyError(f"{self.label} is not ready ({self.state.value.lower()})")
        started = time.perf_counter_ns()
        try:
            check_inputs(arrays, self.inputs, self.label)
            queue_deadline = None
            if self.limits and self.limits.queue_timeout_ms > 0:
                queue_deadline = time.monotonic() + self.limits.queue_timeout_ms / 1000
            outputs = await self.batcher.submit(arrays, deadline=deadline, queue_deadline=queue_deadline)
        except ServiceError:
            self.stats.request_finished(False, started)
            raise
        self.stats.request_finished(True, started)
        return outputs


class Registry:
    """Loads the repository, answers lookups, and swaps versions without dropping requests."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        loader: RuntimeLoader = load_runtime,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._loader = loader
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._default: dict[str, int] = {}
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="tandem-batch")
        self._lock = asyncio.Lock()
        self.closing = False

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

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The asked version, else the pinned default, else the highest READY one."""
        versions = self.versions(name)
        if version is not None:
            try:
                return versions[version]
            except KeyError:
                raise VersionNotFoundError(f"model '{name}' has no version {version}") from None
        pinned = self._default.get(name)
        if pinned is not None and pinned in versions:
            return versions[pinned]
        ready = [v for v, m in versions.items() if m.ready]
        if ready:
            return versions[max(ready)]
        latest = versions[max(versions)]
        raise ModelNotReadyError(f"model '{name}' has no ready version ({latest.reason or latest.state.value})")

    def default_version(self, name: str) -> int | None:
        """The set-default pin, if any."""
        return self._default.get(name)

    def set_default(self, name: str, version: int) -> None:
        """Pin the version that version-less URLs use, in every dialect."""
        if version not in self.versions(name):
            raise VersionNotFoundError(f"model '{name}' has no version {version}")
        self._default[name] = version

    def all_models(self) -> list[LoadedModel]:
        """Every version of every model, by name then version."""
        return [m for name in self.names() for _, m in sorted(self._models[name].items())]

    @property
    def ready(self) -> bool:
        """Server readiness: not draining, and every model has a ready version."""
        return not self.closing and all(any(m.ready for m in vs.values()) for vs in self._models.values())

    async def infer(
        self, name: str, version: int | None, arrays: dict[str, np.ndarray], deadline: float | None
    ) -> tuple[LoadedModel, dict[str, np.ndarray]]:
        """Run a request; a version-less request caught by a version swap retries on the new default."""
        if self.closing:
            raise ShuttingDownError()
        model = self.get(name, version)
        try:
            return model, await model.infer(arrays, deadline)
        except (ShuttingDownError, ModelNotReadyError):
            if self.closing or version is not None:
                raise
            retry = self.get(name, None)
            if retry is model:
                raise
            return retry, await retry.infer(arrays, deadline)

    # ----- loading and unloading ----------------------------------------------------------------
    async def load_all(self) -> None:
        """Load every model in the repository; one failing model never stops the others."""
        sources = repository.scan(self.settings.models_dir)
        await asyncio.gather(*(self.load_source(source) for source in sources.values()))

    async def load_model(self, name: str) -> list[LoadedModel]:
        """(Re)load one model from the repository by name (never by path or URL)."""
        source = repository.find_model(self.settings.models_dir, name)
        if source is None:
            raise ModelNotFoundError(f"model '{name}' not found in the repository")
        return await self.load_source(source)

    async def load_source(self, source: ModelSource, overrides: dict[str, float] | None = None) -> list[LoadedModel]:
        """Load the versions the policy selects, warm them, then retire versions no longer wanted."""
        async with self._lock:
            current = self._models.setdefault(source.name, {})
            if source.error is not None:
                self._record_failure(source.name, current, source.error)
                return []
            config = source.config.model_copy(update=overrides or {})
            wanted = repository.select_versions(config, list(source.versions))
            loaded = await asyncio.gather(
                *(self._load_version(source, config, v) for v in wanted if not _is_ready(current.get(v)))
            )
            for model in loaded:
                current[model.version] = model
            for version in [v for v in current if v not in wanted]:
                await self._retire(current.pop(version))
            if self._default.get(source.name) not in current:
                self._default.pop(source.name, None)
            return [current[v] for v in wanted if v in current]

    async def poll_forever(self) -> None:
        """Rescan the repository every poll_interval_s: load new models and versions, retire removed ones."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.poll()
            except Exception:  # a bad scan must not stop later ones
                log.exception("repository poll failed")

    async def poll(self) -> None:
        """One rescan: reload every model whose wanted versions differ from the loaded ones."""
        sources = repository.scan(self.settings.models_dir)
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
                await self._retire(versions.pop(v))
            if self._default.get(name) in targets:
                del self._default[name]
            if not versions:
                del self._models[name]

    async def close(self, timeout_s: float) -> None:
        """Drain every batcher (bounded by timeout_s), then free runtimes and threads."""
        self.closing = True
        models = self.all_models()
        await asyncio.gather(*(self._retire(m, timeout_s) for m in models))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _record_failure(self, name: str, current: dict[int, LoadedModel], reason: str) -> None:
        log.error("model %s failed to load: %s", name, reason)
        self.metrics.model_loads.labels(name, "failed").inc()
        if not current:
            current[0] = LoadedModel(name, 0, ModelConfig(), ModelState.UNAVAILABLE, reason)

    async def _load_version(self, source: ModelSource, config: ModelConfig, version: int) -> LoadedModel:
        model = LoadedModel(source.name, version, config)
        started = time.perf_counter()
        try:
            runtime = await asyncio.to_thread(self._open_runtime, source, config, version)
            model.runtime = runtime
            model.labels = repository.read_labels(source.versions[version])
            batched = bool(runtime.inputs) and all(s.shape and s.shape[0] == -1 for s in runtime.inputs)
            model.limits = Limits.resolve(config, self.settings, batched)
            if self.settings.warmup:
                await asyncio.to_thread(_warm_up, runtime, model.limits.max_batch_size)
        except ServiceError as exc:
            return self._failed(model, exc.message)
        except Exception as exc:  # a broken artifact must not take the server down
            log.exception("unexpected error loading %s", model.label)
            return self._failed(model, f"load failed ({type(exc).__name__})")
        model.batcher = self._make_batcher(model, runtime)
        await model.batcher.start()
        model.state = ModelState.READY
        fmt = runtime.format
        self.metrics.model_loads.labels(model.name, "ok").inc()
        self.metrics.model_load_duration.labels(model.name, fmt, runtime.device).observe(time.perf_counter() - started)
        self.metrics.model_ready.labels(model.name, str(version), fmt, runtime.device).set(1)
        log.info("%s READY on %s%s", model.label, runtime.device, " (degraded: CPU fallback)" * runtime.degraded)
        return model

    def _failed(self, model: LoadedModel, reason: str) -> LoadedModel:
        model.state, model.reason = ModelState.UNAVAILABLE, f"load failed: {reason}"
        self.metrics.model_loads.labels(model.name, "failed").inc()
        log.error("%s failed to load: %s", model.label, reason)
        if model.runtime is not None:
            model.runtime.close()
            model.runtime = None
        return model

    def _open_runtime(self, source: ModelSource, config: ModelConfig, version: int) -> Runtime:
        version_dir = source.versions[version]
        fmt = config.format or repository.detect_format(version_dir)
        if fmt is None:
            raise ModelLoadError("no model.onnx or model.savedmodel in the version directory")
        options = RuntimeOptions(
            device=config.device or self.settings.device,
            gpu_device_id=self.settings.gpu_device_id,
            allow_cpu_fallback=self.settings.allow_cpu_fallback,
            intra_op_threads=self.settings.intra_op_threads,
            signature_name=config.signature_name,
        )
        runtime = self._loader(fmt, repository.artifact_path(version_dir, fmt), options)
        _check_declared(config, runtime)
        return runtime

    def _make_batcher(self, model: LoadedModel, runtime: Runtime) -> DynamicBatcher:
        limits = model.limits
        assert limits is not None
        return DynamicBatcher(
            runtime.predict,
            max_batch_size=limits.max_batch_size,
            max_batch_delay_ms=limits.max_batch_delay_ms,
            max_queue_size=limits.max_queue_size,
            max_concurrent_batches=limits.max_concurrent_batches,
            preferred_batch_sizes=limits.preferred_batch_sizes,
            executor=self._executor,
            observer=Observers(
                self.metrics.batch_observer(model.name, str(model.version), runtime.device), model.stats
            ),
            name=model.label,
        )

    async def _retire(self, model: LoadedModel, timeout_s: float | None = None) -> None:
        if model.state is ModelState.READY and model.batcher is not None:
            model.state = ModelState.UNLOADING
            await model.batcher.stop(drain=True, timeout_s=timeout_s or self.settings.drain_timeout_s)
        model.state = ModelState.UNAVAILABLE
        model.reason = model.reason or "unloaded"
        if model.runtime is not None:
            self.metrics.model_ready.labels(
                model.name, str(model.version), model.runtime.format, model.runtime.device
            ).set(0)
            model.runtime.close()
            model.runtime = None


def _is_ready(model: LoadedModel | None) -> bool:
    return model is not None and model.ready


def _check_declared(config: ModelConfig, runtime: Runtime) -> None:
    """model.json may restate the signature; it must then agree with the artifact."""
    for kind, declared, actual in (
        ("input", config.inputs, runtime.inputs),
        ("output", config.outputs, runtime.outputs),
    ):
        if declared is None:
            continue
        got = {s.name: s for s in actual}
        for tensor in declared:
            spec = got.get(tensor.name)
            if spec is None:
                raise ModelLoadError(f"model.json {kind} '{tensor.name}' is not in the artifact ({sorted(got)})")
            if spec.datatype != tensor.datatype or len(spec.shape) != len(tensor.shape):
                raise ModelLoadError(
                    f"model.json {kind} '{tensor.name}' says {tensor.datatype} {tensor.shape}, "
                    f"the artifact has {spec.datatype} {list(spec.shape)}"
                )


def _warm_up(runtime: Runtime, max_batch_size: int) -> None:
    """Run synthetic inputs at batch 1 and the max batch so the first real request is not slow."""
    for rows in sorted({1, max(1, max_batch_size)}):
        feeds = {}
        for spec in runtime.inputs:
            shape = [rows if i == 0 and d == -1 else (1 if d == -1 else d) for i, d in enumerate(spec.shape)]
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shape, b"", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        runtime.predict(feeds)
