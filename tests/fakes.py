"""Test doubles standing in for a model, in one place.

- `ScriptedRuntime`: a bare batch function for the DynamicBatcher tests; runs a given function on each batch,
  records every call and can be held running until released.
- `JsonArtifactRuntime` (built by `JsonArtifactLoader` from a model written by `write_json_model`): a whole
  runtime for the registry and app tests, whose behaviour (delay, failures) is read from its artifact's JSON.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

from service.runtimes import RuntimeOptions, TensorSpec

Arrays = dict[str, npt.NDArray[Any]]


# ----- a scripted batch function for the batcher ----------------------------------------------------------


def double(inputs: Arrays) -> Arrays:
    """y = 2 * x: the default script."""
    return {"y": inputs["x"] * 2}


class ScriptedRuntime:
    """Runs `fn` on every batch and records it; hold() keeps calls running until release(), like a slow model."""

    def __init__(self, fn: Callable[[Arrays], Arrays] = double) -> None:
        self.fn = fn
        self.calls: list[Arrays] = []
        self._released = threading.Event()
        self._released.set()
        self._loop = asyncio.get_running_loop()
        self._called = asyncio.Event()

    def hold(self) -> None:
        """Keep every call from now on running until release()."""
        self._released.clear()

    def release(self) -> None:
        """Let held calls, and every later one, finish."""
        self._released.set()

    def __call__(self, inputs: Arrays) -> Arrays:
        self.calls.append(inputs)
        self._loop.call_soon_threadsafe(self._called.set)
        if not self._released.wait(timeout=5):
            raise TimeoutError("test never released the runtime")
        return self.fn(inputs)

    async def wait_calls(self, n: int) -> None:
        """Wait until n runtime calls have started."""
        with anyio.fail_after(2):
            while len(self.calls) < n:
                self._called.clear()
                if len(self.calls) < n:
                    await self._called.wait()

    @property
    def rows(self) -> list[int]:
        """The row count of each call, in order."""
        return [len(call["x"]) for call in self.calls]

    def values(self) -> list[list[float]]:
        """The first column of each call's x, in order."""
        return [call["x"][:, 0].tolist() for call in self.calls]


# ----- a runtime whose behaviour is its artifact's JSON ----------------------------------------------


def write_json_model(
    repo: Path, name: str, version: int, config: dict[str, Any] | None = None, **behaviour: Any
) -> Path:
    """A model directory whose model.onnx holds JsonArtifactRuntime's behaviour as JSON (not a real ONNX file)."""
    model_dir = repo / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_text(json.dumps(behaviour))
    if config is not None:
        (model_dir / "model.json").write_text(json.dumps(config))
    return version_dir


class JsonArtifactRuntime:
    """Stands in for a model: y = 2 * x (FP32 [-1, 4]) and `version` (INT64 [-1]) naming the version that ran.

    Behaviour comes from the artifact's JSON: `delay_s` per call, `fail_predict` (every call raises, so warm-up
    fails), `fail_value` (a call whose x holds that value raises, like a model bug), `load_error` (the loader
    raises).
    """

    format = "onnx"
    device = "cpu"
    degraded = False
    signature_name = "serving_default"

    def __init__(
        self,
        name: str,
        version: int,
        delay_s: float = 0.0,
        fail_predict: bool = False,
        fail_value: float | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.delay_s = delay_s
        self.fail_predict = fail_predict
        self.fail_value = fail_value
        self.inputs = [TensorSpec("x", "FP32", (-1, 4))]
        self.outputs = [TensorSpec("y", "FP32", (-1, 4)), TensorSpec("version", "INT64", (-1,))]
        self.batch_rows: list[int] = []
        self.running = 0
        self.closed = False
        self.closed_while_running = False
        self._lock = threading.Lock()

    def predict(self, inputs: Arrays) -> Arrays:
        """y = 2 * x and the version, after the delay; raises as the artifact's JSON says."""
        if self.closed:
            raise RuntimeError("predict after close")
        if self.fail_predict:
            raise RuntimeError("model is broken")
        with self._lock:
            self.running += 1
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            x = inputs["x"]
            self.batch_rows.append(int(x.shape[0]))
            if self.fail_value is not None and (x == self.fail_value).any():
                raise ValueError(f"/secret/path/model.py: cannot handle {self.fail_value}")
            return {"y": x * 2, "version": np.full(x.shape[0], self.version, dtype=np.int64)}
        finally:
            with self._lock:
                self.running -= 1

    def close(self) -> None:
        """Refuse later calls; remember whether a call was still running."""
        self.closed_while_running = self.running > 0
        self.closed = True


class JsonArtifactLoader:
    """A RuntimeLoader that builds JsonArtifactRuntimes from the artifact's JSON and remembers each one."""

    def __init__(self) -> None:
        self.runtimes: list[JsonArtifactRuntime] = []
        self.options: list[RuntimeOptions] = []

    def __call__(self, fmt: str, artifact: Path, options: RuntimeOptions) -> JsonArtifactRuntime:
        behaviour = json.loads(artifact.read_text() or "{}")
        self.options.append(options)
        if behaviour.get("load_error"):
            from service.errors import ModelLoadError

            raise ModelLoadError(behaviour["load_error"])
        runtime = JsonArtifactRuntime(
            artifact.parent.parent.name,
            int(artifact.parent.name),
            delay_s=float(behaviour.get("delay_s", 0.0)),
            fail_predict=bool(behaviour.get("fail_predict", False)),
            fail_value=behaviour.get("fail_value"),
        )
        self.runtimes.append(runtime)
        return runtime

    def of(self, name: str, version: int) -> JsonArtifactRuntime:
        """The most recent runtime loaded for that model version."""
        return [r for r in self.runtimes if (r.name, r.version) == (name, version)][-1]
