"""The bundled examples: trained, exported and verified into a fresh repository, then skipped when present."""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from exporters.examples.__main__ import main
from exporters.examples.digits import load_split
from service.repository import read_config, read_labels
from service.runtimes import TensorSpec
from tests.exporters.conftest import load

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Build:
    """One run of `python -m exporters.examples`."""

    code: int
    out: str
    seconds: float


def build(*argv: str) -> Build:
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(argv))
    return Build(code, out.getvalue(), time.perf_counter() - start)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repository") / "models"


@pytest.fixture(scope="module")
def first_build(models: Path) -> Build:
    return build("--models", str(models))


def test_both_examples_build(first_build: Build, models: Path) -> None:
    # The build prints its own duration (under a minute on 2 cores); speed is not asserted in tests.
    assert first_build.code == 0, first_build.out
    assert sorted(p.name for p in models.iterdir()) == ["digits_cnn", "digits_mlp"]


@pytest.mark.parametrize(
    ("name", "fmt", "input_spec"),
    [
        ("digits_mlp", "onnx", TensorSpec("pixels", "FP32", (-1, 64))),
        ("digits_cnn", "savedmodel", TensorSpec("image", "FP32", (-1, 8, 8, 1))),
    ],
)
def test_each_example_has_its_documented_signature(
    first_build: Build, models: Path, name: str, fmt: str, input_spec: TensorSpec
) -> None:
    output_spec = TensorSpec("probabilities", "FP32", (-1, 10))
    config = read_config(models / name)
    assert (config.name, config.format, config.max_batch_size) == (name, fmt, 32)
    assert [(t.name, t.datatype, tuple(t.shape)) for t in config.inputs or []] == [
        (input_spec.name, input_spec.datatype, input_spec.shape)
    ]
    assert [(t.name, t.datatype, tuple(t.shape)) for t in config.outputs or []] == [
        (output_spec.name, output_spec.datatype, output_spec.shape)
    ]
    assert read_labels(models / name / "1") == [str(d) for d in range(10)]
    runtime = load(models, name, 1, fmt)
    assert (runtime.inputs, runtime.outputs) == ([input_spec], [output_spec])
    split = load_split()
    pixels = split.x_test.reshape((-1, *input_spec.shape[1:]))
    probabilities = runtime.predict({input_spec.name: pixels})["probabilities"]
    runtime.close()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert float(np.mean(probabilities.argmax(axis=1) == split.y_test)) >= 0.90
    assert f"{name}: held-out accuracy 0.9" in first_build.out


def test_present_examples_are_skipped_unless_forced(first_build: Build, models: Path) -> None:
    again = build("--models", str(models))
    assert again.code == 0
    assert "digits_mlp: already in" in again.out
    assert "digits_cnn: already in" in again.out
    assert "training" not in again.out


def test_force_replaces_version_1_in_place(first_build: Build, models: Path) -> None:
    marker = models / "digits_mlp" / "1" / "stale.txt"
    marker.write_text("from an older build")
    forced = build("--models", str(models), "--force")
    assert forced.code == 0, forced.out
    assert not marker.exists()
    assert sorted(p.name for p in (models / "digits_mlp").iterdir()) == ["1", "model.json"]
    assert sorted(p.name for p in (models / "digits_mlp" / "1").iterdir()) == ["labels.txt", "model.onnx"]
    assert [p.name for p in models.iterdir() if p.name.startswith(".")] == []
