"""Keras -> ONNX: freeze the serving function (variables and captured constants become graph constants), then tf2onnx.

tf2onnx's own `from_function` takes every placeholder of the concrete function as a model input, so the
constants a preprocessing layer captures (Normalization's mean and variance) would become extra ONNX inputs.
Freezing first and converting the GraphDef with the real inputs alone keeps them inside the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from exporters import ExportError, quiet_converter, step

LOOKUP_HINT = "StringLookup/IntegerLookup tables do not convert to ONNX; export to SavedModel (the default --format)"


def convert(serve: Callable[..., Any], signature: list[Any], path: Path) -> None:
    """Write the ONNX model of `serve` (a function returning a dict of named outputs) to `path`."""
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    with step("tracing with tf.function"), quiet_converter("tensorflow"):
        concrete = tf.function(serve, input_signature=signature).get_concrete_function()
        frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
    inputs = [t.name for t in frozen.inputs]
    if len(inputs) != len(signature) or any(t.dtype == tf.resource for t in frozen.inputs):
        raise ExportError(f"the model holds state that cannot be frozen into a graph; {LOOKUP_HINT}")
    outputs = [t.name for t in frozen.outputs]
    keys = sorted(concrete.structured_outputs)  # the order tf.nest flattens a dict in
    rename = {**dict(zip(inputs, [s.name for s in signature], strict=True)), **dict(zip(outputs, keys, strict=True))}
    with step("converting with tf2onnx"), quiet_converter("tf2onnx", "tensorflow"):
        model, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(add_shapes=True),
            input_names=inputs,
            output_names=outputs,
            tensors_to_rename=rename,
            custom_op_handlers={"Bucketize": (_bucketize, [])},
        )
    _check_ops(model)
    import onnx

    onnx.save(model, str(path))


def _check_ops(model: Any) -> None:
    """tf2onnx leaves an op it cannot convert in the graph as is: name it rather than fail to load later."""
    import onnx

    unknown = sorted({n.op_type for n in model.graph.node if not onnx.defs.has(n.op_type, n.domain or "")})
    if unknown:
        hint = LOOKUP_HINT if any("Lookup" in op or "HashTable" in op for op in unknown) else "rewrite that layer"
        raise ExportError(f"tf2onnx cannot convert TensorFlow op(s) {', '.join(repr(op) for op in unknown)}; {hint}")


def _bucketize(ctx: Any, node: Any, name: str, args: list[Any]) -> None:
    """TF Bucketize (Keras Discretization) as ONNX: the number of boundaries each value reaches, as int32."""
    from onnx import TensorProto
    from tf2onnx import utils

    boundaries = np.array(node.get_attr_value("boundaries"), dtype=np.float32)
    values = node.input[0]
    if ctx.get_dtype(values) != TensorProto.FLOAT:
        values = ctx.make_node("Cast", [values], attr={"to": TensorProto.FLOAT}).output[0]
    axes = ctx.make_const(utils.make_name(f"{name}_axes"), np.array([-1], dtype=np.int64)).output[0]
    bounds = ctx.make_const(utils.make_name(f"{name}_bounds"), boundaries).output[0]
    expanded = ctx.make_node("Unsqueeze", [values, axes]).output[0]
    reached = ctx.make_node("GreaterOrEqual", [expanded, bounds]).output[0]
    counts = ctx.make_node("Cast", [reached], attr={"to": TensorProto.INT32}).output[0]
    outputs, shapes, dtypes = node.output, [ctx.get_shape(node.output[0])], [TensorProto.INT32]
    ctx.remove_node(node.name)
    ctx.make_node("ReduceSum", [counts, axes], attr={"keepdims": 0}, outputs=outputs, shapes=shapes, dtypes=dtypes)
