"""Shared test doubles: tiny ONNX models built on the fly, and a fake runtime standing in for a model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from service.runtimes import RuntimeOptions, TensorSpec

Arrays = dict[str, npt.NDArray[Any]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ----- tiny real ONNX models ----------------------------------------------------------------------


def onnx_doubler(path: Path, width: int = 4) -> Path:
    """ONNX model y = 2 * x with x FP32 [batch, width]: the smallest model that batches."""
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "doubler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[two],
    )
    return save_onnx(graph, path)


def onnx_slow_doubler(path: Path, width: int = 4, work: int = 768) -> Path:
    """y = 2 * x plus a fixed few milliseconds of input-dependent matrix work per call, so batches queue up."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Expand", ["total", "square"], ["big"]),
        helper.make_node("MatMul", ["big", "weights"], ["product"]),
        helper.make_node("ReduceSum", ["product"], ["noise"], keepdims=0),
        helper.make_node("Mul", ["noise", "zero"], ["nothing"]),
        helper.make_node("Mul", ["x", "two"], ["doubled"]),
        helper.make_node("Add", ["doubled", "nothing"], ["y"]),
    ]
    initializers = [
        helper.make_tensor("square", TensorProto.INT64, [2], [work, work]),
        helper.make_tensor("weights", TensorProto.FLOAT, [work, work], [0.0] * (work * work)),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_doubler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=initializers,
    )
    return save_onnx(graph, path)


def onnx_identity(path: Path, elem_types: Mapping[str, int], dims: list[int | str]) -> Path:
    """ONNX model passing each input `name` through to output `name_out`, one per element type."""
    from onnx import helper

    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name in elem_types]
    graph = helper.make_graph(
        nodes,
        "identity",
        [helper.make_tensor_value_info(name, t, dims) for name, t in elem_types.items()],
        [helper.make_tensor_value_info(f"{name}_out", t, dims) for name, t in elem_types.items()],
    )
    return save_onnx(graph, path)


def save_onnx(graph: Any, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# ----- the fake runtime -----------------------------------------------------------------------------


def write_fake_model(
    repo: Path, name: str, version: int, config: dict[str, Any] | None = None, **behaviour: Any
) -> Path:
    """A model directory whose model.onnx holds the fake runtime's behaviour as JSON (not a real ONNX file)."""
    model_dir = repo / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_text(json.dumps(behaviour))
    if config is not None:
        (model_dir / "model.json").write_text(json.dumps(config))
    return version_dir


class FakeRuntime:
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
        self.closed_while_running = self.running > 0
        self.closed = True


class FakeLoader:
    """A RuntimeLoader that builds FakeRuntimes from the artifact's JSON and remembers each one."""

    def __init__(self) -> None:
        self.runtimes: list[FakeRuntime] = []
        self.options: list[RuntimeOptions] = []

    def __call__(self, fmt: str, artifact: Path, options: RuntimeOptions) -> FakeRuntime:
        behaviour = json.loads(artifact.read_text() or "{}")
        self.options.append(options)
        if behaviour.get("load_error"):
            from service.errors import ModelLoadError

            raise ModelLoadError(behaviour["load_error"])
        runtime = FakeRuntime(
            artifact.parent.parent.name,
            int(artifact.parent.name),
            delay_s=float(behaviour.get("delay_s", 0.0)),
            fail_predict=bool(behaviour.get("fail_predict", False)),
            fail_value=behaviour.get("fail_value"),
        )
        self.runtimes.append(runtime)
        return runtime

    def of(self, name: str, version: int) -> FakeRuntime:
        """The most recent runtime loaded for that model version."""
        return [r for r in self.runtimes if (r.name, r.version) == (name, version)][-1]
