"""gRPC on real server processes with the official clients unchanged: tritonclient.grpc, tensorflow-serving-api,
grpc.health.v1 and server reflection (what grpc_health_probe, Kubernetes probes and grpcurl use)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.api.conftest import MAX_BODY_BYTES, TOKEN, Server

pytestmark = pytest.mark.slow
AUTH = {"authorization": f"Bearer {TOKEN}"}  # gRPC metadata keys are lower case
X = np.arange(8, dtype=np.float32).reshape(2, 4)
EXPECTED = {1: np.stack([X.sum(1), -X.sum(1)], 1), 2: np.stack([2 * X.sum(1), -2 * X.sum(1)], 1)}


@pytest.fixture
def client(server: Server) -> Iterator[Any]:
    """A tritonclient.grpc client of the plain server (mlp 1 and 2, pair, echo, fixed, broken, badconfig)."""
    with triton.InferenceServerClient(server.grpc_target) as found:
        yield found


@pytest.fixture
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as opened:
        yield opened


def pixels(x: np.ndarray = X, name: str = "x") -> Any:
    tensor = triton.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


# ----- tritonclient.grpc ----------------------------------------------------------------------------


def test_tritonclient_health_metadata_and_config(client: Any) -> None:
    assert client.is_server_live()
    assert not client.is_server_ready()  # strict readiness: 'broken' never loads, as /v2/health/ready says
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "tandem"
    assert "model_repository" in server["extensions"]
    metadata = client.get_model_metadata("mlp", as_json=True)
    assert metadata["versions"] == ["1", "2"]
    assert metadata["platform"] == "onnx_onnxv1"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    config = client.get_model_config("mlp", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["4"]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": ["2"]}]
    assert config["parameters"]["version"] == {"string_value": "2"}


@pytest.mark.parametrize("version", ["", "1", "2"])
def test_tritonclient_infer_with_binary_data(client: Any, version: str) -> None:
    result = client.infer("mlp", [pixels()], model_version=version, request_id="g-1")
    np.testing.assert_array_equal(result.as_numpy("y"), EXPECTED[int(version or 2)])
    response = result.get_response()
    assert (response.id, response.model_version) == ("g-1", version or "2")


def test_tritonclient_async_infer_calls_back_with_the_result(client: Any) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.async_infer("mlp", [pixels()], lambda result, error: results.put((result, error)), model_version="1")
    result, error = results.get(timeout=30)
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("y"), EXPECTED[1])


def test_typed_contents_bytes_and_requested_outputs(channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="pair")
    request.inputs.add(name="a", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    request.inputs.add(name="b", datatype="INT64", shape=[1, 2]).contents.int64_contents.extend([7, 2**40])
    request.outputs.add(name="t")
    response = stub.ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == ["t"]
    assert np.frombuffer(response.raw_output_contents[0], "<i8").tolist() == [8, 2**40 + 1]
    text = service_pb2.ModelInferRequest(model_name="echo")
    text.inputs.add(name="s", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"a", "\u00e9".encode()])
    echoed = stub.ModelInfer(text, timeout=30)
    assert echoed.raw_output_contents[0] == b"\x01\0\0\0a\x02\0\0\0\xc3\xa9"


@pytest.mark.parametrize(
    ("model", "tensor", "code", "fragment"),
    [
        (
            "mlp",
            pixels(np.zeros((2, 5), np.float32)),
            "INVALID_ARGUMENT",
            "input 'x' expects shape [-1, 4], got [2, 5]",
        ),
        ("mlp", pixels(name="z"), "INVALID_ARGUMENT", "missing input(s) ['x'], unknown input(s) ['z']"),
        ("nope", pixels(), "NOT_FOUND", "model 'nope' not found"),
        ("broken", pixels(), "UNAVAILABLE", "not a loadable ONNX model"),
        ("mlp", pixels(np.zeros((1, MAX_BODY_BYTES // 4), np.float32)), "RESOURCE_EXHAUSTED", ""),
    ],
)
def test_tritonclient_raises_with_the_servers_status_and_message(
    client: Any, model: str, tensor: Any, code: str, fragment: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [tensor])
    assert info.value.status() == f"StatusCode.{code}"
    assert fragment in info.value.message()
    assert client.is_server_live()


def test_tritonclient_statistics_and_repository_index(client: Any) -> None:
    client.infer("mlp", [pixels()], model_version="1")
    stats = client.get_inference_statistics("mlp", "1", as_json=True)["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("mlp", "1")]
    assert int(stats[0]["inference_count"]) >= 2
    assert int(stats[0]["inference_stats"]["success"]["count"]) >= 1
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {"mlp", "pair"} <= {s["name"] for s in everything}
    index = client.get_model_repository_index(as_json=True)["models"]
    broken = next(m for m in index if m["name"] == "broken")
    assert broken["state"] == "UNAVAILABLE"
    assert "not a loadable ONNX model" in broken["reason"]
    with pytest.raises(InferenceServerException) as info:
        client.load_model("mlp")
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"


def test_tritonclient_load_and_unload_behind_the_token(control_server: Server) -> None:
    with triton.InferenceServerClient(control_server.grpc_target) as client:
        with pytest.raises(InferenceServerException) as info:
            client.unload_model("multi")
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        client.unload_model("multi", headers=AUTH)
        assert not client.is_model_ready("multi")
        client.load_model("multi", headers=AUTH)
        assert client.is_model_ready("multi")
        with pytest.raises(InferenceServerException) as info:
            client.load_model("nope", headers=AUTH)
        assert info.value.status() == "StatusCode.NOT_FOUND"


# ----- health checking and reflection ----------------------------------------------------------------


def test_health_follows_readiness(server: Server, control_server: Server) -> None:
    for running, expected in ((server, "NOT_SERVING"), (control_server, "SERVING")):
        with grpc.insecure_channel(running.grpc_target) as opened:
            health = health_pb2_grpc.HealthStub(opened)
            for service in ("", "inference.GRPCInferenceService", "tensorflow.serving.PredictionService"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status) == expected
            with pytest.raises(grpc.RpcError) as info:
                health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_every_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    asks = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="tensorflow.serving.PredictionService"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.ModelInferRequest"),
    ]
    listed, prediction, kserve = list(stub.ServerReflectionInfo(iter(asks), timeout=30))
    assert {s.name for s in listed.list_services_response.service} == {
        "inference.GRPCInferenceService",
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert len(prediction.file_descriptor_response.file_descriptor_proto) > 1
    assert kserve.file_descriptor_response.file_descriptor_proto
