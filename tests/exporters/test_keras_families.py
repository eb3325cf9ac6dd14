"""Keras models as people have them: Sequential with a named last layer, built subclassed models, preprocessing layers.

Each export is verified by the exporter, then served by a real server and compared with the Keras model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters.keras_export import prepare_tensorflow
from service.repository import read_config
from tests.exporters import tiny_keras
from tests.exporters.conftest import Run, assert_close, assert_nothing_written, export, infer
from tests.server import ServerProcess

KERAS = "tests.exporters.tiny_keras"
# name in the repository -> (factory, format, extra flags)
EXPORTS: dict[str, tuple[str, str, list[str]]] = {
    "seq_sm": ("make_keras_sequential", "savedmodel", []),
    "seq_onnx": ("make_keras_sequential", "onnx", []),
    "sub_sm": ("make_keras_subclassed", "savedmodel", []),
    "sub_onnx": ("make_keras_subclassed", "onnx", ["--output", "logits"]),
    "prep_onnx": ("make_keras_preprocessing", "onnx", []),
    "prep_sm": ("make_keras_preprocessing", "savedmodel", []),
    "prep16": ("make_keras_preprocessing", "onnx", ["--precision", "fp16"]),
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keras-families") / "models"


@pytest.fixture(scope="module")
def runs(repository: Path) -> dict[str, Run]:
    prepare_tensorflow()
    return {
        name: export(
            "keras",
            "--model",
            f"{KERAS}:{factory}",
            "--format",
            fmt,
            *flags,
            "--name",
            name,
            "--repository",
            repository,
        )
        for name, (factory, fmt, flags) in EXPORTS.items()
    }


@pytest.fixture(scope="module")
def server(runs: dict[str, Run], repository: Path, serve_repository: Callable[[Path], ServerProcess]) -> ServerProcess:
    assert all(run.code == 0 for run in runs.values()), {n: r.err[-600:] for n, r in runs.items() if r.code}
    return serve_repository(repository)


def features(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).normal(2.0, 3.0, (batch, 4)).astype(np.float32)


def keras_predict(factory: str, arrays: np.ndarray) -> np.ndarray:
    model: Any = getattr(tiny_keras, factory)()
    return np.asarray(model(arrays, training=False))


@pytest.mark.parametrize("name", ["seq_sm", "seq_onnx"])
def test_a_sequential_models_last_layer_names_its_output(runs: dict[str, Run], repository: Path, name: str) -> None:
    assert runs[name].code == 0, runs[name].err
    config = read_config(repository / name)
    assert [(t.name, t.datatype, t.shape) for t in config.inputs or []] == [("features", "FP32", [-1, 4])]
    assert [(t.name, t.shape) for t in config.outputs or []] == [("scores", [-1, 5])]


def test_a_built_subclassed_model_takes_its_signature_from_the_build(runs: dict[str, Run], repository: Path) -> None:
    assert runs["sub_sm"].code == 0, runs["sub_sm"].err
    assert "note: the model names no outputs; they are output_0 (--output names them)" in runs["sub_sm"].err
    for name, output in [("sub_sm", "output_0"), ("sub_onnx", "logits")]:
        config = read_config(repository / name)
        assert [(t.name, t.datatype, t.shape) for t in config.inputs or []] == [("pixels", "FP32", [-1, 4])]
        assert [(t.name, t.shape) for t in config.outputs or []] == [(output, [-1, 2])]


def test_preprocessing_constants_stay_inside_the_onnx_graph(runs: dict[str, Run], repository: Path) -> None:
    import onnx

    assert runs["prep_onnx"].code == 0, runs["prep_onnx"].err
    graph = onnx.load(str(repository / "prep_onnx" / "1" / "model.onnx")).graph
    initializers = {t.name for t in graph.initializer}
    assert [i.name for i in graph.input if i.name not in initializers] == ["features"]


@pytest.mark.parametrize(
    ("name", "factory", "output"),
    [
        ("seq_sm", "make_keras_sequential", "scores"),
        ("seq_onnx", "make_keras_sequential", "scores"),
        ("sub_sm", "make_keras_subclassed", "output_0"),
        ("sub_onnx", "make_keras_subclassed", "logits"),
        ("prep_onnx", "make_keras_preprocessing", "scores"),
        ("prep_sm", "make_keras_preprocessing", "scores"),
        ("prep16", "make_keras_preprocessing", "scores"),
    ],
)
def test_each_export_serves_what_keras_computes(server: ServerProcess, name: str, factory: str, output: str) -> None:
    arrays = features(3)
    with server.client() as client:
        got = infer(client, name, {"features" if "sub" not in name else "pixels": arrays})
    tolerance = {"atol": 1e-2, "rtol": 1e-2} if name.endswith("16") else {}
    assert_close(got, {output: keras_predict(factory, arrays)}, **tolerance)


def test_an_unbuilt_subclassed_model_is_told_what_to_pass(tmp_path: Path) -> None:
    run = export("keras", "--model", f"{KERAS}:make_keras_unbuilt", "--name", "m", "--repository", tmp_path)
    assert run.code == 1
    assert "(Scorer) has never been called on data, so its input shapes are unknown" in run.error
    assert run.error.endswith("--input pixels:float32:-1,<dims>")
    assert_nothing_written(tmp_path, "m")
    given = export("keras", "--model", f"{KERAS}:make_keras_unbuilt", "--input", "pixels:float32:-1,4", "--name", "m",
                   "--format", "onnx", "--repository", tmp_path)  # fmt: skip
    assert given.code == 0, given.err


def test_a_lookup_table_is_refused_for_onnx_with_the_way_out(tmp_path: Path) -> None:
    run = export("keras", "--model", f"{KERAS}:make_keras_lookup", "--format", "onnx", "--name", "m",
                 "--repository", tmp_path)  # fmt: skip
    assert run.code == 1
    assert "StringLookup/IntegerLookup tables do not convert to ONNX; export to SavedModel" in run.error
    assert_nothing_written(tmp_path, "m")
    savedmodel = export("keras", "--model", f"{KERAS}:make_keras_lookup", "--name", "m", "--repository", tmp_path)
    assert savedmodel.code == 0, savedmodel.err
