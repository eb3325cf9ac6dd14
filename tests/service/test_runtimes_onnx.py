"""service.runtimes.onnx: real ONNX Runtime sessions on tiny models built in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from service.errors import BadRequestError, InternalError, ModelLoadError
from service.runtimes import RuntimeOptions, TensorSpec, available_cpus, gpu_count, load_runtime
from tests.service.conftest import onnx_doubler, onnx_identity, save_onnx

CPU = RuntimeOptions(device="cpu")


@pytest.fixture(scope="module")
def doubler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_doubler(tmp_path_factory.mktemp("doubler") / "model.onnx")


def test_the_signature_is_read_from_the_artifact(doubler: Path) -> None:
    runtime = load_runtime("onnx", doubler, CPU)
    assert runtime.format == "onnx"
    assert runtime.signature_name == "serving_default"
    assert runtime.inputs == [TensorSpec("x", "FP32", (-1, 4))]
    assert runtime.outputs == [TensorSpec("y", "FP32", (-1, 4))]
    runtime.close()


def test_predict_runs_the_model_on_cpu(doubler: Path) -> None:
    runtime = load_runtime("onnx", doubler, CPU)
    assert runtime.device == "cpu"
    assert runtime.degraded is False
    out = runtime.predict({"x": np.arange(12, dtype=np.float32).reshape(3, 4)})
    assert list(out) == ["y"]
    assert out["y"].tolist() == (np.arange(12).reshape(3, 4) * 2).tolist()
    runtime.close()


def test_predict_takes_read_only_unaligned_views_of_a_request_body(doubler: Path) -> None:
    body = b"\x00" + np.arange(8, dtype="<f4").tobytes()
    x = np.frombuffer(memoryview(body)[1:], dtype="<f4").reshape(2, 4)
    assert not x.flags.writeable
    runtime = load_runtime("onnx", doubler, CPU)
    assert runtime.predict({"x": x})["y"].reshape(-1).tolist() == [2.0 * i for i in range(8)]
    runtime.close()


def test_auto_on_a_host_without_a_gpu_runs_on_cpu_undegraded(doubler: Path) -> None:
    if gpu_count() > 0:
        pytest.skip("this host has a GPU")
    runtime = load_runtime("onnx", doubler, RuntimeOptions(device="auto"))
    assert runtime.device == "cpu"
    assert runtime.degraded is False
    runtime.close()


def test_cuda_without_a_gpu_fails_to_load_with_a_reason_unless_cpu_fallback_is_allowed(doubler: Path) -> None:
    if gpu_count() > 0:
        pytest.skip("this host has a GPU")
    with pytest.raises(ModelLoadError, match=r"GPU.*CPU") as info:
        load_runtime("onnx", doubler, RuntimeOptions(device="cuda", allow_cpu_fallback=False))
    assert str(doubler) not in info.value.message
    runtime = load_runtime("onnx", doubler, RuntimeOptions(device="cuda", allow_cpu_fallback=True))
    assert runtime.device == "cpu"
    assert runtime.degraded is True
    assert runtime.predict({"x": np.ones((1, 4), np.float32)})["y"].tolist() == [[2.0] * 4]
    runtime.close()


def test_on_a_gpu_the_model_runs_on_cuda(doubler: Path) -> None:
    if gpu_count() == 0:
        pytest.skip("no GPU on this host")
    runtime = load_runtime("onnx", doubler, RuntimeOptions(device="cuda", allow_cpu_fallback=False))
    assert runtime.device == "cuda:0"
    assert runtime.degraded is False
    assert runtime.predict({"x": np.ones((2, 4), np.float32)})["y"].tolist() == [[2.0] * 4] * 2
    runtime.close()


def test_every_servable_element_type_maps_to_its_datatype(tmp_path: Path) -> None:
    types = {
        "b": TensorProto.BOOL,
        "u8": TensorProto.UINT8,
        "u16": TensorProto.UINT16,
        "u32": TensorProto.UINT32,
        "u64": TensorProto.UINT64,
        "i8": TensorProto.INT8,
        "i16": TensorProto.INT16,
        "i32": TensorProto.INT32,
        "i64": TensorProto.INT64,
        "f16": TensorProto.FLOAT16,
        "f32": TensorProto.FLOAT,
        "f64": TensorProto.DOUBLE,
        "s": TensorProto.STRING,
    }
    runtime = load_runtime("onnx", onnx_identity(tmp_path / "model.onnx", types, ["n", 2]), CPU)
    datatypes = {spec.name: spec.datatype for spec in runtime.inputs}
    assert datatypes == {
        "b": "BOOL",
        "u8": "UINT8",
        "u16": "UINT16",
        "u32": "UINT32",
        "u64": "UINT64",
        "i8": "INT8",
        "i16": "INT16",
        "i32": "INT32",
        "i64": "INT64",
        "f16": "FP16",
        "f32": "FP32",
        "f64": "FP64",
        "s": "BYTES",
    }
    assert {spec.name: spec.datatype for spec in runtime.outputs} == {f"{k}_out": v for k, v in datatypes.items()}
    assert all(spec.shape == (-1, 2) for spec in runtime.inputs)
    feeds = {spec.name: np.ones((1, 2), dtype=spec.dtype) for spec in runtime.inputs if spec.datatype != "BYTES"}
    feeds["s"] = np.array([[b"ab", b"c"]], dtype=object)
    out = runtime.predict(feeds)
    assert out["i64_out"].dtype == np.int64
    assert out["b_out"].tolist() == [[True, True]]
    assert out["s_out"].tolist() == [["ab", "c"]]
    runtime.close()


def test_bytes_inputs_reach_a_string_tensor_as_their_text(tmp_path: Path) -> None:
    runtime = load_runtime("onnx", onnx_identity(tmp_path / "model.onnx", {"s": TensorProto.STRING}, ["n"]), CPU)
    out = runtime.predict({"s": np.array([b"ab", "é".encode(), b"nul\x00", b""], dtype=object)})
    assert out["s_out"].tolist() == ["ab", "é", "nul\x00", ""]
    with pytest.raises(BadRequestError, match=r"input 's'.*UTF-8"):
        runtime.predict({"s": np.array([b"\xff"], dtype=object)})
    runtime.close()


def test_fixed_and_dynamic_dims_are_read(tmp_path: Path) -> None:
    runtime = load_runtime("onnx", onnx_identity(tmp_path / "model.onnx", {"x": TensorProto.FLOAT}, [2, "w", 3]), CPU)
    assert runtime.inputs == [TensorSpec("x", "FP32", (2, -1, 3))]
    runtime.close()


def test_an_unservable_output_type_fails_to_load_naming_the_tensor(tmp_path: Path) -> None:
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])],
        "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, ["n"])],
    )
    path = save_onnx(graph, tmp_path / "model.onnx")
    with pytest.raises(ModelLoadError, match=r"'seq'"):
        load_runtime("onnx", path, CPU)


def test_a_broken_artifact_fails_to_load_without_its_path(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"this is not protobuf")
    with pytest.raises(ModelLoadError, match=r"ONNX") as info:
        load_runtime("onnx", path, CPU)
    assert str(tmp_path) not in info.value.message
    with pytest.raises(ModelLoadError):
        load_runtime("onnx", tmp_path / "missing.onnx", CPU)


def test_a_failing_run_is_an_internal_error_with_a_generic_message(doubler: Path) -> None:
    runtime = load_runtime("onnx", doubler, CPU)
    with pytest.raises(InternalError) as info:
        runtime.predict({"x": np.ones((1, 4), np.float64)})
    assert info.value.message == "model execution failed"
    runtime.close()


def test_intra_op_threads_can_be_set(doubler: Path) -> None:
    runtime = load_runtime("onnx", doubler, RuntimeOptions(device="cpu", intra_op_threads=1))
    assert runtime.predict({"x": np.zeros((1, 4), np.float32)})["y"].shape == (1, 4)
    runtime.close()


def test_available_cpus_is_within_what_the_process_may_use() -> None:
    cpus = available_cpus()
    assert 1 <= cpus <= (os.cpu_count() or 1)
    assert cpus <= len(os.sched_getaffinity(0))


def test_gpu_count_is_a_count() -> None:
    assert gpu_count() >= 0
