"""Helpers for the exporter tests: run the CLI in-process and check that failures leave nothing behind."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from exporters.cli import main
from service.runtimes import ARTIFACT_NAMES, Runtime, RuntimeOptions, load_runtime
from service.tensors import DATATYPE_TO_NUMPY, datatype_of
from tests.server import ServerProcess, start_server, stop_server

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


def assert_close(
    got: dict[str, np.ndarray], expected: dict[str, np.ndarray], atol: float = 1e-4, rtol: float = 1e-3
) -> None:
    """Same output names, shapes and values (within the exporter's default tolerance unless told)."""
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, atol=atol, rtol=rtol, err_msg=name)


def infer(client: httpx.Client, name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One KServe V2 JSON request to a live server; the outputs as arrays of their declared datatype."""
    inputs = [
        {"name": key, "shape": list(value.shape), "datatype": datatype_of(value.dtype), "data": value.ravel().tolist()}
        for key, value in arrays.items()
    ]
    response = client.post(f"/v2/models/{name}/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    return {
        out["name"]: np.array(out["data"], dtype=DATATYPE_TO_NUMPY[out["datatype"]]).reshape(out["shape"])
        for out in response.json()["outputs"]
    }


@pytest.fixture(scope="module")
def serve_repository() -> Iterator[Callable[[Path], ServerProcess]]:
    """Start one live server per module on a repository the module's exports filled; stopped after the module."""
    started: list[ServerProcess] = []

    def start(repository: Path) -> ServerProcess:
        server = start_server(repository, repository.parent / f"{repository.name}-server.log", "--device", "cpu")
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server)
