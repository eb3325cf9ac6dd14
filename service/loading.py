"""Turning one version directory into a serving LoadedModel: open the runtime, check, warm up, start its batcher."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from service import repository
from service.batcher import DynamicBatcher
from service.batching import INLINE_BATCH_S
from service.errors import ModelLoadError, OutOfMemoryError, ServiceError
from service.metrics import Metrics
from service.model import Limits, LoadedModel, ModelState
from service.repository import ModelConfig, ModelSource
from service.runtimes import Runtime, RuntimeOptions, available_cpus
from service.runtimes.placement import DeviceLedger, GpuInventory, gpu_inventory, plan
from service.runtimes.pool import instances_of, open_instances
from service.settings import Settings
from service.stats import Observers

log = logging.getLogger("tandem.loading")
RuntimeLoader = Callable[[str, Path, RuntimeOptions], Runtime]
INLINE_SINGLE_CPU_S = 0.002


class Loader:
    """Loads versions for the registry; one failing version is recorded as UNAVAILABLE, never raised."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        runtime_loader: RuntimeLoader,
        executor: Executor,
        gpus: GpuInventory = gpu_inventory,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._runtime_loader = runtime_loader
        self._executor = executor
        self._gpus = gpus
        self._ledger = DeviceLedger(lambda index, held: metrics.gpu_memory_budget.labels(f"cuda:{index}").set(held))

    async def load_version(self, source: ModelSource, config: ModelConfig, version: int) -> LoadedModel:
        """Open, check and warm one version, then start its batcher; READY or UNAVAILABLE with the reason."""
        model = LoadedModel(source.name, version, config)
        started = time.perf_counter()
        try:
            runtime = await asyncio.to_thread(self._open_runtime, model, config, source)
            model.runtime = runtime
            model.limits = self._limits(config, runtime)
            if self._settings.warmup:
                for instance in instances_of(runtime):
                    await asyncio.to_thread(warm_up, instance, model.limits.max_batch_size)
        except ServiceError as exc:
            return self.failed(model, exc.message)
        except Exception as exc:  # a broken artifact must not take the server down
            log.exception("unexpected error loading %s", model.label)
            return self.failed(model, f"load failed ({type(exc).__name__})")
        model.batcher = self._make_batcher(model, runtime, model.limits)
        await model.batcher.start()
        model.state = ModelState.READY
        fmt, device = runtime.format, runtime.device
        self._metrics.model_loads.labels(model.name, "ok").inc()
        self._metrics.model_load_duration.labels(model.name, fmt, device).observe(time.perf_counter() - started)
        self._metrics.model_ready.labels(model.name, str(version), fmt, device).set(1)
        log.info("%s READY on %s%s", model.label, device, " (degraded: CPU fallback)" * runtime.degraded)
        return model

    def failed(self, model: LoadedModel, reason: str) -> LoadedModel:
        """Mark a version that could not load, counting and logging why."""
        model.state, model.reason = ModelState.UNAVAILABLE, f"load failed: {reason}"
        self._metrics.model_loads.labels(model.name, "failed").inc()
        log.error("%s failed to load: %s", model.label, reason)
        self.close_runtime(model)
        return model

    def source_failed(self, name: str, reason: str) -> None:
        """Count and log a model directory that cannot be read (bad model.json, no versions)."""
        log.error("model %s failed to load: %s", name, reason)
        self._metrics.model_loads.labels(name, "failed").inc()

    def close_runtime(self, model: LoadedModel) -> None:
        """Free a version's runtime and clear its ready gauge."""
        if model.runtime is not None:
            runtime = model.runtime
            self._metrics.model_ready.labels(model.name, str(model.version), runtime.format, runtime.device).set(0)
            runtime.close()
            model.runtime = None

    def _open_runtime(self, model: LoadedModel, config: ModelConfig, source: ModelSource) -> Runtime:
        version_dir = source.versions[model.version]
        fmt = config.format or repository.detect_format(version_dir)
        if fmt is None:
            raise ModelLoadError("no model.onnx or model.savedmodel in the version directory")
        artifact = repository.artifact_path(version_dir, fmt)
        options = RuntimeOptions(
            device=config.device or self._settings.device,
            gpu_device_id=self._settings.gpu_device_id,
            allow_cpu_fallback=self._settings.allow_cpu_fallback,
            intra_op_threads=self._settings.intra_op_threads,
            signature_name=config.signature_name,
        )
        gpus = [] if options.device == "cpu" else self._gpus()
        placement = plan(model.label, config.devices, config.instances, config.gpu_memory_mb, options, gpus)
        release = self._ledger.reserve(model.label, placement.budgets, gpus)
        runtime = open_instances(lambda o: self._runtime_loader(fmt, artifact, o), placement, release)
        try:
            check_declared(config, runtime)
        except BaseException:
            runtime.close()
            raise
        return runtime

    def _limits(self, config: ModelConfig, runtime: Runtime) -> Limits:
        """model.json over settings; several instances run that many batches at once unless model.json says."""
        batched = bool(runtime.inputs) and all(spec.batched for spec in runtime.inputs)
        limits = Limits.resolve(config, self._settings, batched)
        instances = len(instances_of(runtime))
        if config.max_concurrent_batches is None and instances > limits.max_concurrent_batches:
            limits = dataclasses.replace(limits, max_concurrent_batches=instances)
        return limits

    def _make_batcher(self, model: LoadedModel, runtime: Runtime, limits: Limits) -> DynamicBatcher:
        return DynamicBatcher(
            runtime.predict,
            max_batch_size=limits.max_batch_size,
            max_batch_delay_ms=limits.max_batch_delay_ms,
            max_queue_size=limits.max_queue_size,
            max_concurrent_batches=limits.max_concurrent_batches,
            preferred_batch_sizes=limits.preferred_batch_sizes,
            executor=self._executor,
            observer=Observers(
                self._metrics.batch_observer(model.name, str(model.version), runtime.device), model.stats
            ),
            name=model.label,
            inline_below_s=inline_threshold(runtime.device),
        )


def inline_threshold(device: str) -> float:
    """Batches with a mean runtime call below this run on the event loop rather than a worker thread.

    With one CPU and a CPU runtime, a worker thread cannot overlap anything: the handoff to it and back (a queue,
    two wake-ups and the GIL changing hands) is pure cost, so batches of up to a few milliseconds run inline; longer
    ones still go to a thread, so that the loop keeps answering (health checks, 503s) while they run. Otherwise
    only batches faster than the handoff run inline, and the loop decodes the next requests while a batch runs.
    """
    return INLINE_SINGLE_CPU_S if device == "cpu" and available_cpus() == 1 else INLINE_BATCH_S


def check_declared(config: ModelConfig, runtime: Runtime) -> None:
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


def warm_up(runtime: Runtime, max_batch_size: int) -> None:
    """Run synthetic inputs at batch 1 and the max batch so the first real request is not slow."""
    for rows in sorted({1, max(1, max_batch_size)}):
        feeds = {}
        for spec in runtime.inputs:
            shape = [rows if i == 0 and d == -1 else (1 if d == -1 else d) for i, d in enumerate(spec.shape)]
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shape, b"", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        try:
            runtime.predict(feeds)
        except OutOfMemoryError:
            raise ModelLoadError(
                f"warm-up at {rows} rows ran out of memory on {runtime.device}: "
                "raise gpu_memory_mb or lower max_batch_size in model.json"
            ) from None
