"""An ONNX file that is already the artifact: verified against itself run unoptimised, then copied as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporters import ExportError
from exporters.mar import copy_file
from exporters.spec import BATCH, IDENTIFIER, InputSpec, parse_dims
from service.runtimes import ARTIFACT_NAMES
from service.tensors import datatype_of


class OnnxFileSource:
    """The reference is ONNX Runtime on CPU with graph optimisations off; the artifact is the file, served as is."""

    framework = "onnx"
    fmt = "onnx"
    exporter = "the archive's ONNX file"

    def __init__(self, path: Path, given: list[InputSpec], outputs: list[str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(
                f"the archive's ONNX model does not load in ONNX Runtime ({type(exc).__name__})"
            ) from None
        self.path = path
        declared = _declared_inputs(path, {node.name for node in self._session.get_inputs()})
        self.inputs = _merge(declared, given)
        self.output_names = [node.name for node in self._session.get_outputs()]
        if outputs and outputs != self.output_names:
            raise ExportError(
                f"the archive's ONNX model names its outputs {self.output_names}; --output cannot rename them"
            )

    def predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the unoptimised reference session."""
        results = self._session.run(self.output_names, {spec.name: arrays[spec.name] for spec in self.inputs})
        return dict(zip(self.output_names, (np.asarray(r) for r in results), strict=True))

    def export(self, directory: Path) -> Path:
        """The artifact is the file itself."""
        return copy_file(self.path, directory / ARTIFACT_NAMES["onnx"])


def _declared_inputs(path: Path, names: set[str]) -> list[InputSpec]:
    import onnx

    graph = onnx.load_model(str(path), load_external_data=False).graph
    return [_input_spec(value) for value in graph.input if value.name in names]


def _input_spec(value: Any) -> InputSpec:
    import onnx

    where = f"the archive's ONNX input '{value.name}'"
    tensor = value.type.tensor_type
    try:
        datatype = datatype_of(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, TypeError, ValueError):
        datatype = "BYTES"
    if datatype == "BYTES" or not IDENTIFIER.fullmatch(value.name):
        raise ExportError(f"{where} cannot be verified here; only numeric inputs with identifier names")
    shape: list[Any] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
    if not shape or isinstance(shape[0], int):
        raise ExportError(f"{where} has a fixed batch dim ({shape}); re-export the model with a dynamic dim 0")
    dims: list[int | str] = [BATCH]
    for dim in shape[1:]:
        dims.append(dim if isinstance(dim, int) and dim > 0 else _dim_name(dim))
    return InputSpec(value.name, datatype, parse_dims(value.name, dims, where))


def _dim_name(dim: Any) -> int | str:
    return dim if isinstance(dim, str) and IDENTIFIER.fullmatch(dim) and dim != BATCH else -1


def _merge(declared: list[InputSpec], given: list[InputSpec]) -> list[InputSpec]:
    """--input may give value ranges; names and dtypes stay the model's."""
    if not given:
        return declared
    by_name = {spec.name: spec for spec in given}
    unknown = sorted(set(by_name) - {spec.name for spec in declared})
    if unknown:
        raise ExportError(f"--input {unknown[0]}: the archive's ONNX model has inputs {[s.name for s in declared]}")
    merged = []
    for spec in declared:
        extra = by_name.get(spec.name)
        merged.append(InputSpec(spec.name, spec.datatype, spec.dims, extra.low, extra.high) if extra else spec)
    return merged
