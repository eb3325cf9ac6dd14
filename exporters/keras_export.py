"""Keras -> SavedModel (ExportArchive) or ONNX (tf2onnx), keeping the user's input and output names."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporters import ExportError, quiet_converter
from exporters.spec import IDENTIFIER, InputSpec, load_callable, parse_datatype, parse_dims
from service.runtimes import ARTIFACT_NAMES, RuntimeOptions

SIGNATURE = "serving_default"
_UNSUPPORTED = re.compile(r"[Uu]nsupported ops?:? .*?'(\w+)'")


def prepare_tensorflow() -> None:
    """Configure TensorFlow as the SavedModel runtime does (CPU, its thread counts) before Keras starts it.

    TensorFlow fixes thread pools and visible devices at first use. Configured here, verification runs
    with the server's settings; left to Keras, the runtime would keep Keras' settings and log a warning.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from service.runtimes import savedmodel

    savedmodel.configure_tensorflow(RuntimeOptions(device="cpu"))


def load_keras_model(reference: str) -> Any:
    """A `.keras` file (loaded with safe_mode=True: no Python lambdas) or a `module:callable` factory."""
    prepare_tensorflow()
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(f"Keras runs on the '{keras.backend.backend()}' backend; set KERAS_BACKEND=tensorflow")
    if reference.endswith(".keras"):
        try:
            model = keras.saving.load_model(reference, safe_mode=True)
        except (ValueError, OSError, TypeError) as exc:
            raise ExportError(f"cannot load '{reference}': {_first_line(exc)}") from None
    else:
        factory = load_callable(reference)
        try:
            model = factory()
        except Exception as exc:
            raise ExportError(f"--model '{reference}' raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, keras.Model):
        raise ExportError(f"--model '{reference}' gave {type(model).__name__}, not a keras.Model")
    return model


def model_inputs(model: Any) -> list[InputSpec]:
    """The input specs a built Keras model declares (None dims become dynamic)."""
    try:
        tensors = list(model.inputs)
    except (AttributeError, ValueError):
        raise ExportError("the Keras model declares no inputs (never built); describe them with --input") from None
    specs = []
    for tensor in tensors:
        name = tensor.name.split(":")[0]
        where = f"Keras input '{name}'"
        if not IDENTIFIER.fullmatch(name):
            raise ExportError(f"{where}: name is not an identifier; rename it with --input")
        dims: list[int | str] = [-1 if d is None else int(d) for d in tensor.shape]
        specs.append(InputSpec(name, parse_datatype(str(tensor.dtype), where), parse_dims(name, dims, where)))
    return specs


class KerasSource:
    """A Keras model called with its inputs in declared order, outputs keyed by the exported names."""

    framework = "keras"

    def __init__(self, model: Any, inputs: list[InputSpec], outputs: list[str], fmt: str = "savedmodel") -> None:
        if fmt not in ARTIFACT_NAMES:
            raise ExportError(f"unknown format '{fmt}'; expected one of {sorted(ARTIFACT_NAMES)}")
        self.model = model
        self.fmt = fmt
        self.exporter = "keras ExportArchive" if fmt == "savedmodel" else "tf2onnx"
        self.inputs = inputs or model_inputs(model)
        declared = [str(n) for n in getattr(model, "output_names", None) or []]
        self.output_names = outputs or declared
        if declared and len(self.output_names) != len(declared):
            raise ExportError(f"the model has {len(declared)} output(s) but {len(outputs)} --output name(s) were given")
        if not self.output_names:
            raise ExportError("the Keras model does not name its outputs; give them with --output")

    def predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the Keras model in inference mode."""
        try:
            result = self._serve(*(arrays[spec.name] for spec in self.inputs))
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"the model failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        return {name: np.asarray(value) for name, value in result.items()}

    def _serve(self, *tensors: Any) -> dict[str, Any]:
        result = self.model(list(tensors) if len(tensors) > 1 else tensors[0], training=False)
        if isinstance(result, Mapping):
            values = [result[k] for k in getattr(self.model, "output_names", None) or result]
        else:
            values = list(result) if isinstance(result, Sequence) else [result]
        if len(values) != len(self.output_names):
            raise ExportError(f"the model returns {len(values)} output(s), expected {len(self.output_names)}")
        return dict(zip(self.output_names, values, strict=True))

    def export(self, directory: Path) -> Path:
        """Write a SavedModel whose serving_default signature uses the exported names, or an ONNX file."""
        import tensorflow as tf

        path = directory / ARTIFACT_NAMES[self.fmt]
        signature = [tf.TensorSpec(spec_shape(spec), tf.as_dtype(spec.dtype), name=spec.name) for spec in self.inputs]
        try:
            with quiet_converter("tf2onnx"):
                if self.fmt == "savedmodel":
                    self._export_savedmodel(path, signature)
                else:
                    self._export_onnx(path, signature)
        except ExportError:
            raise
        except Exception as exc:
            raise _explain(self.exporter, exc) from exc
        return path

    def _export_savedmodel(self, path: Path, signature: list[Any]) -> None:
        import keras

        archive = keras.export.ExportArchive()
        archive.track(self.model)
        archive.add_endpoint(name=SIGNATURE, fn=self._serve, input_signature=signature)
        archive.write_out(str(path), verbose=False)

    def _export_onnx(self, path: Path, signature: list[Any]) -> None:
        import tensorflow as tf
        import tf2onnx

        function = tf.function(self._serve, input_signature=signature)
        tf2onnx.convert.from_function(function, input_signature=signature, output_path=str(path))


def spec_shape(spec: InputSpec) -> list[int | None]:
    """The TensorSpec shape of an input: None for every dynamic dim."""
    return [None if d == -1 else d for d in spec.shape]


def _explain(exporter: str, exc: BaseException) -> ExportError:
    text = str(exc)
    if match := _UNSUPPORTED.search(text):
        return ExportError(f"{exporter} cannot convert op '{match.group(1)}'; rewrite that part of the model")
    return ExportError(f"{exporter} failed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
