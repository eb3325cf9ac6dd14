"""Tiny real ONNX models for the API tests, built with onnx.helper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _save(graph: Any, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def mlp(path: Path, version: int) -> None:
    """x FP32 [-1, 4] -> y FP32 [-1, 2] with y = [v * sum(x), -v * sum(x)] for version v."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.stack([np.full(4, version), np.full(4, -version)], axis=1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    _save(graph, path)


def pair(path: Path) -> None:
    """a FP32 [-1, 3], b INT64 [-1, 2] -> s = 2a FP32 [-1, 3], t = b + 1 INT64 [-1, 2]."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "two"], ["s"]), helper.make_node("Add", ["b", "one"], ["t"])],
        "pair",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("t", TensorProto.INT64, ["batch", 2]),
        ],
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.INT64, [], [1]),
        ],
    )
    _save(graph, path)


def echo(path: Path) -> None:
    """s STRING [-1] -> text and key_bytes, both the input unchanged."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["text"]), helper.make_node("Identity", ["s"], ["key_bytes"])],
        "echo",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch"])],
        [
            helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info("key_bytes", TensorProto.STRING, ["batch"]),
        ],
    )
    _save(graph, path)


def fixed(path: Path) -> None:
    """x FP32 [3] (no batch dim) -> y FP32 [1] = sum(x)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")],
    )
    _save(graph, path)


def write_repository(root: Path) -> Path:
    """mlp (versions 1 and 2, labels), pair, echo, fixed, a broken artifact and a bad model.json."""
    for version in (1, 2):
        mlp(root / "mlp" / str(version) / "model.onnx", version)
    config = {"version_policy": "all", "version_labels": {"stable": 1, "canary": 2}}
    (root / "mlp" / "model.json").write_text(json.dumps(config))
    pair(root / "pair" / "1" / "model.onnx")
    echo(root / "echo" / "1" / "model.onnx")
    fixed(root / "fixed" / "1" / "model.onnx")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    mlp(root / "badconfig" / "1" / "model.onnx", 1)
    (root / "badconfig" / "model.json").write_text(json.dumps({"bogus": 1}))
    return root
