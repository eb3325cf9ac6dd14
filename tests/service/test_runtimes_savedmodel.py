"""service.runtimes.savedmodel: real TensorFlow on tiny SavedModels built with tf.Module in a temp dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import InternalError, ModelLoadError
from service.runtimes import RuntimeOptions, TensorSpec, gpu_count, load_runtime
from service.runtimes.savedmodel import choose_signature

CPU = RuntimeOptions(device="cpu")


def build_savedmodels(root: Path) -> dict[str, Path]:
    """One SavedModel per signature layout, saved once per test module (TensorFlow is slow to start)."""
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 4], tf.float32, name="x"),
                tf.TensorSpec([None], tf.int64, name="ids"),
            ]
        )
        def predict(self, x: Any, ids: Any) -> dict[str, Any]:
            return {"y": x * 2.0, "next_ids": ids + 1, "positive": tf.reduce_sum(x, axis=1) > 0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def shout(self, text: Any) -> dict[str, Any]:
            return {"upper": tf.strings.upper(text), "length": tf.strings.length(text)}

        @tf.function(input_signature=[tf.TensorSpec([2, 3], tf.float64, name="m")])
        def total(self, m: Any) -> Any:
            return tf.reduce_sum(m)

    model = Model()
    layouts = {
        "default": {"serving_default": model.predict, "shout": model.shout},
        "serve": {"serve": model.shout, "other": model.total},
        "only": {"shout_it": model.shout},
        "ambiguous": {"a": model.predict, "b": model.shout},
        "fixed": {"serving_default": model.total},
    }
    paths = {}
    for name, signatures in layouts.items():
        path = root / name / "1" / "model.savedmodel"
        tf.saved_model.save(model, str(path), signatures=signatures)
        paths[name] = path
    return paths


@pytest.fixture(scope="module")
def savedmodels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_savedmodels(tmp_path_factory.mktemp("savedmodels"))


def test_serving_default_is_chosen_and_its_signature_read(savedmodels: dict[str, Path]) -> None:
    runtime = load_runtime("savedmodel", savedmodels["default"], CPU)
    assert runtime.format == "savedmodel"
    assert runtime.signature_name == "serving_default"
    assert runtime.device == "cpu"
    assert runtime.degraded is False
    assert runtime.inputs == [TensorSpec("ids", "INT64", (-1,)), TensorSpec("x", "FP32", (-1, 4))]
    assert runtime.outputs == [
        TensorSpec("next_ids", "INT64", (-1,)),
        TensorSpec("positive", "BOOL", (-1,)),
        TensorSpec("y", "FP32", (-1, 4)),
    ]
    runtime.close()


def test_graph_tensor_names_come_from_the_signature_def(savedmodels: dict[str, Path]) -> None:
    runtime = load_runtime("savedmodel", savedmodels["default"], CPU)
    assert {s.name: s.graph_name for s in runtime.inputs} == {
        "ids": "serving_default_ids:0",
        "x": "serving_default_x:0",
    }
    assert all(s.graph_name.endswith(":0") or ":" in s.graph_name for s in runtime.outputs)
    runtime.close()


def test_predict_runs_the_signature(savedmodels: dict[str, Path]) -> None:
    runtime = load_runtime("savedmodel", savedmodels["default"], CPU)
    out = runtime.predict(
        {"x": np.array([[1, 2, 3, 4], [-1, -1, -1, -1]], np.float32), "ids": np.array([7, 9], np.int64)}
    )
    assert out["y"].dtype == np.float32
    assert out["y"].tolist() == [[2, 4, 6, 8], [-2, -2, -2, -2]]
    assert out["next_ids"].tolist() == [8, 10]
    assert out["positive"].tolist() == [True, False]
    runtime.close()


def test_a_configured_signature_is_served(savedmodels: dict[str, Path]) -> None:
    runtime = load_runtime("savedmodel", savedmodels["default"], RuntimeOptions(device="cpu", signature_name="shout"))
    assert runtime.signature_name == "shout"
    assert runtime.inputs == [TensorSpec("text", "BYTES", (-1,))]
    assert [spec.datatype for spec in runtime.outputs] == ["INT32", "BYTES"]
    out = runtime.predict({"text": np.array([b"ab", "é".encode(), b"\xff"], dtype=object)})
    assert out["upper"].tolist() == [b"AB", "é".encode(), b"\xff"]
    assert out["length"].tolist() == [2, 2, 1]
    runtime.close()


def test_serve_is_chosen_when_there_is_no_serving_default(savedmodels: dict[str, Path]) -> None:
    runtime = load_runtime("savedmodel", savedmodels["serve"], CPU)
    assert runtime.signature_name == "serve"
    runtime.close()


def test_the_only_signature_is_chosen(savedmodels: dict[str, Path]) -> None:
    runtime = load_runtime("savedmodel", savedmodels["only"], CPU)
    assert runtime.signature_name == "shout_it"
    runtime.close()


def test_several_signatures_without_a_default_need_one_configured(savedmodels: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match=r"signature_name.*\['a', 'b'\]"):
        load_runtime("savedmodel", savedmodels["ambiguous"], CPU)
    runtime = load_runtime("savedmodel", savedmodels["ambiguous"], RuntimeOptions(device="cpu", signature_name="b"))
    assert runtime.signature_name == "b"
    runtime.close()


def test_a_missing_configured_signature_fails_naming_the_ones_there(savedmodels: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match=r"'nope' not found.*\['serving_default', 'shout'\]"):
        load_runtime("savedmodel", savedmodels["default"], RuntimeOptions(device="cpu", signature_name="nope"))


def test_choose_signature_order() -> None:
    assert choose_signature(["serve", "serving_default"], None) == "serving_default"
    assert choose_signature(["x", "serve"], None) == "serve"
    assert choose_signature(["x"], None) == "x"
    assert choose_signature(["x", "y"], "y") == "y"
    with pytest.raises(ModelLoadError):
        choose_signature([], None)


def test_fixed_shapes_and_an_unnamed_output_are_read(savedmodels: dict[str, Path]) -> None:
    runtime = load_runtime("savedmodel", savedmodels["fixed"], CPU)
    assert runtime.inputs == [TensorSpec("m", "FP64", (2, 3))]
    assert runtime.outputs == [TensorSpec("output_0", "FP64", ())]
    assert runtime.predict({"m": np.ones((2, 3))})["output_0"].tolist() == 6.0
    runtime.close()


def test_a_failing_run_is_an_internal_error_with_a_generic_message(savedmodels: dict[str, Path]) -> None:
    runtime = load_runtime("savedmodel", savedmodels["fixed"], CPU)
    with pytest.raises(InternalError) as info:
        runtime.predict({"m": np.ones((2, 3), np.int32)})
    assert info.value.message == "model execution failed"
    runtime.close()


def test_a_broken_artifact_fails_to_load_without_its_path(tmp_path: Path) -> None:
    broken = tmp_path / "model.savedmodel"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError, match="SavedModel") as info:
        load_runtime("savedmodel", broken, CPU)
    assert str(tmp_path) not in info.value.message


def test_cuda_without_a_gpu_fails_unless_cpu_fallback_is_allowed(savedmodels: dict[str, Path]) -> None:
    if gpu_count() > 0:
        pytest.skip("this host has a GPU")
    with pytest.raises(ModelLoadError, match="GPU"):
        load_runtime("savedmodel", savedmodels["only"], RuntimeOptions(device="cuda", allow_cpu_fallback=False))
    runtime = load_runtime("savedmodel", savedmodels["only"], RuntimeOptions(device="cuda"))
    assert runtime.degraded is True
    assert runtime.device == "cpu"
    runtime.close()


def test_on_a_gpu_the_model_runs_on_cuda(savedmodels: dict[str, Path]) -> None:
    if gpu_count() == 0:
        pytest.skip("no GPU on this host")
    runtime = load_runtime("savedmodel", savedmodels["only"], RuntimeOptions(device="cuda", allow_cpu_fallback=False))
    assert runtime.device == "cuda:0"
    assert runtime.predict({"text": np.array([b"a"], dtype=object)})["upper"].tolist() == [b"A"]
    runtime.close()
