"""Helpers for the exporter tests: run the CLI in-process and check that failures leave nothing behind."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporters.cli import main
from service.runtimes import ARTIFACT_NAMES, Runtime, RuntimeOptions, load_runtime

CPU = RuntimeOptions(device="cpu")
TINY = "tests.exporters.tiny_models"


@dataclass(frozen=True)
class Run:
    """Exit code and captured output of one `tandem export` run."""

    code: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The `error:` line; failing if there is not exactly one."""
        lines = [line for line in self.err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, self.err
        return lines[0]


def export(*argv: str | Path) -> Run:
    """Run the export CLI in this process (frameworks import once per test session)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in argv])
    return Run(code, out.getvalue(), err.getvalue())


def assert_nothing_written(repository: Path, name: str) -> None:
    """A failed export leaves no model or version directory and no staging directory."""
    assert not (repository / name).exists()
    if repository.exists():
        assert [p.name for p in repository.iterdir() if p.name.startswith(".")] == []


def load(repository: Path, name: str, version: int, fmt: str) -> Runtime:
    """The exported artifact, loaded the way the server loads it."""
    return load_runtime(fmt, repository / name / str(version) / ARTIFACT_NAMES[fmt], CPU)


def assert_close(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Same output names, shapes and values (within the exporter's default tolerance)."""
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, atol=1e-4, rtol=1e-3, err_msg=name)
