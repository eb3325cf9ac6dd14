"""The bundled examples over gRPC with the official clients: eight digits classified by both models, both protocols."""

from __future__ import annotations

import queue
from typing import Any

import grpc
import numpy as np
import pytest

from tests.api.conftest import Server

pytestmark = pytest.mark.slow
triton = pytest.importorskip("tritonclient.grpc")
datasets = pytest.importorskip("sklearn.datasets")
MODELS = {"digits_mlp": ("pixels", (64,)), "digits_cnn": ("image", (8, 8, 1))}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Eight samples of scikit-learn's bundled digits (0 to 7), raw 0-16 pixel values, and their labels."""
    bundled = datasets.load_digits()
    return bundled.data[:8].astype(np.float32), bundled.target[:8]


def batch(model: str, pixels: np.ndarray) -> tuple[str, np.ndarray]:
    name, shape = MODELS[model]
    return name, pixels.reshape(len(pixels), *shape)


@pytest.mark.parametrize("model", MODELS)
def test_tritonclient_grpc_on_both_examples(
    examples: Server, digits: tuple[np.ndarray, np.ndarray], model: str
) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException

    pixels, labels = digits
    name, x = batch(model, pixels)
    with triton.InferenceServerClient(examples.grpc_target) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(model)
        assert client.get_model_metadata(model, as_json=True)["inputs"][0]["name"] == name
        assert client.get_model_config(model, as_json=True)["config"]["name"] == model
        tensor = triton.InferInput(name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)  # raw_input_contents: the binary path
        np.testing.assert_array_equal(client.infer(model, [tensor]).as_numpy("probabilities").argmax(1), labels)
        done: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.async_infer(model, [tensor], lambda result, error: done.put((result, error)))
        result, error = done.get(timeout=60)
        assert error is None
        np.testing.assert_array_equal(result.as_numpy("probabilities").argmax(1), labels)
        wrong = triton.InferInput(name, [8, 65], "FP32")
        wrong.set_data_from_numpy(np.zeros((8, 65), np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, [wrong])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert f"input '{name}' expects shape" in info.value.message()
    with grpc.insecure_channel(examples.grpc_target) as channel:  # typed contents, with the client's own stub
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name=name, datatype="FP32", shape=x.shape).contents.fp32_contents.extend(x.reshape(-1))
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    probabilities = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(8, 10)
    np.testing.assert_array_equal(probabilities.argmax(1), labels)


@pytest.mark.parametrize("model", MODELS)
def test_tensorflow_serving_api_on_both_examples(
    examples: Server, digits: tuple[np.ndarray, np.ndarray], model: str
) -> None:
    tf = pytest.importorskip("tensorflow")
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

    pixels, labels = digits
    name, x = batch(model, pixels)
    with grpc.insecure_channel(examples.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for choose in (
            lambda spec: None,
            lambda spec: spec.version.__setattr__("value", 1),
            lambda spec: spec.__setattr__("version_label", "stable"),
        ):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model
            choose(request.model_spec)
            request.inputs[name].CopyFrom(tf.make_tensor_proto(x))
            response = stub.Predict(request, timeout=60)
            assert response.model_spec.version.value == 1
            np.testing.assert_array_equal(tf.make_ndarray(response.outputs["probabilities"]).argmax(1), labels)
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = model
        answer = stub.GetModelMetadata(metadata, timeout=60)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    answer.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert [d.size for d in signature.inputs[name].tensor_shape.dim] == [-1, *MODELS[model][1]]
    assert [d.size for d in signature.outputs["probabilities"].tensor_shape.dim] == [-1, 10]
