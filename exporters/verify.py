"""Prove an exported artifact serves: load it through service.runtimes, compare it with the source."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporters import ExportError, step
from exporters.spec import BATCH, SHARED_DIM_HINT, Arrays, InputSpec, Source, random_inputs
from service.runtimes import Runtime, TensorSpec
from service.tensors import datatype_of

TIMED_RUNS = 5
_FIX_HINT = "avoid x.shape[0]-dependent Python (loops over rows, reshapes to traced sizes) so the dim stays dynamic"


@dataclass(frozen=True)
class Tolerance:
    """How close the export must stay to the source: |exported - source| <= atol + rtol * |source|."""

    atol: float = 1e-4
    rtol: float = 1e-3


@dataclass
class Report:
    """What verification measured, printed before anything is written."""

    title: str
    max_error: dict[str, float] = field(default_factory=dict)
    latency_ms: list[tuple[int, float, float]] = field(default_factory=list)
    dims: list[str] = field(default_factory=list)
    sample_rows: int = 0

    def format(self) -> str:
        """Human-readable lines: error per output, latency per batch size, dims proven dynamic."""
        width = max([len("output"), *(len(n) for n in self.max_error)])
        lines = [self.title, f"  {'output':<{width}}  max abs error"]
        lines += [f"  {name:<{width}}  {error:.2e}" for name, error in self.max_error.items()]
        lines.append("  batch  source ms  exported ms")
        lines += [f"  {b:>5}  {s:>9.3f}  {e:>11.3f}" for b, s, e in self.latency_ms]
        lines.append(f"  dynamic dims: {', '.join(self.dims)}")
        if self.sample_rows:
            lines.append(f"  sample file: {self.sample_rows} rows match")
        return "\n".join(lines)


def check_signature(source: Source, runtime: Runtime, reduced_io: bool = False) -> list[TensorSpec]:
    """The artifact's inputs must be the declared ones (FP16 for FP32 with reduced_io), dynamic dims still dynamic."""
    by_name = {spec.name: spec for spec in runtime.inputs}
    if sorted(by_name) != sorted(s.name for s in source.inputs):
        raise ExportError(f"the export has inputs {sorted(by_name)}, expected {[s.name for s in source.inputs]}")
    outputs = {spec.name: spec for spec in runtime.outputs}
    if sorted(outputs) != sorted(source.output_names):
        raise ExportError(f"the export has outputs {sorted(outputs)}, expected {source.output_names}")
    for declared in source.inputs:
        _check_dims(declared, by_name[declared.name], reduced_io)
    for name, spec in outputs.items():
        if not spec.shape or spec.shape[0] != -1:
            shape = list(spec.shape)
            raise ExportError(f"the batch dim of output '{name}' became fixed ({shape}) in the export; {_FIX_HINT}")
    return [by_name[s.name] for s in source.inputs] + [outputs[n] for n in source.output_names]


def _check_dims(declared: InputSpec, exported: TensorSpec, reduced_io: bool) -> None:
    what = f"input '{declared.name}'"
    reduced = reduced_io and (declared.datatype, exported.datatype) == ("FP32", "FP16")
    if exported.datatype != declared.datatype and not reduced:
        raise ExportError(f"{what} is {exported.datatype} in the export, declared {declared.datatype}")
    if len(exported.shape) != len(declared.dims):
        raise ExportError(f"{what} has shape {list(exported.shape)} in the export, declared {declared.shape}")
    for index, (got, want) in enumerate(zip(exported.shape, declared.dims, strict=True)):
        if isinstance(want, str) and got != -1:
            dim = "the batch dim (dim 0)" if index == 0 else f"dim {index}"
            raise ExportError(f"{dim} of {what} became fixed ({got}) in the export; {_FIX_HINT}")
        if isinstance(want, int) and got not in (-1, want):
            raise ExportError(f"dim {index} of {what} is {got} in the export, declared {want}")


