"""Reduced precision for GPU serving: rewrite a verified-to-be FP32 ONNX graph in FP16 or BF16."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporters import ExportError, quiet_converter

PRECISIONS = ("fp32", "fp16", "bf16")
# Defaults sized to each format's rounding (fp16 keeps ~3 decimal digits, bf16 ~2) over a few layers.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-3),
    "fp16": (1e-2, 1e-2),
    "bf16": (5e-2, 5e-2),
}


def check_precision(precision: str, fmt: str, reduced_io: bool) -> None:
    """Refuse combinations that cannot be served: reduced precision is for ONNX, BF16 tensors never cross the wire."""
    if precision not in PRECISIONS:
        raise ExportError(f"--precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and fmt != "onnx":
        raise ExportError(f"--precision {precision} applies to ONNX exports; add --format onnx")
    if reduced_io and precision != "fp16":
        raise ExportError(
            "--reduced-io needs --precision fp16 (clients cannot send BF16; bf16 models keep FP32 inputs and outputs)"
        )


def reduce_precision(path: Path, precision: str, keep_io_types: bool) -> None:
    """Convert the float tensors of the ONNX file at `path` in place; FP32 stays at the boundary if asked."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with quiet_converter("onnxruntime.transformers"):
        model = onnx.load(str(path))
        blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | (_without_bf16(model) if precision == "bf16" else set()))
        try:
            converted = convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=blocked)
        except Exception as exc:
            raise ExportError(f"cannot convert the ONNX graph to {precision}: {type(exc).__name__}: {exc}") from exc
        if precision == "bf16":
            _to_bfloat16(converted.graph)
        external = converted.ByteSize() > 1_800_000_000
        onnx.save(converted, str(path), save_as_external_data=external, location=f"{path.name}.data")


def _without_bf16(model: Any) -> set[str]:
    """Ops of the graph whose ONNX schema, at the model's opset, takes no bfloat16: they stay FP32 between casts."""
    import onnx

    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    blocked = set()
    for op_type in {node.op_type for node in model.graph.node if (node.domain or "") == ""}:
        try:
            schema = onnx.defs.get_schema(op_type, opsets.get("", 1), "")
        except onnx.defs.SchemaError:
            continue
        float_constraints = [c for c in schema.type_constraints if "tensor(float)" in c.allowed_type_strs]
        if any("tensor(bfloat16)" not in c.allowed_type_strs for c in float_constraints):
            blocked.add(op_type)
    return blocked


def _to_bfloat16(graph: Any) -> None:
    """FP16 -> BF16 everywhere in a graph the FP16 converter produced: same structure, other 16-bit type."""
    from onnx import TensorProto

    half, brain = TensorProto.FLOAT16, TensorProto.BFLOAT16
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == half:
            graph.initializer[index].CopyFrom(_bf16_tensor(tensor))
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == half:
            value.type.tensor_type.elem_type = brain
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == half:
                attribute.i = brain
            elif attribute.HasField("t") and attribute.t.data_type == half:
                attribute.t.CopyFrom(_bf16_tensor(attribute.t))
            elif attribute.HasField("g"):
                _to_bfloat16(attribute.g)


def _bf16_tensor(tensor: Any) -> Any:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    values = numpy_helper.to_array(tensor).astype(np.float32)
    return helper.make_tensor(tensor.name, TensorProto.BFLOAT16, values.shape, values.flatten().tolist())
