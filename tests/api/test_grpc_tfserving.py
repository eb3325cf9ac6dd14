"""TF Serving over gRPC on a real server process, with tensorflow-serving-api's PredictionService client unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from tests.api.conftest import Server

pytestmark = pytest.mark.slow
tf = pytest.importorskip("tensorflow")
apis = pytest.importorskip("tensorflow_serving.apis")
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as opened:
        yield opened


@pytest.fixture
def stub(channel: grpc.Channel) -> Any:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(name: str = "mlp", **inputs: Any) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in (inputs or {"x": X}).items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


@pytest.mark.parametrize(("how", "value", "version"), [("", None, 2), ("version", 1, 1), ("label", "canary", 2)])
def test_predict_by_name_version_and_label(stub: Any, how: str, value: Any, version: int) -> None:
    request = predict_request()
    if how == "version":
        request.model_spec.version.value = value
    elif how == "label":
        request.model_spec.version_label = value
    response = stub.Predict(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("mlp", version)
    assert response.model_spec.signature_name == "serving_default"
    expected = np.stack([version * X.sum(1), -version * X.sum(1)], 1)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), expected)
    assert list(response.outputs["y"].float_val) == expected.reshape(-1).tolist()  # typed fields, as TF Serving


def test_predict_with_strings_several_inputs_and_an_output_filter(stub: Any) -> None:
    echoed = stub.Predict(predict_request("echo", s=np.array([b"a", "\u00e9".encode()])), timeout=30)
    assert list(echoed.outputs["key_bytes"].string_val) == [b"a", "\u00e9".encode()]
    request = predict_request("pair", a=np.ones((1, 3), np.float32), b=np.array([[1, 2]], np.int64))
    request.output_filter.append("t")
    response = stub.Predict(request, timeout=30)
    assert list(response.outputs) == ["t"]
    assert tf.make_ndarray(response.outputs["t"]).tolist() == [[2, 3]]


@pytest.mark.parametrize(
    ("change", "code", "fragment"),
    [
        (lambda r: r.model_spec.__setattr__("name", "nope"), "NOT_FOUND", "model 'nope' not found"),
        (lambda r: r.model_spec.version.__setattr__("value", 9), "NOT_FOUND", "has no version 9"),
        (lambda r: r.model_spec.__setattr__("version_label", "gone"), "NOT_FOUND", "has no label 'gone'"),
        (lambda r: r.model_spec.__setattr__("signature_name", "other"), "INVALID_ARGUMENT", "unknown signature"),
        (lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto(X.astype(np.float64))), "INVALID_ARGUMENT", "FP64"),
        (lambda r: r.inputs["z"].CopyFrom(tf.make_tensor_proto(X)), "INVALID_ARGUMENT", "unknown input(s) ['z']"),
        (lambda r: r.inputs["x"].__setattr__("tensor_content", b"\0" * 5), "INVALID_ARGUMENT", "tensor_content"),
        (lambda r: r.output_filter.append("q"), "INVALID_ARGUMENT", "unknown output 'q'"),
    ],
)
def test_bad_predict_requests_get_a_status_naming_the_problem(stub: Any, change: Any, code: str, fragment: str) -> None:
    request = predict_request()
    change(request)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    assert info.value.code().name == code
    assert fragment in (info.value.details() or "")


def test_classify_and_regress_are_refused_clearly(stub: Any) -> None:
    for call, request in (
        (stub.Classify, classification_pb2.ClassificationRequest()),
        (stub.Regress, regression_pb2.RegressionRequest()),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "use Predict" in (info.value.details() or "")


def test_get_model_metadata_returns_the_signature(stub: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "mlp"
    request.model_spec.version_label = "stable"
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("mlp", 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert signature.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in signature.inputs["x"].tensor_shape.dim] == [-1, 4]
    assert [d.size for d in signature.outputs["y"].tensor_shape.dim] == [-1, 2]
    request.metadata_field[0] = "bogus"
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_status_reports_each_version_and_failures(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "mlp"
    states = stub.GetModelStatus(request, timeout=30).model_version_status
    assert [(s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state)) for s in states] == [
        (2, "AVAILABLE"),
        (1, "AVAILABLE"),
    ]
    request.model_spec.name = "broken"
    [broken] = stub.GetModelStatus(request, timeout=30).model_version_status
    assert get_model_status_pb2.ModelVersionStatus.State.Name(broken.state) == "END"
    assert "not a loadable ONNX model" in broken.status.error_message
