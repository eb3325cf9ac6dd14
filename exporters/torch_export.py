"""PyTorch -> ONNX: trace the nn.Module with torch.export, convert with torch.onnx (or TorchScript on request)."""

from __future__ import annotations

import inspect
import pickle
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters import ExportError, quiet_converter, step
from exporters.spec import BATCH, IDENTIFIER, SHARED_DIM_HINT, InputSpec, load_callable, random_inputs, trace_sizes
from exporters.torch_explain import explain, first_line
from service.runtimes import ARTIFACT_NAMES

# A protobuf file tops out at 2 GiB; heavier weights go into a model.onnx.data file beside it.
EXTERNAL_DATA_BYTES = 1_800_000_000
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
        raise ExportError(f"weights file '{path.name}' is not a torch.save file ({first_line(exc)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps the state dict
    if not isinstance(state, dict):
        raise ExportError(f"weights file '{path.name}' holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ExportError(f"weights file '{path.name}' does not fit the model: {first_line(exc)}") from None


def call_style(model: Any, names: list[str]) -> str:
    """How forward takes the named inputs: 'keyword' (by name), 'dict' (one mapping) or 'positional' (in order)."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):  # a ScriptModule's methods have no Python signature
        return "positional"
    kinds = {p.kind for p in parameters}
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(names) > 1 and set(names) <= named:
        return "keyword"
    if inspect.Parameter.VAR_KEYWORD in kinds and not required:
        return "keyword"
    single = len(positional) == 1 and inspect.Parameter.VAR_POSITIONAL not in kinds
    if single and (len(names) > 1 or _is_mapping(positional[0].annotation)):
        return "dict"
    return "positional"


def _is_mapping(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return any(word in str(text) for word in ("dict", "Dict", "Mapping"))


class Adapter(torch.nn.Module):
    """Calls the model with its inputs as forward expects them and returns a flat tuple of tensors."""

    def __init__(self, model: torch.nn.Module, names: list[str], style: str) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.style = style

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One tensor per declared input, in declared order."""
        return tuple(flatten(self.call(tensors)))

    def call(self, tensors: Sequence[torch.Tensor]) -> Any:
        """The model's own result, in its own structure."""
        if self.style == "keyword":
            return self.model(**dict(zip(self.names, tensors, strict=True)))
        if self.style == "dict":
            return self.model(dict(zip(self.names, tensors, strict=True)))
        return self.model(*tensors)


class TorchSource:
    """An nn.Module with named inputs and outputs, exported to ONNX."""

    framework = "torch"
    fmt = "onnx"

    def __init__(self, model: torch.nn.Module, inputs: list[InputSpec], outputs: list[str], **options: Any) -> None:
        self.model = model.eval()
        self.inputs = inputs
        self.legacy: bool = options.get("legacy", False)
        self.exporter = "torch.onnx.export (TorchScript, legacy)" if self.legacy else "torch.onnx.export (dynamo)"
        names = [spec.name for spec in inputs]
        self.adapter = Adapter(self.model, names, call_style(self.model, names)).eval()
        sizes = trace_sizes(inputs, options.get("dim_sizes", {}))
        arrays = random_inputs(inputs, sizes, np.random.default_rng(0))
        self.example = tuple(torch.from_numpy(arrays[spec.name]) for spec in inputs)
        try:
            result = self._call(self.example)
        except ExportError as exc:
            if len(sizes) > 2:  # several dynamic dims traced at different sizes: perhaps one shared dim
                raise ExportError(f"{exc}; {SHARED_DIM_HINT}") from exc
            raise
        self.output_names = output_names(result, outputs)

    def predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the eager model on numpy inputs."""
        # torch.from_numpy shares memory and warns on read-only arrays: hand it a writable C-ordered one
        tensors = tuple(torch.from_numpy(np.require(arrays[s.name], requirements=["C", "W"])) for s in self.inputs)
        results = flatten(self._call(tensors))
        return {name: t.detach().cpu().numpy() for name, t in zip(self.output_names, results, strict=True)}

    def _call(self, tensors: tuple[torch.Tensor, ...]) -> Any:
        try:
            with torch.inference_mode():
                return self.adapter.call(tensors)
        except Exception as exc:
            shapes = ", ".join(f"{s.name}{list(t.shape)}" for s, t in zip(self.inputs, tensors, strict=True))
            raise ExportError(f"the model failed on inputs {shapes}: {type(exc).__name__}: {first_line(exc)}") from exc

    def export(self, directory: Path) -> Path:
        """Export to `directory/model.onnx`; failures name the op, the module and the dim at fault."""
        path = directory / ARTIFACT_NAMES["onnx"]
        program = None
        try:
            if self.legacy:
                with step(f"exporting with {self.exporter}"):
                    self._export_legacy(path)
            else:
                with step("tracing with torch.export"), quiet_converter("torch.export", "torch._dynamo"):
                    program = torch.export.export(self.adapter, self.example, dynamic_shapes=self.dynamic_shapes())
                with step(f"converting with {self.exporter}"):
                    self._convert(program, path)
        except ExportError:
            raise
        except Exception as exc:
            raise explain(exc, self, program) from exc
        return path

    def dynamic_shapes(self) -> tuple[tuple[dict[int, Any], ...]]:
        """torch.export's dynamic_shapes for the adapter's *tensors: every declared dynamic dim, per input."""
        dim = torch.export.Dim.DYNAMIC  # unlike AUTO, DYNAMIC fails loudly when tracing fixes a dim
        return (tuple({i: dim for i, d in enumerate(spec.dims) if isinstance(d, str)} for spec in self.inputs),)

    def _convert(self, program: Any, path: Path) -> None:
        with quiet_converter("torch.onnx"):
            onnx_program = torch.onnx.export(
                program,
                self.example,
                dynamo=True,
                input_names=[spec.name for spec in self.inputs],
                output_names=self.output_names,
                verbose=False,
            )
            if onnx_program is None:
                raise ExportError(f"{self.exporter} returned no program")
            weight_bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            onnx_program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_BYTES)

    def _export_legacy(self, path: Path) -> None:
        axes = {spec.name: {i: d for i, d in enumerate(spec.dims) if isinstance(d, str)} for spec in self.inputs}
        axes.update({name: {0: BATCH} for name in self.output_names})
        # A ScriptModule is exported as it is; a Python module through the adapter that flattens its I/O.
        module = self.model if isinstance(self.model, torch.jit.ScriptModule) else self.adapter
        with quiet_converter("torch.onnx"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore", UserWarning)  # the converter's notes (e.g. on ScriptModule signatures)
            warnings.simplefilter("always", _TRACER_WARNING)
            torch.onnx.export(
                module,
                self.example,
                str(path),
                dynamo=False,
                input_names=[spec.name for spec in self.inputs],
                output_names=self.output_names,
                dynamic_axes=axes,
            )
        for warning in caught:  # tracing problems that may have fixed a shape: show them, once each
            if issubclass(warning.category, _TRACER_WARNING):
                print(f"warning: {first_line(warning.message)}", file=sys.stderr)


def output_names(result: Any, given: list[str]) -> list[str]:
    """--output names, else a dict's keys or a named tuple's fields, else output_0, output_1, ..."""
    tensors = flatten(result)
    if given:
        if len(given) != len(tensors):
            raise ExportError(f"the model returns {len(tensors)} output(s) but {len(given)} --output names were given")
        return given
    keys = list(result) if isinstance(result, Mapping) else list(getattr(result, "_fields", []))
    if keys and all(IDENTIFIER.fullmatch(str(k)) for k in keys):
        return [str(k) for k in keys]
    return [f"output_{i}" for i in range(len(tensors))]


def flatten(result: Any) -> list[torch.Tensor]:
    """The tensors of a result: one tensor, a tuple or named tuple, or a dict of tensors."""
    if isinstance(result, torch.Tensor):
        return [result]
    values = list(result.values()) if isinstance(result, Mapping) else result
    if isinstance(values, Sequence) and values and all(isinstance(v, torch.Tensor) for v in values):
        return list(values)
    raise ExportError(
        f"the model returns {type(result).__name__}; return a tensor, a tuple, a named tuple or a dict of tensors"
    )
