"""Keras -> SavedModel and -> ONNX through the CLI, on a tiny functional model with two inputs and two outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters.keras_export import prepare_tensorflow
from service.repository import read_config
from tests.exporters import tiny_models
from tests.exporters.conftest import TINY, Run, assert_close, assert_nothing_written, export, load


def keras_inputs(batch: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + length)
    return {
        "features": rng.standard_normal((batch, 4)).astype(np.float32),
        "sequence": rng.standard_normal((batch, length, 3)).astype(np.float32),
    }


def keras_outputs(model: Any, arrays: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    scores, value = model([arrays["features"], arrays["sequence"]], training=False)
    return dict(zip(names, [np.asarray(scores), np.asarray(value)], strict=True))


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prepare_tensorflow()  # before this process builds its first Keras model, as the exporter does
    path = tmp_path_factory.mktemp("keras") / "two_inputs.keras"
    tiny_models.make_keras_two_inputs().save(path)
    return path


@pytest.fixture(scope="module")
def source_model(keras_file: Path) -> Any:
    import keras

    return keras.saving.load_model(keras_file, safe_mode=True)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def savedmodel(keras_file: Path, repository: Path) -> Run:
    return export("keras", "--model", keras_file, "--name", "two_inputs", "--repository", repository)


@pytest.fixture(scope="module")
def onnx(keras_file: Path, repository: Path) -> Run:
    args = ["--output", "probabilities", "--output", "estimate", "--max-batch-size", "4"]
    return export(
        "keras", "--model", keras_file, "--format", "onnx", *args, "--name", "as_onnx", "--repository", repository
    )


def test_the_savedmodel_keeps_input_and_output_names(savedmodel: Run, repository: Path) -> None:
    assert savedmodel.code == 0, savedmodel.err
    config = read_config(repository / "two_inputs")
    assert (config.format, config.signature_name, config.max_batch_size) == ("savedmodel", "serving_default", 8)
    assert [(t.name, t.datatype, t.shape) for t in config.inputs or []] == [
        ("features", "FP32", [-1, 4]),
        ("sequence", "FP32", [-1, -1, 3]),
    ]
    assert [(t.name, t.datatype, t.shape) for t in config.outputs or []] == [
        ("scores", "FP32", [-1, 2]),
        ("value", "FP32", [-1, 1]),
    ]
    assert "  dynamic dims: batch (1, 2, 8), dim 1 of input 'sequence' (5, 10)" in savedmodel.out.splitlines()


@pytest.mark.parametrize(("batch", "length"), [(1, 5), (2, 9), (8, 2)])
def test_the_savedmodel_serves_and_matches_keras(
    savedmodel: Run, repository: Path, source_model: Any, batch: int, length: int
) -> None:
    runtime = load(repository, "two_inputs", 1, "savedmodel")
    assert runtime.signature_name == "serving_default"
    arrays = keras_inputs(batch, length)
    assert_close(runtime.predict(arrays), keras_outputs(source_model, arrays, ["scores", "value"]))
    runtime.close()


def test_onnx_export_takes_the_output_names_given(onnx: Run, repository: Path, source_model: Any) -> None:
    assert onnx.code == 0, onnx.err
    assert "converting with tf2onnx..." in onnx.err
    config = read_config(repository / "as_onnx")
    assert config.format == "onnx"
    assert config.signature_name is None
    assert [t.name for t in config.outputs or []] == ["probabilities", "estimate"]
    runtime = load(repository, "as_onnx", 1, "onnx")
    for batch, length in [(1, 3), (2, 6), (4, 4)]:
        arrays = keras_inputs(batch, length)
        expected = keras_outputs(source_model, arrays, ["probabilities", "estimate"])
        assert_close(runtime.predict(arrays), expected)
    runtime.close()


def test_a_keras_model_from_a_factory_exports(keras_file: Path, tmp_path: Path) -> None:
    run = export("keras", "--model", f"{TINY}:make_keras_two_inputs", "--name", "m", "--repository", tmp_path)
    assert run.code == 0, run.err
    assert (tmp_path / "m" / "1" / "model.savedmodel" / "saved_model.pb").is_file()


def test_a_keras_file_with_python_code_is_not_deserialised(keras_file: Path, tmp_path: Path) -> None:
    import keras

    inputs = keras.Input(shape=(4,), name="x")
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs)).save(tmp_path / "lambda.keras")
    run = export("keras", "--model", tmp_path / "lambda.keras", "--name", "m", "--repository", tmp_path / "models")
    assert run.code == 1
    assert "Lambda" in run.error
    assert "safe_mode" in run.error
    assert_nothing_written(tmp_path / "models", "m")


def test_the_output_count_must_match_the_model(keras_file: Path, tmp_path: Path) -> None:
    run = export("keras", "--model", keras_file, "--output", "only", "--name", "m", "--repository", tmp_path)
    assert run.code == 1
    assert "the model has 2 output(s) but 1 --output name(s) were given" in run.error
    assert_nothing_written(tmp_path, "m")
