"""Tiny real ONNX models built on the fly for the service tests (the fakes live in tests/fakes.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest


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
