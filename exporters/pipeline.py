"""The one export path the CLI and the bundled examples share: export, verify, then write."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters import ExportError, step, writer
from exporters.keras_export import SIGNATURE
from exporters.precision import reduce_precision
from exporters.spec import Source, trace_sizes
from exporters.verify import Report, Tolerance, Verifier, check_signature
from service.runtimes import Device, RuntimeOptions, TensorSpec, load_runtime

DEFAULT_MAX_BATCH_SIZE = 8


@dataclass(frozen=True)
class Checks:
    """How hard to verify: batch sizes up to max_batch_size (None = default, not written), tolerance, sample.

    `precision` other than fp32 rewrites the ONNX graph before verification; `reduced_io` makes its inputs and
    outputs FP16 too (otherwise they stay FP32).
    """

    max_batch_size: int | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)
    sample: dict[str, np.ndarray] | None = None
    dim_sizes: dict[str, int] = field(default_factory=dict)
    precision: str = "fp32"
    reduced_io: bool = False


def export_model(source: Source, target: writer.Target, checks: Checks, labels: list[str] | None = None) -> Path:
    """Export into a temp dir, verify through service.runtimes, and only then write into the repository."""
    planned = writer.plan(target)
    sizes = trace_sizes(source.inputs, checks.dim_sizes)
    with tempfile.TemporaryDirectory(prefix="tandem-export-") as tmp:
        artifact = source.export(Path(tmp))  # each source prints its own phases (trace, convert)
        if checks.precision != "fp32":
            with step(f"converting the ONNX graph to {checks.precision}"):
                reduce_precision(artifact, checks.precision, keep_io_types=not checks.reduced_io)
        report, specs = verify(source, artifact, checks, sizes)
        print(report.format(), flush=True)
        values: dict[str, Any] = {
            "name": planned.model_dir.name,
            "format": source.fmt,
            "inputs": [_tensor(s) for s in specs[: len(source.inputs)]],
            "outputs": [_tensor(s) for s in specs[len(source.inputs) :]],
        }
        if source.fmt == "savedmodel":
            values["signature_name"] = SIGNATURE
        if checks.max_batch_size:  # given explicitly: replaces a hand-edited value too
            values["max_batch_size"] = checks.max_batch_size
        config = writer.Config(values, defaults={"max_batch_size": DEFAULT_MAX_BATCH_SIZE})
        with step(f"writing version {planned.version} of '{planned.model_dir.name}'"):
            version_dir = writer.write(planned, Path(tmp), config, labels)
    print(f"wrote {_shown(version_dir)} and {_shown(version_dir.parent / 'model.json')}", flush=True)
    return version_dir


def verify(source: Source, artifact: Path, checks: Checks, sizes: dict[str, int]) -> tuple[Report, list[TensorSpec]]:
    """Load the artifact as the server would and compare it with the source; raise on any mismatch.

    FP32 artifacts are verified on CPU; reduced-precision ones on the CUDA provider when one is present, since
    that is where they are meant to serve (ONNX Runtime's CPU provider computes FP16 through casts to FP32).
    """
    device: Device = "cpu" if checks.precision == "fp32" else "auto"
    try:
        runtime = load_runtime(source.fmt, artifact, RuntimeOptions(device=device))
    except Exception as exc:
        raise ExportError(_load_failure(exc, checks.precision)) from exc
    try:
        specs = check_signature(source, runtime, checks.reduced_io)
        verifier = Verifier(source, runtime, checks.tolerance, sizes, checks.precision)
        report = verifier.run(checks.max_batch_size or DEFAULT_MAX_BATCH_SIZE, checks.sample)
    finally:
        runtime.close()
    return report, specs


def _load_failure(exc: Exception, precision: str) -> str:
    cause = exc.__cause__ or exc
    text = str(cause).splitlines()[0][:300] if str(cause).strip() else type(cause).__name__
    if precision == "bf16":
        return (
            f"the bf16 model does not run on this host's ONNX Runtime providers ({text}); ONNX Runtime's CPU "
            "provider has almost no bf16 kernels: export on a host with the CUDA provider, or use --precision fp16"
        )
    return f"the exported artifact does not load in service.runtimes: {exc}"


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)
