"""exporters.cli: argument and target errors are one `error:` line, a non-zero exit, and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.exporters.conftest import TINY, assert_nothing_written, export

ROOT = Path(__file__).resolve().parents[2]


def torch_args(repository: Path, *extra: str, name: str = "m", model: str = f"{TINY}:make_two_io") -> list[str]:
    """A valid torch export of the two-input model, plus `extra`."""
    inputs = ["--input", "features:float32:-1,6", "--input", "counts:int64:-1,3"]
    return ["torch", "--model", model, *inputs, "--name", name, "--repository", str(repository), *extra]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (f"{TINY}_missing:make", "cannot import module 'tests.exporters.tiny_models_missing'"),
        (f"{TINY}:make_nothing", "module 'tests.exporters.tiny_models' has no attribute 'make_nothing'"),
        (f"{TINY}:TINY_CONSTANT", "'TINY_CONSTANT' is not callable"),
        ("no_colon_here", "expected module:callable"),
        (f"{TINY}:make_broken", "raised RuntimeError: no such checkpoint"),
    ],
)
def test_a_model_reference_that_cannot_be_built_is_named(tmp_path: Path, model: str, message: str) -> None:
    run = export(*torch_args(tmp_path, model=model))
    assert run.code == 1
    assert message in run.error
    assert_nothing_written(tmp_path, "m")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pixels:float32", "expected name:dtype:shape"),
        ("pixels:float33:-1,64", "unknown dtype 'float33'"),
        ("pixels:str:-1,64", "string inputs cannot be exported"),
        ("pixels:float32:64,64", "dim 0 is the batch dim and always dynamic; write -1 (got 64)"),
        ("pixels:float32:-1,0", "dim 1 must be a positive int, -1 or a dim name, got 0"),
        ("pixels:float32:-1,6x", "dim '6x' is not an integer or a dim name"),
        ("2pixels:float32:-1,64", "input name '2pixels' must be an identifier"),
        ("pixels:float32:-1,64:16,0", "value range needs low < high"),
        ("pixels:float32:", "empty shape"),
        ("pixels:float32:-1,batch", "the dim name 'batch' is reserved for dim 0"),
    ],
)
def test_a_bad_input_spec_is_named(tmp_path: Path, spec: str, message: str) -> None:
    run = export("torch", "--model", f"{TINY}:make_two_io", "--input", spec, "--name", "m", "--repository", tmp_path)
    assert run.code == 1
    assert run.error.startswith(f"error: --input '{spec}': ")
    assert message in run.error
    assert_nothing_written(tmp_path, "m")


def test_torch_needs_its_inputs_described(tmp_path: Path) -> None:
    run = export("torch", "--model", f"{TINY}:make_two_io", "--name", "m", "--repository", tmp_path)
    assert run.code == 1
    assert "describe the model's inputs with --input NAME:DTYPE:SHAPE or --spec FILE" in run.error


def test_a_spec_file_with_an_unknown_key_names_it(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4], "size": 4}]}))
    run = export("torch", "--model", f"{TINY}:make_two_io", "--spec", spec, "--name", "m", "--repository", tmp_path)
    assert run.code == 1
    assert "spec file" in run.error
    assert "inputs.0.size" in run.error
    assert_nothing_written(tmp_path, "m")


def test_names_used_twice_are_refused(tmp_path: Path) -> None:
    run = export(*torch_args(tmp_path, "--output", "features", "--output", "total"))
    assert run.code == 1
    assert "names used twice among inputs and outputs: ['features']" in run.error


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs/model", "..", "a..b", ".hidden", ""])
def test_a_target_outside_the_repository_is_refused(tmp_path: Path, name: str) -> None:
    repository = tmp_path / "models"
    run = export(*torch_args(repository, name=name))
    assert run.code == 1
    assert f"model name '{name}' would leave the repository or is not allowed" in run.error
    assert list(tmp_path.iterdir()) == []


def test_a_model_directory_linking_outside_the_repository_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m").symlink_to(tmp_path / "elsewhere")
    run = export(*torch_args(tmp_path / "models"))
    assert run.code == 1
    assert "links outside the repository" in run.error
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("version", ["0", "-1", "v2", "1/2"])
def test_a_version_must_be_a_positive_integer(tmp_path: Path, version: str) -> None:
    run = export(*torch_args(tmp_path, "--version", version))
    assert run.code == 1
    assert f"version '{version}' must be a positive integer" in run.error
    assert_nothing_written(tmp_path, "m")


def test_an_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "3"
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(b"keep me")
    run = export(*torch_args(tmp_path, "--version", "3"))
    assert run.code == 1
    assert "version 3 of 'm' already exists" in run.error
    assert (version_dir / "model.onnx").read_bytes() == b"keep me"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["3"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-batch-size", "0"], "--max-batch-size must be at least 1"),
        (["--atol", "-1"], "--atol and --rtol must not be negative"),
        (["--dim", "batch=4"], "expected NAME=SIZE"),
        (["--labels", "/nonexistent/labels.txt"], "cannot read labels file"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, flags: list[str], message: str) -> None:
    run = export(*torch_args(tmp_path, *flags))
    assert run.code == 1
    assert message in run.error
    assert_nothing_written(tmp_path, "m")


def test_usage_errors_exit_2_and_help_exits_0() -> None:
    assert export("torch", "--name", "m").code == 2
    assert export("jax").code == 2
    run = export("--help")
    assert run.code == 0
    assert "{torch,keras}" in run.out


def test_python_m_exporters_runs_the_same_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporters", "torch", "--model", "x:y", "--input", "x:float32:8", "--name", "m"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --input 'x:float32:8': dim 0 is the batch dim and always dynamic; write -1 (got 8)"
    ]
    assert list(tmp_path.iterdir()) == []
