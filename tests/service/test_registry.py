"""service.registry with a fake runtime: loading, failures, version policies, swaps under load, unload, polling."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service import repository
from service.control import LocalEngine as Registry
from service.errors import (
    BadRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    ShuttingDownError,
    VersionNotFoundError,
)
from service.inference import InferRequest, validate
from service.metrics import Metrics
from service.model import LoadedModel, ModelState
from service.settings import Settings
from tests.fakes import JsonArtifactLoader, write_json_model

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def loaded(repo: Path, loader: JsonArtifactLoader | None = None, **settings: Any) -> AsyncIterator[Registry]:
    """A registry over `repo` with every model loaded; closed (drained) afterwards."""
    registry = Registry(
        Settings(models_dir=repo, **settings), Metrics(CollectorRegistry()), loader or JsonArtifactLoader()
    )
    await registry.load_all()
    try:
        yield registry
    finally:
        await registry.close(5)


async def infer(
    registry: Registry, name: str, version: int | None, arrays: dict[str, np.ndarray], deadline: float | None
) -> tuple[LoadedModel, dict[str, np.ndarray]]:
    """What a route does: look the version up, validate against it, run; the version that answered and its outputs."""
    if registry.closing:
        raise ShuttingDownError()
    model = registry.get(name, version)
    request = InferRequest(name, model.version, arrays, pinned=version is not None, deadline=deadline)
    if model.ready:  # the routes answer 503 for a version that is not ready before decoding anything
        validate(request, model.inputs, model.outputs, model.limits.max_batch_size if model.limits else 0, model.label)
    response = await registry.infer(request)
    return model if response.version == model.version else registry.get(name, response.version), response.outputs


def rows(n: int, value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 4), value, np.float32)}


def sample(registry: Registry, name: str, **labels: str) -> float | None:
    return registry.metrics.registry.get_sample_value(name, labels)


async def test_load_all_serves_every_model_in_the_repository(tmp_path: Path) -> None:
    write_json_model(tmp_path, "a", 1)
    write_json_model(tmp_path, "b", 3)
    async with loaded(tmp_path) as registry:
        assert registry.names() == ["a", "b"]
        assert registry.ready
        model = registry.get("b")
        assert (model.name, model.version, model.state) == ("b", 3, ModelState.READY)
        served, out = await infer(registry, "b", None, rows(2, 1.5), None)
        assert served is model
        assert out["y"].tolist() == [[3.0] * 4] * 2
        assert out["version"].tolist() == [3, 3]
        assert sample(registry, "tandem_model_ready", model="b", version="3", format="onnx", device="cpu") == 1
        assert sample(registry, "tandem_model_loads_total", model="a", outcome="ok") == 1


async def test_a_broken_model_does_not_stop_the_others_and_its_reason_shows(tmp_path: Path) -> None:
    write_json_model(tmp_path, "good", 1)
    write_json_model(tmp_path, "bad", 1, load_error="not a valid ONNX model")
    async with loaded(tmp_path) as registry:
        assert registry.get("good").ready
        bad = registry.versions("bad")[1]
        assert bad.state is ModelState.UNAVAILABLE
        assert bad.reason == "load failed: not a valid ONNX model"
        assert not registry.ready  # strict readiness: every model needs a ready version
        with pytest.raises(ModelNotReadyError, match=r"not a valid ONNX model"):
            registry.get("bad")
        with pytest.raises(ModelNotReadyError):
            await infer(registry, "bad", 1, rows(1), None)
        assert sample(registry, "tandem_model_loads_total", model="bad", outcome="failed") == 1


async def test_a_bad_model_json_marks_the_model_unavailable_with_the_reason(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1, config={"max_batch_sise": 4})
    write_json_model(tmp_path, "ok", 1)
    async with loaded(tmp_path) as registry:
        assert registry.get("ok").ready
        [model] = registry.versions("m").values()
        assert model.state is ModelState.UNAVAILABLE
        assert model.reason is not None
        assert "max_batch_sise" in model.reason
        assert str(tmp_path) not in model.reason


async def test_a_version_directory_without_an_artifact_fails_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    async with loaded(tmp_path) as registry:
        reason = registry.versions("m")[1].reason
        assert reason is not None
        assert "model.onnx" in reason


async def test_a_failing_warm_up_leaves_the_version_unavailable_and_closes_it(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1, fail_predict=True)
    loader = JsonArtifactLoader()
    async with loaded(tmp_path, loader) as registry:
        model = registry.versions("m")[1]
        assert model.state is ModelState.UNAVAILABLE
        assert model.reason is not None
        assert model.reason.startswith("load failed")
        assert loader.of("m", 1).closed
    async with loaded(tmp_path, warmup=False) as registry:
        assert registry.get("m").ready  # without warm-up the same model counts as ready


async def test_warm_up_runs_batch_one_and_the_max_batch(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1, config={"max_batch_size": 16})
    loader = JsonArtifactLoader()
    async with loaded(tmp_path, loader):
        assert loader.of("m", 1).batch_rows == [1, 16]


async def test_model_json_declarations_must_agree_with_the_artifact(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1, config={"inputs": [{"name": "x", "datatype": "INT32", "shape": [-1, 4]}]})
    write_json_model(tmp_path, "n", 1, config={"outputs": [{"name": "z", "datatype": "FP32", "shape": [-1]}]})
    write_json_model(tmp_path, "o", 1, config={"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]})
    async with loaded(tmp_path) as registry:
        assert "INT32" in (registry.versions("m")[1].reason or "")
        assert "'z'" in (registry.versions("n")[1].reason or "")
        assert registry.get("o").ready


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, [3]),
        ({"num_versions": 2}, [2, 3]),
        ({"version_policy": "all"}, [1, 2, 3]),
        ({"version_policy": "specific", "versions": [1, 3]}, [1, 3]),
    ],
)
async def test_the_version_policy_picks_what_is_loaded(
    tmp_path: Path, config: dict[str, Any], expected: list[int]
) -> None:
    for version in (1, 2, 3):
        write_json_model(tmp_path, "m", version, config=config)
    async with loaded(tmp_path) as registry:
        assert sorted(registry.versions("m")) == expected
        assert registry.get("m").version == 3


async def test_a_specific_version_is_served_and_an_unknown_one_is_not_found(tmp_path: Path) -> None:
    for version in (1, 2):
        write_json_model(tmp_path, "m", version, config={"version_policy": "all"})
    async with loaded(tmp_path) as registry:
        _, out = await infer(registry, "m", 1, rows(1), None)
        assert out["version"].tolist() == [1]
        with pytest.raises(VersionNotFoundError, match=r"version 7"):
            registry.get("m", 7)
        with pytest.raises(ModelNotFoundError, match=r"'nope'"):
            registry.get("nope")
        with pytest.raises(ModelNotFoundError):
            await infer(registry, "nope", None, rows(1), None)


async def test_the_default_pin_governs_version_less_requests(tmp_path: Path) -> None:
    for version in (1, 2):
        write_json_model(tmp_path, "m", version, config={"version_policy": "all"})
    async with loaded(tmp_path) as registry:
        assert registry.default_version("m") is None
        await registry.set_default("m", 1)
        assert registry.default_version("m") == 1
        assert registry.get("m").version == 1
        _, out = await infer(registry, "m", None, rows(1), None)
        assert out["version"].tolist() == [1]
        with pytest.raises(VersionNotFoundError):
            await registry.set_default("m", 5)
        await registry.unload("m", 1)  # removing the pinned version clears the pin
        assert registry.default_version("m") is None
        assert registry.get("m").version == 2


async def test_inputs_are_checked_against_the_signature_before_queueing(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1)
    loader = JsonArtifactLoader()
    async with loaded(tmp_path, loader) as registry:
        calls = len(loader.of("m", 1).batch_rows)
        with pytest.raises(BadRequestError, match=r"model 'm' version 1.*input 'x'.*FP32"):
            await infer(registry, "m", None, {"x": np.ones((1, 4), np.float64)}, None)
        with pytest.raises(BadRequestError, match=r"missing"):
            await infer(registry, "m", None, {"z": np.ones((1, 4), np.float32)}, None)
        assert len(loader.of("m", 1).batch_rows) == calls


async def test_per_model_limits_override_the_server_defaults(tmp_path: Path) -> None:
    config = {"max_batch_size": 8, "max_queue_size": 3, "request_timeout_ms": 250, "device": "cpu"}
    write_json_model(tmp_path, "m", 1, config=config)
    write_json_model(tmp_path, "d", 1)
    loader = JsonArtifactLoader()
    async with loaded(tmp_path, loader, max_batch_size=32, max_queue_size=100, device="auto") as registry:
        limits = registry.get("m").limits
        assert limits is not None
        assert (limits.max_batch_size, limits.max_queue_size, limits.request_timeout_ms) == (8, 3, 250)
        defaults = registry.get("d").limits
        assert defaults is not None
        assert (defaults.max_batch_size, defaults.max_queue_size) == (32, 100)
        assert sorted(options.device for options in loader.options) == ["auto", "cpu"]


async def test_concurrent_requests_are_batched(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1, delay_s=0.02, config={"max_batch_size": 64, "max_batch_delay_ms": 5})
    loader = JsonArtifactLoader()
    async with loaded(tmp_path, loader) as registry:
        results = await asyncio.gather(*(infer(registry, "m", None, rows(1, i), None) for i in range(40)))
        assert [out["y"][0, 0] for _, out in results] == [2.0 * i for i in range(40)]
        served = loader.of("m", 1).batch_rows[2:]  # after the two warm-up calls
        assert sum(served) == 40
        assert max(served) > 1


async def test_a_version_swap_under_concurrent_load_loses_no_request(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1, delay_s=0.005, config={"max_batch_size": 8, "max_batch_delay_ms": 1})
    loader = JsonArtifactLoader()
    async with loaded(tmp_path, loader) as registry:
        versions: list[int] = []
        errors: list[BaseException] = []
        stop = asyncio.Event()
        target = [50]
        reached = asyncio.Event()

        async def client(index: int) -> None:
            while not stop.is_set():
                try:
                    _, out = await infer(registry, "m", None, rows(1, index), None)
                except Exception as exc:  # any failure is a lost request
                    errors.append(exc)
                    return
                assert out["y"][0, 0] == 2.0 * index
                versions.append(int(out["version"][0]))
                if len(versions) >= target[0]:
                    reached.set()

        with anyio.fail_after(20):
            clients = [asyncio.create_task(client(i)) for i in range(16)]
            await reached.wait()
            write_json_model(tmp_path, "m", 2, delay_s=0.005)
            source = repository.find_model(tmp_path, "m")
            assert source is not None
            await registry.load_source(source)
            target[0] = len(versions) + 50
            reached.clear()
            await reached.wait()
            stop.set()
            await asyncio.gather(*clients)
        assert errors == []
        assert versions[0] == 1
        assert versions[-1] == 2
        assert sorted(registry.versions("m")) == [2]
        old = loader.of("m", 1)
        assert old.closed
        assert not old.closed_while_running


async def test_unload_drains_running_requests_then_frees_the_runtime(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1, delay_s=0.1, config={"max_batch_size": 1})  # one request per call
    write_json_model(tmp_path, "other", 1)
    loader = JsonArtifactLoader()
    async with loaded(tmp_path, loader, warmup=False) as registry:
        pending = [asyncio.create_task(infer(registry, "m", None, rows(1, i), None)) for i in range(3)]
        await asyncio.sleep(0.05)  # the first runs, two wait in the queue
        await registry.unload("m")
        results = await asyncio.gather(*pending)
        assert [out["y"][0, 0] for _, out in results] == [0.0, 2.0, 4.0]
        assert loader.of("m", 1).batch_rows == [1, 1, 1]
        assert loader.of("m", 1).closed
        assert not loader.of("m", 1).closed_while_running
        with pytest.raises(ModelNotFoundError):
            registry.get("m")
        assert registry.names() == ["other"]
        with pytest.raises(ModelNotFoundError):
            await registry.unload("m")


async def test_requests_arriving_while_a_model_unloads_are_refused_cleanly(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1, delay_s=0.2)
    async with loaded(tmp_path, warmup=False) as registry:
        running = asyncio.create_task(infer(registry, "m", None, rows(1, 1), None))
        await asyncio.sleep(0.05)
        unloading = asyncio.create_task(registry.unload("m"))
        await asyncio.sleep(0.05)  # the unload now waits for the running request
        assert not unloading.done()
        with pytest.raises((ModelNotFoundError, ModelNotReadyError)):
            await infer(registry, "m", None, rows(1), None)
        with pytest.raises((ModelNotFoundError, ModelNotReadyError)):
            registry.get("m")
        await unloading
        _, out = await running
        assert out["y"][0, 0] == 2.0


async def test_poll_picks_up_new_versions_and_drops_removed_models(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1)
    write_json_model(tmp_path, "gone", 1)
    loader = JsonArtifactLoader()
    async with loaded(tmp_path, loader) as registry:
        await registry.poll()  # nothing changed: nothing reloads
        assert len(loader.runtimes) == 2
        write_json_model(tmp_path, "m", 2)
        write_json_model(tmp_path, "new", 1)
        shutil.rmtree(tmp_path / "gone")
        await registry.poll()
        assert sorted(registry.versions("m")) == [2]
        assert registry.get("new").ready
        assert registry.names() == ["m", "new"]
        _, out = await infer(registry, "m", None, rows(1), None)
        assert out["version"].tolist() == [2]


async def test_poll_forever_rescans_on_its_interval(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1)
    async with loaded(tmp_path, poll_interval_s=0.05) as registry:
        poller = asyncio.create_task(registry.poll_forever())
        try:
            write_json_model(tmp_path, "m", 2)
            for _ in range(250):
                if registry.get("m").version == 2:
                    break
                await asyncio.sleep(0.02)
            assert registry.get("m").version == 2
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller


async def test_close_refuses_new_work_and_drains(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1, delay_s=0.2)
    loader = JsonArtifactLoader()
    registry = Registry(Settings(models_dir=tmp_path, warmup=False), Metrics(CollectorRegistry()), loader)
    await registry.load_all()
    running = asyncio.create_task(infer(registry, "m", None, rows(1, 3), None))
    await asyncio.sleep(0.05)
    await registry.close(5)
    _, out = await running
    assert out["y"][0, 0] == 6.0
    assert not registry.ready
    with pytest.raises(ShuttingDownError):
        await infer(registry, "m", None, rows(1), None)
    assert loader.of("m", 1).closed
