"""PyTorch -> ONNX: build the nn.Module, export it with torch.onnx (dynamo, or TorchScript on request)."""

from __future__ import annotations

import inspect
import pickle
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters import ExportError, quiet_converter
from exporters.spec import BATCH, IDENTIFIER, SHARED_DIM_HINT, InputSpec, load_callable, random_inputs, trace_sizes
from service.runtimes import ARTIFACT_NAMES

# A protobuf file tops out at 2 GiB; heavier weights go into a model.onnx.data file beside it.
EXTERNAL_DATA_BYTES = 1_800_000_000
_MISSING_OP = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>")
_LEGACY_OP = re.compile(r"Exporting the operator '([^']+)'")
_STATIC_DIM = re.compile(r"inferred a static shape of (\d+) for dimension inputs\['(\w+)'\]\.shape\[(\d+)\]")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TRACER_WARNING: type[Warning] = torch.jit.TracerWarning  # type: ignore[attr-defined]


def load_torch_model(reference: str, weights: Path | None) -> torch.nn.Module:
    """Build the model from `module:callable` and load a state dict without unpickling code."""
    factory = load_callable(reference)
    try:
        model = factory()
    except Exception as exc:
        raise ExportError(f"--model '{reference}' raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"--model '{reference}' returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a state dict with weights_only=True: tensors and plain containers, never arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"weights file '{path}' does not exist") from None
    except pickle.UnpicklingError:
        raise ExportError(
            f"weights file '{path.name}' holds more than tensors; refusing to unpickle it (save model.state_dict())"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ExportError(f"weights file '{path.name}' is not a torch.save file ({_first_line(exc)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps the state dict
    if not isinstance(state, dict):
        raise ExportError(f"weights file '{path.name}' holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ExportError(f"weights file '{path.name}' does not fit the model: {_first_line(exc)}") from None


class TorchSource:
    """An nn.Module with named inputs and outputs, exported to ONNX."""

    framework = "torch"
    fmt = "onnx"

    def __init__(self, model: torch.nn.Module, inputs: list[InputSpec], outputs: list[str], **options: Any) -> None:
        self.model = model.eval()
        self.inputs = inputs
        self.legacy: bool = options.get("legacy", False)
        self.exporter = "torch.onnx.export (TorchScript, legacy)" if self.legacy else "torch.onnx.export (dynamo)"
        sizes = trace_sizes(inputs, options.get("dim_sizes", {}))
        arrays = random_inputs(inputs, sizes, np.random.default_rng(0))
        self._example = tuple(torch.from_numpy(arrays[spec.name]) for spec in inputs)
        try:
            result = self._call(self._example)
        except ExportError as exc:
            if len(sizes) > 2:  # several dynamic dims traced at different sizes: perhaps one shared dim
                raise ExportError(f"{exc}; {SHARED_DIM_HINT}") from exc
            raise
        self.output_names = _output_names(result, outputs)

    def predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the eager model on numpy inputs."""
        # torch.from_numpy shares memory and warns on read-only arrays: hand it a writable C-ordered one
        tensors = tuple(torch.from_numpy(np.require(arrays[s.name], requirements=["C", "W"])) for s in self.inputs)
        results = _flatten(self._call(tensors))
        return {name: t.detach().cpu().numpy() for name, t in zip(self.output_names, results, strict=True)}

    def _call(self, tensors: tuple[torch.Tensor, ...]) -> Any:
        try:
            with torch.inference_mode():
                return self.model(*tensors)
        except Exception as exc:
            shapes = ", ".join(f"{s.name}{list(t.shape)}" for s, t in zip(self.inputs, tensors, strict=True))
            raise ExportError(f"the model failed on inputs {shapes}: {type(exc).__name__}: {_first_line(exc)}") from exc

    def export(self, directory: Path) -> Path:
        """Export to `directory/model.onnx`; failures name the op or the dim at fault."""
        path = directory / ARTIFACT_NAMES["onnx"]
        try:
            if self.legacy:
                self._export_legacy(path)
            else:
                self._export_dynamo(path)
        except ExportError:
            raise
        except Exception as exc:
            raise self._explain(exc) from exc
        return path

    def _export_dynamo(self, path: Path) -> None:
        dim = torch.export.Dim.DYNAMIC  # unlike AUTO, DYNAMIC fails loudly when tracing fixes a dim
        dynamic = tuple({i: dim for i, d in enumerate(spec.dims) if isinstance(d, str)} for spec in self.inputs)
        with quiet_converter("torch.onnx"):
            program = torch.onnx.export(
                self.model,
                self._example,
                dynamo=True,
                input_names=[spec.name for spec in self.inputs],
                output_names=self.output_names,
                dynamic_shapes=dynamic,
                verbose=False,
            )
            if program is None:
                raise ExportError(f"{self.exporter} returned no program")
            weight_bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_BYTES)

    def _export_legacy(self, path: Path) -> None:
        axes = {spec.name: {i: d for i, d in enumerate(spec.dims) if isinstance(d, str)} for spec in self.inputs}
        axes.update({name: {0: BATCH} for name in self.output_names})
        with quiet_converter("torch.onnx"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", _TRACER_WARNING)
            torch.onnx.export(
                self.model,
                self._example,
                str(path),
                dynamo=False,
                input_names=[spec.name for spec in self.inputs],
                output_names=self.output_names,
                dynamic_axes=axes,
            )
        for warning in caught:  # tracing problems that may have fixed a shape: show them, once each
            if issubclass(warning.category, _TRACER_WARNING):
                print(f"warning: {_first_line(warning.message)}", file=sys.stderr)

    def _explain(self, exc: BaseException) -> ExportError:
        text = _ANSI.sub("", "\n".join(str(e) for e in _chain(exc)))
        if match := _MISSING_OP.search(text) or _LEGACY_OP.search(text):
            op = ".".join(g for g in match.groups() if g)
            other = "the dynamo exporter" if self.legacy else "a custom_translation_table, or --legacy-exporter"
            return ExportError(
                f"the ONNX exporter cannot translate op '{op}'; rewrite that part of the model, or try {other}"
            )
        if match := _STATIC_DIM.search(text):
            size, argument, index = match.groups()
            return ExportError(self._fixed_dim_message(argument, int(index), int(size)))
        return ExportError(f"{self.exporter} failed: {_summary(text)}")

    def _fixed_dim_message(self, argument: str, index: int, size: int) -> str:
        parameters = list(inspect.signature(self.model.forward).parameters)
        position = parameters.index(argument) if argument in parameters else -1
        name = self.inputs[position].name if 0 <= position < len(self.inputs) else argument
        what = "the batch dim (dim 0)" if index == 0 else f"dim {index}"
        return (
            f"{what} of input '{name}' became fixed ({size}) in the export: the model's code ties it to the traced "
            "size; keep dynamic_shapes satisfiable by avoiding x.shape[0]-dependent Python (loops over rows, "
            "reshapes to fixed sizes)"
        )


def _output_names(result: Any, given: list[str]) -> list[str]:
    tensors = _flatten(result)
    if given:
        if len(given) != len(tensors):
            raise ExportError(f"the model returns {len(tensors)} output(s) but {len(given)} --output names were given")
        return given
    if isinstance(result, Mapping) and all(IDENTIFIER.fullmatch(str(k)) for k in result):
        return [str(k) for k in result]
    return [f"output_{i}" for i in range(len(tensors))]


def _flatten(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    values = list(result.values()) if isinstance(result, Mapping) else result
    if isinstance(values, Sequence) and values and all(isinstance(v, torch.Tensor) for v in values):
        return list(values)
    raise ExportError(f"the model returns {type(result).__name__}; return a tensor, a tuple or a dict of tensors")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _summary(text: str) -> str:
    """The one line that says what went wrong: torch's exception summary when it has one."""
    _, _, tail = text.partition("## Exception summary")
    lines = [line.strip() for line in (tail or text).splitlines() if line.strip()]
    line = re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>:", r"\1:", lines[0] if lines else "unknown error")
    return line[:300]


def _first_line(exc: object) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
