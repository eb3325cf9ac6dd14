"""Keras -> SavedModel (ExportArchive) or ONNX (tf2onnx), keeping the user's input and output names."""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporters import ExportError, quiet_converter, step
from exporters.spec import IDENTIFIER, InputSpec, load_callable, parse_datatype, parse_dims, random_inputs, trace_sizes
from service.runtimes import ARTIFACT_NAMES, RuntimeOptions

SIGNATURE = "serving_default"
_UNSUPPORTED = re.compile(r"[Uu]nsupported ops?:? .*?'(\w+)'")
_AUTO_NAME = re.compile(r"keras_tensor(_\d+)?")  # what Keras calls an unnamed keras.Input


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


def model_inputs(model: Any) -> tuple[list[InputSpec], list[str] | None]:
    """The input specs of a built model (None dims dynamic, the batch always) and, for a dict input, its keys.

    Functional and Sequential models declare their inputs; a subclassed model has the shapes of the call that
    built it (Keras records them), with the model's input dtype.
    """
    tensors = _declared_inputs(model)
    if tensors:
        named = [(_input_name(t.name, i, len(tensors)), list(t.shape), str(t.dtype)) for i, t in enumerate(tensors)]
        return [_spec(*entry) for entry in named], None
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if not getattr(model, "built", False) or len(shapes) != 1:
        raise ExportError(_unbuilt_message(model))
    built = next(iter(shapes.values()))
    dtype = str(getattr(model, "input_dtype", None) or "float32")
    if isinstance(built, Mapping):
        return [_spec(str(key), list(shape), dtype) for key, shape in built.items()], [str(k) for k in built]
    if _is_shape(built):
        return [_spec(_call_parameters(model)[0] if _call_parameters(model) else "input", list(built), dtype)], None
    return [_spec(f"input_{i}", list(shape), dtype) for i, shape in enumerate(built)], None


def _declared_inputs(model: Any) -> list[Any]:
    """A functional or Sequential model's input tensors; [] for a subclassed or an unbuilt model."""
    import keras

    if not isinstance(model, keras.Sequential) and not hasattr(model, "_inputs_struct"):
        return []  # subclassed: Keras keeps no input tensors
    try:
        return list(model.inputs or [])
    except (AttributeError, ValueError):  # a Sequential never built
        return []


def _is_shape(value: Any) -> bool:
    return isinstance(value, Sequence) and all(d is None or isinstance(d, int) for d in value)


def _input_name(name: str, index: int, count: int) -> str:
    name = name.split(":")[0]
    if _AUTO_NAME.fullmatch(name):
        return "input" if count == 1 else f"input_{index}"
    return name


def _spec(name: str, shape: list[Any], dtype: str) -> InputSpec:
    where = f"Keras input '{name}'"
    if not IDENTIFIER.fullmatch(name):
        raise ExportError(f"{where}: name is not an identifier; rename it with --input")
    dims: list[int | str] = [-1, *(-1 if d is None else int(d) for d in shape[1:])]  # the batch is always dynamic
    return InputSpec(name, parse_datatype(dtype, where), parse_dims(name, dims, where))


def _call_parameters(model: Any) -> list[str]:
    try:
        parameters = inspect.signature(model.call).parameters.values()
    except (TypeError, ValueError):
        return []
    skip = {"training", "mask"}
    return [p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD and p.name not in skip]


def _unbuilt_message(model: Any) -> str:
    if getattr(model, "built", False) and len(getattr(model, "_build_shapes_dict", None) or {}) > 1:
        return (
            f"the Keras model ({type(model).__name__}) takes several call() arguments "
            f"({', '.join(_call_parameters(model))}); the exporter passes one: take a dict or a list in call()"
        )
    names = _call_parameters(model)[:1] or ["x"]
    example = " ".join(f"--input {n}:float32:-1,<dims>" for n in names)
    return (
        f"the Keras model ({type(model).__name__}) has never been called on data, so its input shapes are unknown: "
        f"call it once on a batch before saving or returning it (model(x)), or describe its inputs: {example}"
    )