class Verifier:
    """Runs the source and the artifact side by side and fails on the first disagreement."""

    def __init__(
        self, source: Source, runtime: Runtime, tolerance: Tolerance, sizes: dict[str, int], precision: str = "fp32"
    ) -> None:
        self.source = source
        self.runtime = runtime
        self.tolerance = tolerance
        self.sizes = sizes
        self.precision = precision
        self.rng = np.random.default_rng(1)
        what = f"{source.fmt} artifact" if precision == "fp32" else f"{precision} {source.fmt} artifact"
        device = runtime.device
        if precision != "fp32" and device == "cpu":
            device = "cpu: no CUDA provider present"
        self.report = Report(f"verified {what} against the {source.framework} model ({device})")
        self.report.max_error = dict.fromkeys(source.output_names, 0.0)
        self.input_dtypes = {spec.name: spec.dtype for spec in runtime.inputs}

    def run(self, max_batch_size: int, sample: Arrays | None) -> Report:
        """Batch 1, 2 and max (timed), every other dynamic dim at a second size, then the sample rows."""
        batches = sorted({1, 2, max_batch_size})
        for batch in batches:
            arrays = random_inputs(self.source.inputs, {**self.sizes, BATCH: batch}, self.rng)
            with step(f"verifying at batch {batch}"):
                self.report.latency_ms.append((batch, *self._compare(arrays, f"batch {batch}", timed=True)))
        self.report.dims.append(f"batch ({', '.join(map(str, batches))})")
        for dim, size in self.sizes.items():
            if dim != BATCH:
                self._vary(dim, size)
        if sample is not None:
            self._sample(sample, max_batch_size)
        return self.report

    def _vary(self, dim: str, size: int) -> None:
        arrays = random_inputs(self.source.inputs, {**self.sizes, BATCH: 2, dim: size * 2}, self.rng)
        where = f"{_describe(dim)} = {size * 2} (traced at {size})"
        try:
            expected = self.source.predict(arrays)
        except ExportError as exc:
            raise ExportError(f"the source model fails at {where}: {exc}; {SHARED_DIM_HINT}") from None
        self._compare(arrays, where, expected=expected)
        self.report.dims.append(f"{_describe(dim)} ({size}, {size * 2})")

    def _sample(self, sample: Arrays, chunk: int) -> None:
        rows = len(next(iter(sample.values())))
        for start in range(0, rows, chunk):
            part = {name: value[start : start + chunk] for name, value in sample.items()}
            self._compare(part, f"sample rows {start}..{min(start + chunk, rows) - 1}")
        self.report.sample_rows = rows

    def _compare(
        self, arrays: Arrays, where: str, timed: bool = False, expected: Arrays | None = None
    ) -> tuple[float, float]:
        expected = self.source.predict(arrays) if expected is None else expected
        got = self._predict(arrays, where)
        rows = len(next(iter(arrays.values())))
        for name in self.source.output_names:
            self._match(name, expected[name], got[name], rows, where)
        if not timed:
            return 0.0, 0.0
        return _median_ms(self.source.predict, arrays), _median_ms(self.runtime.predict, self._cast(arrays))

    def _cast(self, arrays: Arrays) -> Arrays:
        """Inputs in the artifact's dtypes: FP16 where a reduced-precision export takes FP16."""
        return {
            name: value.astype(self.input_dtypes.get(name, value.dtype), copy=False) for name, value in arrays.items()
        }

    def _predict(self, arrays: Arrays, where: str) -> Arrays:
        try:
            return self.runtime.predict(self._cast(arrays))
        except Exception as exc:
            cause = exc.__cause__ or exc
            raise ExportError(f"the export fails at {where} ({_first_line(cause)}); {_FIX_HINT}") from exc

    def _match(self, name: str, expected: np.ndarray, got: np.ndarray, rows: int, where: str) -> None:
        what = f"output '{name}' at {where}"
        if expected.ndim == 0 or expected.shape[0] != rows:
            raise ExportError(f"{what}: the source gives shape {list(expected.shape)}; outputs must keep the batch dim")
        if got.shape != expected.shape:
            raise ExportError(f"{what}: shape {list(got.shape)} in the export, {list(expected.shape)} from the source")
        got_type, want_type = datatype_of(got.dtype), datatype_of(expected.dtype)
        if got_type != want_type and not (self.precision != "fp32" and (got_type, want_type) == ("FP16", "FP32")):
            raise ExportError(f"{what}: {got_type} in the export, {want_type} from the source")
        error = _max_abs_error(expected, got)
        self.report.max_error[name] = max(self.report.max_error[name], error)
        tol = self.tolerance
        if not np.allclose(got, expected, atol=tol.atol, rtol=tol.rtol, equal_nan=True):
            raise ExportError(
                f"{what} differs from the source: max abs error {error:.3g}, worst at {_worst(expected, got, tol)} "
                f"(atol {tol.atol:g}, rtol {tol.rtol:g})"
            )


def read_sample(path: Path, inputs: list[InputSpec]) -> Arrays:
    """Arrays from an .npz file keyed by input name, cast to the declared dtypes, all with the same rows."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read sample file '{path}': {_first_line(exc)}") from None
    expected = {spec.name: spec for spec in inputs}
    if sorted(arrays) != sorted(expected):
        raise ExportError(f"sample file '{path.name}' holds {sorted(arrays)}, expected arrays {sorted(expected)}")
    out = {}
    for name, value in arrays.items():
        spec = expected[name]
        fits = value.ndim == len(spec.dims) and all(
            isinstance(want, str) or got == want for got, want in zip(value.shape, spec.dims, strict=True)
        )
        if not fits or not np.can_cast(value.dtype, spec.dtype, "same_kind"):
            raise ExportError(f"sample '{name}' is {value.dtype}{list(value.shape)}, expected {spec.dtype}{spec.shape}")
        out[name] = value.astype(spec.dtype, copy=False)
    if len({len(v) for v in out.values()}) != 1 or not len(next(iter(out.values()))):
        raise ExportError(f"sample file '{path.name}': arrays must have the same, non-zero number of rows")
    return out


def _describe(dim: str) -> str:
    name, _, index = dim.rpartition(".")
    return f"dim {index} of input '{name}'" if index.isdigit() else f"dim '{dim}'"


def _max_abs_error(expected: np.ndarray, got: np.ndarray) -> float:
    if expected.size == 0:
        return 0.0
    if expected.dtype.kind == "b":
        return float(np.count_nonzero(expected != got))
    with np.errstate(invalid="ignore"):  # inf - inf where both sides overflow alike
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    return float(np.nanmax(diff)) if not np.isnan(diff).all() else 0.0


def _worst(expected: np.ndarray, got: np.ndarray, tol: Tolerance) -> str:
    """The element that misses the tolerance by most: its index and both values."""
    want, have = expected.astype(np.float64), got.astype(np.float64)
    with np.errstate(invalid="ignore"):
        excess = np.abs(have - want) - (tol.atol + tol.rtol * np.abs(want))
    excess = np.where(np.isnan(excess), np.where(np.isnan(want) == np.isnan(have), -np.inf, np.inf), excess)
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape))
    return f"[{', '.join(map(str, index))}]: exported {have[index]:.6g}, source {want[index]:.6g}"


def _median_ms(predict: Callable[[Arrays], Arrays], arrays: Arrays) -> float:
    predict(arrays)  # warm-up: first calls allocate and, for TensorFlow, trace
    times = []
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        predict(arrays)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
