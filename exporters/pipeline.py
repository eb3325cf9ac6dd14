"""The one export path the CLI and the bundled examples share: export, verify, then write."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters import ExportError, writer
from exporters.keras_export import SIGNATURE
from exporters.spec import Source, trace_sizes
from exporters.verify import Report, Tolerance, Verifier, check_signature
from service.runtimes import RuntimeOptions, TensorSpec, load_runtime

DEFAULT_MAX_BATCH_SIZE = 8


@dataclass(frozen=True)
class Checks:
    """How hard to verify: batch sizes up to max_batch_size (None = default, not written), tolerance, sample."""

    max_batch_size: int | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)
    sample: dict[str, np.ndarray] | None = None
    dim_sizes: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def step(message: str) -> Iterator[None]:
    """A progress line before a step that may take seconds, and its duration after."""
    print(f"{message}...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"  done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)


def export_model(source: Source, target: writer.Target, checks: Checks, labels: list[str] | None = None) -> Path:
    """Export into a temp dir, verify through service.runtimes, and only then write into the repository."""
    planned = writer.plan(target)
    sizes = trace_sizes(source.inputs, checks.dim_sizes)
    with tempfile.TemporaryDirectory(prefix="tandem-export-") as tmp:
        with step(f"exporting with {source.exporter}"):
            artifact = source.export(Path(tmp))
        with step("verifying the artifact through service.runtimes"):
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
        version_dir = writer.write(planned, Path(tmp), config, labels)
    print(f"wrote {_shown(version_dir)} and {_shown(version_dir.parent / 'model.json')}", flush=True)
    return version_dir


def verify(source: Source, artifact: Path, checks: Checks, sizes: dict[str, int]) -> tuple[Report, list[TensorSpec]]:
    """Load the artifact as the server would (on CPU) and compare it with the source; raise on any mismatch."""
    try:
        runtime = load_runtime(source.fmt, artifact, RuntimeOptions(device="cpu"))
    except Exception as exc:
        raise ExportError(f"the exported artifact does not load in service.runtimes: {exc}") from exc
    try:
        specs = check_signature(source, runtime)
        verifier = Verifier(source, runtime, checks.tolerance, sizes)
        report = verifier.run(checks.max_batch_size or DEFAULT_MAX_BATCH_SIZE, checks.sample)
    finally:
        runtime.close()
    return report, specs


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)
