"""service.loading with model.json placement: real ONNX Runtime sessions, GPUs injected as an inventory.

This host has no GPU. Where a test needs sessions "on" the injected GPUs, they are real CPU sessions that report the
GPU their options name (GpuStandIn); what is under test is the placement, the budget and the pool around them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service import repository
from service.errors import ModelLoadError, OutOfMemoryError
from service.loading import Loader
from service.metrics import Metrics
from service.model import LoadedModel, ModelState
from service.runtimes import RuntimeOptions, load_runtime
from service.runtimes.onnx import OnnxRuntime
from service.runtimes.placement import MIB, Gpu
from service.runtimes.pool import instances_of
from service.settings import Settings
from tests.service.conftest import onnx_doubler

pytestmark = pytest.mark.anyio
GIB = 1024 * MIB
GPUS = [Gpu(0, "H200", 140 * GIB, 139 * GIB), Gpu(1, "H200", 140 * GIB, 139 * GIB)]


class GpuStandIn(OnnxRuntime):
    """A real ONNX Runtime CPU session that reports the GPU its options place it on."""

    def __init__(self, artifact: Path, options: RuntimeOptions) -> None:
        super().__init__(artifact, dataclasses.replace(options, device="cpu", intra_op_threads=1))
        self.device = f"cuda:{options.gpu_device_id}"


class Recorder:
    """A RuntimeLoader that opens GpuStandIns, remembers the options of each, and can fail the n-th one."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.options: list[RuntimeOptions] = []
        self.opened: list[GpuStandIn] = []
        self.fail_at = fail_at

    def __call__(self, fmt: str, artifact: Path, options: RuntimeOptions) -> GpuStandIn:
        if len(self.options) == self.fail_at:
            raise ModelLoadError("could not create the CUDA session")
        self.options.append(options)
        self.opened.append(GpuStandIn(artifact, options))
        return self.opened[-1]


def write_model(repo: Path, name: str, **config: Any) -> repository.ModelSource:
    onnx_doubler(repo / name / "1" / "model.onnx")
    (repo / name / "model.json").write_text(json.dumps(config))
    return repository.read_model(repo / name)


@contextlib.contextmanager
def loader_for(repo: Path, runtime_loader: Any, gpus: list[Gpu]) -> Iterator[tuple[Loader, Metrics]]:
    metrics = Metrics(CollectorRegistry())
    with ThreadPoolExecutor(4) as executor:
        yield Loader(Settings(models_dir=repo), metrics, runtime_loader, executor, gpus=lambda: gpus), metrics


@contextlib.asynccontextmanager
async def loaded(loader: Loader, source: repository.ModelSource) -> AsyncIterator[LoadedModel]:
    model = await loader.load_version(source, source.config, 1)
    try:
        yield model
    finally:
        if model.batcher is not None:
            await model.batcher.stop()
        loader.close_runtime(model)


def budget(metrics: Metrics, device: str) -> float | None:
    return metrics.registry.get_sample_value("tandem_gpu_memory_budget_bytes", {"device": device})


async def test_instances_per_device_serve_one_queue_and_the_metrics_name_the_devices(tmp_path: Path) -> None:
    source = write_model(tmp_path, "cnn", devices=[0, 1], instances=2, gpu_memory_mb=2048, max_batch_size=8)
    recorder = Recorder()
    with loader_for(tmp_path, recorder, GPUS) as (loader, metrics):
        async with loaded(loader, source) as model:
            assert model.state is ModelState.READY, model.reason
            assert [(o.gpu_device_id, o.gpu_memory_bytes, o.instances_per_device) for o in recorder.options] == [
                (0, 2048 * MIB, 2),
                (1, 2048 * MIB, 2),
                (0, 2048 * MIB, 2),
                (1, 2048 * MIB, 2),
            ]
            assert model.runtime is not None
            assert len(instances_of(model.runtime)) == 4
            assert model.device == "cuda:0,cuda:1"
            assert model.limits is not None
            assert model.limits.max_concurrent_batches == 4  # one batch per instance unless model.json says
            assert (budget(metrics, "cuda:0"), budget(metrics, "cuda:1")) == (2048 * MIB, 2048 * MIB)
            assert model.batcher is not None
            out = await model.batcher.submit({"x": np.full((3, 4), 1.5, np.float32)}, rows=3)
            assert out["y"].tolist() == [[3.0] * 4] * 3
            labels = {"model": "cnn", "version": "1", "device": "cuda:0,cuda:1"}
            assert metrics.registry.get_sample_value("tandem_batches_total", labels) == 1
            ready = {**labels, "format": "onnx"}
            assert metrics.registry.get_sample_value("tandem_model_ready", ready) == 1
        assert budget(metrics, "cuda:0") == 0  # unloading gave the budget back


async def test_an_explicit_max_concurrent_batches_is_kept(tmp_path: Path) -> None:
    source = write_model(tmp_path, "cnn", devices=[0], instances=3, max_concurrent_batches=1)
    with loader_for(tmp_path, Recorder(), GPUS) as (loader, _):
        async with loaded(loader, source) as model:
            assert model.limits is not None
            assert model.limits.max_concurrent_batches == 1


