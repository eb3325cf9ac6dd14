"""What an export is about: input specs from the command line or a spec file, and the Source protocol."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from exporters import ExportError
from service.tensors import DATATYPE_TO_NUMPY, datatype_of

Arrays = dict[str, np.ndarray]
BATCH = "batch"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DIM_REFERENCE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[1-9][0-9]*)?")
TRACE_BATCH = 3  # >= 2, so that tracing never specialises the batch dim to 0 or 1
SHARED_DIM_HINT = "if inputs must share a dynamic dim, give it one name (e.g. ids:int64:-1,seq and mask:int64:-1,seq)"
FIRST_TRACE_DIM = 5  # other dynamic dims get 5, 6, 7... so that no two are confused while tracing


@dataclass(frozen=True)
class InputSpec:
    """One model input: dims are fixed ints or the name of a dynamic dim (dim 0 is always 'batch')."""

    name: str
    datatype: str
    dims: tuple[int | str, ...]
    low: float | None = None
    high: float | None = None

    @property
    def shape(self) -> list[int]:
        """The shape as model.json writes it: -1 for every dynamic dim."""
        return [d if isinstance(d, int) else -1 for d in self.dims]

    @property
    def dtype(self) -> np.dtype[Any]:
        """Numpy dtype of this input."""
        return np.dtype(DATATYPE_TO_NUMPY[self.datatype])


class Source(Protocol):
    """A framework model ready to export: its signature, how to run it, and how to export it."""

    framework: str
    fmt: str
    exporter: str
    inputs: list[InputSpec]
    output_names: list[str]

    def predict(self, arrays: Arrays) -> Arrays:
        """Run the framework model on numpy inputs; outputs keyed by the exported output names."""
        ...

    def export(self, directory: Path) -> Path:
        """Write the artifact into `directory` (an empty temp dir) and return its path."""
        ...


def parse_datatype(text: str, where: str) -> str:
    """V2 datatype for a numpy name (float32) or a V2 name (FP32); strings cannot be exported."""
    if text.upper() in DATATYPE_TO_NUMPY:
        datatype = text.upper()
    else:
        try:
            datatype = datatype_of(np.dtype(text))
        except (TypeError, KeyError):
            raise ExportError(f"{where}: unknown dtype '{text}'; use a numpy name like float32 or int64") from None
    if datatype == "BYTES":
        raise ExportError(f"{where}: string inputs cannot be exported; use a numeric dtype")
    return datatype


def parse_dims(name: str, dims: list[int | str], where: str) -> tuple[int | str, ...]:
    """Validate a shape: dim 0 dynamic, other dims positive ints, -1 (dynamic) or a shared dim name."""
    if not dims:
        raise ExportError(f"{where}: empty shape; the batch dim (-1) comes first, e.g. -1,64")
    if dims[0] not in (-1, BATCH):
        raise ExportError(f"{where}: dim 0 is the batch dim and always dynamic; write -1 (got {dims[0]})")
    out: list[int | str] = [BATCH]
    for index, dim in enumerate(dims[1:], start=1):
        if dim == -1:
            out.append(f"{name}.{index}")
        elif dim == BATCH:
            raise ExportError(f"{where}: the dim name '{BATCH}' is reserved for dim 0")
        elif _is_dim_name(dim) or (isinstance(dim, int) and not isinstance(dim, bool) and dim > 0):
            out.append(dim)
        else:
            raise ExportError(f"{where}: dim {index} must be a positive int, -1 or a dim name, got {dim!r}")
    return tuple(out)


def _is_dim_name(dim: int | str) -> bool:
    return isinstance(dim, str) and IDENTIFIER.fullmatch(dim) is not None


def parse_input(text: str) -> InputSpec:
    """Parse `name:dtype:shape[:low,high]`, e.g. `pixels:float32:-1,64:0,16`."""
    where = f"--input '{text}'"
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise ExportError(f"{where}: expected name:dtype:shape[:low,high], e.g. pixels:float32:-1,64")
    name, dtype, shape = parts[:3]
    _check_name(name, where)
    dims = [_dim(d.strip(), where) for d in shape.split(",")] if shape.strip() else []
    low, high = _range(parts[3], where) if len(parts) == 4 else (None, None)
    return InputSpec(name, parse_datatype(dtype, where), parse_dims(name, dims, where), low, high)


def _check_name(name: str, where: str) -> None:
    if not IDENTIFIER.fullmatch(name):
        raise ExportError(f"{where}: input name '{name}' must be an identifier (letters, digits, _)")


def _dim(text: str, where: str) -> int | str:
    if IDENTIFIER.fullmatch(text):
        return text
    try:
        return int(text)
    except ValueError:
        raise ExportError(f"{where}: dim '{text}' is not an integer or a dim name") from None


def _range(text: str, where: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ExportError(f"{where}: value range must be low,high, e.g. 0,16") from None
    return _ordered(low, high, where)


def _ordered(low: float, high: float, where: str) -> tuple[float, float]:
    if not low < high:
        raise ExportError(f"{where}: value range needs low < high, got {low:g},{high:g}")
    return low, high


def parse_dim_size(text: str) -> tuple[str, int]:
    """Parse `--dim NAME=SIZE`: the trace size of a named dim, or of an unnamed one as INPUT.INDEX."""
    name, _, size = text.partition("=")
    if not DIM_REFERENCE.fullmatch(name) or name == BATCH or not size.isdigit() or int(size) < 2:
        raise ExportError(f"--dim '{text}': expected NAME=SIZE (or INPUT.INDEX=SIZE), SIZE >= 2, not the batch")
    return name, int(size)


class _InputEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    dtype: str
    shape: list[int | str]
    range: tuple[float, float] | None = None


class _SpecFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[_InputEntry]
    outputs: list[str] = []
    dims: dict[str, int] = {}


@dataclass(frozen=True)
class SpecFile:
    """The contents of a `--spec` JSON file: inputs, output names and trace sizes of named dims."""

    inputs: list[InputSpec]
    outputs: list[str]
    dims: dict[str, int]


def read_spec_file(path: Path) -> SpecFile:
    """Read a JSON spec file; every problem becomes one line naming the key."""
    try:
        raw = _SpecFile.model_validate(json.loads(path.read_text()))
    except OSError as exc:
        raise ExportError(f"cannot read spec file '{path}': {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"spec file '{path}' is not JSON: {exc.msg} at line {exc.lineno}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ExportError(f"spec file '{path}': {where}: {first['msg']}") from None
    inputs = []
    for entry in raw.inputs:
        where = f"spec file input '{entry.name}'"
        _check_name(entry.name, where)
        low, high = _ordered(*entry.range, where) if entry.range else (None, None)
        dims = parse_dims(entry.name, entry.shape, where)
        inputs.append(InputSpec(entry.name, parse_datatype(entry.dtype, where), dims, low, high))
    for name, size in raw.dims.items():
        parse_dim_size(f"{name}={size}")
    return SpecFile(inputs, raw.outputs, raw.dims)


def check_names(inputs: list[InputSpec], outputs: list[str]) -> None:
    """Input and output names must be unique identifiers, and no name may be both."""
    names = [spec.name for spec in inputs] + outputs
    for name in outputs:
        if not IDENTIFIER.fullmatch(name):
            raise ExportError(f"output name '{name}' must be an identifier (letters, digits, _)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ExportError(f"names used twice among inputs and outputs: {duplicates}")


def load_callable(reference: str) -> Callable[[], Any]:
    """Import `module:callable` (a factory that builds the model); errors name the missing piece."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ExportError(f"--model '{reference}': expected module:callable, e.g. mypkg.models:build")
    if os.getcwd() not in sys.path:  # the console script, unlike `python -m`, does not add it
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExportError(f"--model '{reference}': cannot import module '{module_name}' ({exc})") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ExportError(f"--model '{reference}': module '{module_name}' has no attribute '{attribute}'")
    if not callable(target):
        raise ExportError(f"--model '{reference}': '{attribute}' is not callable")
    factory: Callable[[], Any] = target
    return factory


