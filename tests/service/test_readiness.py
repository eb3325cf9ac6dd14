"""Server readiness through the registry: loading named, nothing to serve, failed models, strict or relaxed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.errors import ModelNotReadyError
from service.metrics import Metrics
from service.model import ModelState
from service.registry import Registry
from service.settings import Settings
from tests.fakes import JsonArtifactLoader, write_json_model

pytestmark = pytest.mark.anyio
WAIT_S = 120


async def eventually(condition: Callable[[], bool]) -> None:
    """Yield to the loop until condition() holds (bounded far above any healthy machine's need)."""
    for _ in range(WAIT_S * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition never held")


def registry(repo: Path, **settings: Any) -> Registry:
    return Registry(
        Settings(models_dir=repo, warmup=False, **settings), Metrics(CollectorRegistry()), JsonArtifactLoader()
    )


async def test_models_show_loading_until_loaded_and_readiness_names_them(tmp_path: Path) -> None:
    write_json_model(tmp_path, "quick", 1)
    version_dir = tmp_path / "late" / "2"
    version_dir.mkdir(parents=True)
    os.mkfifo(version_dir / "model.onnx")  # the fake loader reads it: the load waits until the test writes it
    engine = registry(tmp_path)
    assert engine.unready_reason() == "loading the model repository"
    loading = asyncio.create_task(engine.load_all())
    try:
        await eventually(lambda: "late" in engine.names())  # the scan runs in a thread; the placeholders follow
        assert engine.versions("late")[2].state is ModelState.LOADING
        with pytest.raises(ModelNotReadyError, match=r"model 'late' has no ready version \(LOADING\)"):
            engine.get("late")
        assert "loading model 'late' version 2" in (engine.unready_reason() or "")
        await asyncio.to_thread((version_dir / "model.onnx").write_text, "{}")
        await asyncio.wait_for(loading, WAIT_S)
        assert engine.get("late").ready
        assert engine.unready_reason() is None
        assert engine.ready
    finally:
        if not loading.done():  # unblock the reader so the thread can end
            fd = os.open(version_dir / "model.onnx", os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        await asyncio.gather(loading, return_exceptions=True)
        await engine.close(5)
    assert engine.unready_reason() == "shutting down"


async def test_an_empty_repository_is_not_ready(tmp_path: Path) -> None:
    engine = registry(tmp_path)
    await engine.load_all()
    assert engine.unready_reason() == f"the model repository '{tmp_path.name}' has no models"
    await engine.close(5)


async def test_a_repository_that_cannot_be_read_is_not_ready_and_says_why_without_a_path(tmp_path: Path) -> None:
    engine = registry(tmp_path / "gone")
    await engine.load_all()
    reason = engine.unready_reason() or ""
    assert reason == "cannot read the model repository (model repository 'gone' is not a directory)"
    assert str(tmp_path) not in reason
    await engine.close(5)


@pytest.mark.parametrize("strict", [True, False])
async def test_a_failed_model_blocks_readiness_only_when_strict(tmp_path: Path, strict: bool) -> None:
    write_json_model(tmp_path, "good", 1)
    write_json_model(tmp_path, "bad", 3, load_error="not a valid ONNX model")
    engine = registry(tmp_path, strict_readiness=strict)
    await engine.load_all()
    try:
        if strict:
            reason = "model 'bad' version 3 is UNAVAILABLE: load failed: not a valid ONNX model"
            assert engine.unready_reason() == reason
        else:
            assert engine.unready_reason() is None
    finally:
        await engine.close(5)


async def test_relaxed_readiness_still_needs_one_model_that_serves(tmp_path: Path) -> None:
    write_json_model(tmp_path, "bad", 1, load_error="broken")
    (tmp_path / "empty").mkdir()  # a model directory without versions
    engine = registry(tmp_path, strict_readiness=False)
    await engine.load_all()
    try:
        assert engine.unready_reason() == (
            "model 'bad' version 1 is UNAVAILABLE: load failed: broken, "
            "model 'empty' version 0 is UNAVAILABLE: no version directories (positive integers) found"
        )
    finally:
        await engine.close(5)