def declared_outputs(model: Any) -> list[str]:
    """Keras' own output names: a functional model's output_names, a Sequential's last layer; [] otherwise."""
    import keras

    names = [str(n) for n in getattr(model, "output_names", None) or []]
    if not names and isinstance(model, keras.Sequential) and model.layers:
        names = [model.layers[-1].name]
    return names


class KerasSource:
    """A Keras model called with its inputs in declared order, outputs keyed by the exported names."""

    framework = "keras"

    def __init__(self, model: Any, inputs: list[InputSpec], outputs: list[str], fmt: str = "savedmodel") -> None:
        if fmt not in ARTIFACT_NAMES:
            raise ExportError(f"unknown format '{fmt}'; expected one of {sorted(ARTIFACT_NAMES)}")
        self.model = model
        self.fmt = fmt
        self.exporter = "keras ExportArchive" if fmt == "savedmodel" else "tf2onnx"
        declared, self._input_keys = model_inputs(model) if not inputs else (inputs, None)
        self.inputs = inputs or declared
        if self._input_keys is not None and len(self._input_keys) != len(self.inputs):
            raise ExportError(f"the model takes {len(self._input_keys)} input(s), {len(self.inputs)} --input given")
        result = self._call(random_inputs(self.inputs, trace_sizes(self.inputs, {}), np.random.default_rng(0)))
        self._keys = [str(k) for k in result] if isinstance(result, Mapping) else None
        count = len(self._keys) if self._keys is not None else len(_as_list(result))
        self.output_names = self._output_names(outputs, count)

    def _output_names(self, given: list[str], count: int) -> list[str]:
        if given:
            if len(given) != count:
                raise ExportError(f"the model has {count} output(s) but {len(given)} --output name(s) were given")
            return given
        names = declared_outputs(self.model)
        if self._keys and sorted(self._keys) != sorted(names):
            names = self._keys
        if len(names) != count:
            names = [f"output_{i}" for i in range(count)]
            print(
                f"note: the model names no outputs; they are {', '.join(names)} (--output names them)", file=sys.stderr
            )
            return names
        bad = [n for n in names if not IDENTIFIER.fullmatch(n)]
        if bad:
            raise ExportError(f"output name '{bad[0]}' is not an identifier; name the outputs with --output")
        return names

    def predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the Keras model in inference mode."""
        return {name: np.asarray(value) for name, value in self._serve(*(arrays[s.name] for s in self.inputs)).items()}

    def _call(self, arrays: dict[str, np.ndarray]) -> Any:
        try:
            return self.model(self._pack([arrays[s.name] for s in self.inputs]), training=False)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"the model failed: {type(exc).__name__}: {_first_line(exc)}") from exc

    def _pack(self, tensors: list[Any]) -> Any:
        if self._input_keys is not None:
            return dict(zip(self._input_keys, tensors, strict=True))
        return tensors if len(tensors) > 1 else tensors[0]

    def _serve(self, *tensors: Any) -> dict[str, Any]:
        try:
            result = self.model(self._pack(list(tensors)), training=False)
        except Exception as exc:
            raise ExportError(f"the model failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        values = [result[k] for k in (self._keys or result)] if isinstance(result, Mapping) else _as_list(result)
        if len(values) != len(self.output_names):
            raise ExportError(f"the model returns {len(values)} output(s), expected {len(self.output_names)}")
        return dict(zip(self.output_names, values, strict=True))

    def export(self, directory: Path) -> Path:
        """Write a SavedModel whose serving_default signature uses the exported names, or an ONNX file."""
        import tensorflow as tf

        path = directory / ARTIFACT_NAMES[self.fmt]
        signature = [tf.TensorSpec(spec_shape(spec), tf.as_dtype(spec.dtype), name=spec.name) for spec in self.inputs]
        try:
            if self.fmt == "savedmodel":
                with step(f"exporting with {self.exporter}"), quiet_converter("tensorflow"):
                    self._export_savedmodel(path, signature)
            else:
                from exporters.keras_onnx import convert

                convert(self._serve, signature, path)
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


def _as_list(result: Any) -> list[Any]:
    return list(result) if isinstance(result, Sequence) else [result]


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