async def test_an_unknown_device_fails_the_load_naming_it_and_opens_nothing(tmp_path: Path) -> None:
    source = write_model(tmp_path, "cnn", devices=[0, 3])
    recorder = Recorder()
    with loader_for(tmp_path, recorder, GPUS) as (loader, metrics):
        async with loaded(loader, source) as model:
            assert model.state is ModelState.UNAVAILABLE
            assert model.reason == (
                "load failed: model 'cnn' version 1 is placed on cuda:3, which does not exist "
                "(this host has cuda:0, cuda:1)"
            )
    assert recorder.options == []
    assert metrics.registry.get_sample_value("tandem_model_loads_total", {"model": "cnn", "outcome": "failed"}) == 1


async def test_a_budget_larger_than_the_device_is_refused(tmp_path: Path) -> None:
    source = write_model(tmp_path, "big", gpu_memory_mb=150 * 1024)
    recorder = Recorder()
    with loader_for(tmp_path, recorder, GPUS) as (loader, _):
        async with loaded(loader, source) as model:
            assert model.reason == (
                "load failed: model 'big' version 1 asks for 153600 MiB on cuda:0, which has 143360 MiB in all"
            )
    assert recorder.options == []


async def test_a_model_that_does_not_fit_is_refused_without_disturbing_the_loaded_one(tmp_path: Path) -> None:
    first = write_model(tmp_path, "first", gpu_memory_mb=100 * 1024)
    second = write_model(tmp_path, "second", gpu_memory_mb=50 * 1024)
    with loader_for(tmp_path, Recorder(), GPUS) as (loader, metrics):
        async with loaded(loader, first) as serving:
            async with loaded(loader, second) as refused:
                assert refused.state is ModelState.UNAVAILABLE
                assert refused.reason is not None
                assert "model 'second' version 1 does not fit on cuda:0" in refused.reason
                assert "102400 MiB budgeted to loaded models" in refused.reason
            assert serving.ready
            assert serving.batcher is not None
            assert (await serving.batcher.submit({"x": np.ones((1, 4), np.float32)}))["y"].tolist() == [[2.0] * 4]
            assert budget(metrics, "cuda:0") == 100 * GIB
        async with loaded(loader, second) as now_fits:  # the first one's budget came back when it unloaded
            assert now_fits.ready, now_fits.reason


async def test_an_instance_that_fails_closes_the_others_and_returns_the_budget(tmp_path: Path) -> None:
    source = write_model(tmp_path, "cnn", devices=[0, 1], gpu_memory_mb=1024)
    recorder = Recorder(fail_at=1)
    with loader_for(tmp_path, recorder, GPUS) as (loader, metrics):
        async with loaded(loader, source) as model:
            assert model.reason == "load failed: could not create the CUDA session"
    assert len(recorder.opened) == 1
    assert budget(metrics, "cuda:0") == 0


async def test_on_a_host_without_gpus_the_model_gets_one_cpu_session_as_before(tmp_path: Path) -> None:
    source = write_model(tmp_path, "cnn", devices=[0, 1], instances=4, gpu_memory_mb=1024)
    opened: list[RuntimeOptions] = []

    def real(fmt: str, artifact: Path, options: RuntimeOptions) -> Any:
        opened.append(options)
        return load_runtime(fmt, artifact, options)

    with loader_for(tmp_path, real, []) as (loader, metrics):
        async with loaded(loader, source) as model:
            assert model.ready, model.reason
            assert model.device == "cpu"
            assert type(model.runtime) is OnnxRuntime  # the plain session, no pool in between
            assert model.limits is not None
            assert model.limits.max_concurrent_batches == 1
    assert len(opened) == 1
    assert (opened[0].gpu_memory_bytes, opened[0].model_devices) == (0, ())
    assert budget(metrics, "cuda:0") is None


class RunsOutOfMemory(GpuStandIn):
    """Answers like a GPU session whose memory arena is too small for batches above 4 rows."""

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(inputs["x"]) > 4:
            raise OutOfMemoryError("the model ran out of device memory for this batch")
        return super().predict(inputs)


async def test_a_warm_up_that_runs_out_of_memory_fails_the_load_saying_what_to_change(tmp_path: Path) -> None:
    source = write_model(tmp_path, "cnn", gpu_memory_mb=64, max_batch_size=32)

    def runtime_loader(fmt: str, artifact: Path, options: RuntimeOptions) -> RunsOutOfMemory:
        return RunsOutOfMemory(artifact, options)

    with loader_for(tmp_path, runtime_loader, GPUS) as (loader, metrics):
        async with loaded(loader, source) as model:
            assert model.reason == (
                "load failed: warm-up at 32 rows ran out of memory on cuda:0: "
                "raise gpu_memory_mb or lower max_batch_size in model.json"
            )
        assert budget(metrics, "cuda:0") == 0