def trace_sizes(inputs: list[InputSpec], overrides: dict[str, int]) -> dict[str, int]:
    """Size of every dynamic dim while tracing: batch 3, the others 5, 6, ... unless given with --dim."""
    named = {d for spec in inputs for d in spec.dims if isinstance(d, str) and d != BATCH}
    unknown = sorted(set(overrides) - named)
    if unknown:
        raise ExportError(f"--dim {unknown[0]}: no input has a dynamic dim of that name; they are {sorted(named)}")
    sizes = {BATCH: TRACE_BATCH}
    for spec in inputs:
        for dim in spec.dims:
            if isinstance(dim, str) and dim not in sizes:
                sizes[dim] = overrides.get(dim, FIRST_TRACE_DIM + len(sizes) - 1)
    return sizes


def random_inputs(inputs: list[InputSpec], sizes: dict[str, int], rng: np.random.Generator) -> Arrays:
    """Random arrays for every input at the given dim sizes, inside each input's value range."""
    arrays = {}
    for spec in inputs:
        shape = [d if isinstance(d, int) else sizes[d] for d in spec.dims]
        arrays[spec.name] = _random_array(spec, shape, rng)
    return arrays


def _random_array(spec: InputSpec, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    dtype = spec.dtype
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        low = 0 if spec.low is None else int(spec.low)
        high = 10 if spec.high is None else int(spec.high)
        return rng.integers(low, high, size=shape).astype(dtype)
    if spec.low is None or spec.high is None:
        return rng.standard_normal(shape).astype(dtype)
    return rng.uniform(spec.low, spec.high, size=shape).astype(dtype)
