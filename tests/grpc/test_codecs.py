"""The gRPC codecs as pure functions (TensorProto by TensorFlow's rules, ModelInferRequest contents); status codes."""

from __future__ import annotations

import inspect
from typing import Any

import grpc
import numpy as np
import pytest

from service import errors
from service.errors import BadRequestError, PayloadTooLargeError
from service.grpc.codec_kserve import decode_request, encode_response
from service.grpc.protos import enum_values, message
from service.grpc.status import status_code
from service.grpc.tensor_proto import fill_tensor_proto, to_array

DT = enum_values("tensorflow.DataType")
TensorProto = message("tensorflow.TensorProto")
InferRequest = message("inference.ModelInferRequest")
LIMIT = 1 << 20


def tensor(dtype: str, shape: list[int], **values: Any) -> Any:
    proto = TensorProto(dtype=DT[dtype], **values)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


# ----- TensorProto ----------------------------------------------------------------------------------


def test_tensor_content_is_little_endian_bytes() -> None:
    arr = np.arange(6, dtype="<f4").reshape(2, 3)
    out = to_array(tensor("DT_FLOAT", [2, 3], tensor_content=arr.tobytes()), "x", LIMIT)
    np.testing.assert_array_equal(out, arr)


def test_short_typed_fields_repeat_the_last_value_and_none_means_zeros() -> None:
    np.testing.assert_array_equal(to_array(tensor("DT_INT32", [2, 2], int_val=[1, 2]), "x", LIMIT), [[1, 2], [2, 2]])
    np.testing.assert_array_equal(to_array(tensor("DT_FLOAT", [3]), "x", LIMIT), [0.0, 0.0, 0.0])
    strings = to_array(tensor("DT_STRING", [2], string_val=[b"a"]), "x", LIMIT)
    assert strings.tolist() == [b"a", b"a"]


def test_half_val_carries_float16_bit_patterns() -> None:
    halves = np.array([1.5, -2.0], dtype=np.float16)
    out = to_array(tensor("DT_HALF", [2], half_val=halves.view(np.uint16).tolist()), "x", LIMIT)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, halves)


@pytest.mark.parametrize(
    ("proto", "fragment"),
    [
        (tensor("DT_FLOAT", [2], tensor_content=b"\0" * 7), "needs 8 bytes of tensor_content, got 7"),
        (tensor("DT_FLOAT", [2], int_val=[1]), "DT_FLOAT values go in float_val or tensor_content, got ['int_val']"),
        (tensor("DT_FLOAT", [1], float_val=[1, 2]), "holds 1 elements, float_val has 2"),
        (tensor("DT_FLOAT", [1], float_val=[1], tensor_content=b"\0" * 4), "not both"),
        (tensor("DT_STRING", [1], tensor_content=b"\0"), "not both"),
        (tensor("DT_INT8", [1], int_val=[300]), "out of range for INT8"),
        (tensor("DT_HALF", [1], half_val=[-1]), "out of range"),
        (tensor("DT_BOOL", [1], tensor_content=b"\x02"), "must be 0 or 1"),
        (tensor("DT_COMPLEX64", [1]), "DT_COMPLEX64 is not supported"),
        (tensor("DT_BFLOAT16", [1]), "DT_BFLOAT16 is not supported"),
        (tensor("DT_FLOAT", [-1]), "non-negative"),
        (TensorProto(dtype=DT["DT_FLOAT"], tensor_shape={"unknown_rank": True}), "known rank"),
    ],
)
def test_bad_tensor_protos_name_the_problem(proto: Any, fragment: str) -> None:
    with pytest.raises(BadRequestError) as info:
        to_array(proto, "input 'x'", LIMIT)
    assert fragment in info.value.message
    assert info.value.message.startswith("input 'x'")


def test_a_broadcast_past_the_size_limit_is_refused() -> None:
    with pytest.raises(PayloadTooLargeError):
        to_array(tensor("DT_FLOAT", [LIMIT], float_val=[1.0]), "x", LIMIT)


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([[1, -2]], dtype=np.int8),
        np.array([2**40], dtype=np.int64),
        np.array([2**63 + 1], dtype=np.uint64),
        np.array([True, False]),
        np.array([0.5, -1], dtype=np.float16),
        np.array([[b"a", b"\xff"]], dtype=object),
    ],
)
def test_responses_round_trip_through_the_typed_fields(arr: np.ndarray) -> None:
    proto = TensorProto()
    fill_tensor_proto(proto, arr)
    assert not proto.tensor_content
    back = to_array(TensorProto.FromString(proto.SerializeToString()), "y", LIMIT)
    assert back.shape == arr.shape
    assert back.tolist() == arr.tolist()


# ----- ModelInferRequest ----------------------------------------------------------------------------


def infer_request(*inputs: dict[str, Any], raw: list[bytes] | None = None) -> Any:
    request = InferRequest(model_name="m", inputs=list(inputs))
    request.raw_input_contents.extend(raw or [])
    return request


def test_typed_contents_decode_per_datatype() -> None:
    request = infer_request(
        {"name": "a", "datatype": "INT16", "shape": [2], "contents": {"int_contents": [-3, 4]}},
        {"name": "b", "datatype": "BYTES", "shape": [1, 1], "contents": {"bytes_contents": [b"hi"]}},
        {"name": "c", "datatype": "BOOL", "shape": [2], "contents": {"bool_contents": [True, False]}},
    )
    arrays, outputs, params = decode_request(request, LIMIT)
    assert arrays["a"].dtype == np.int16
    assert arrays["a"].tolist() == [-3, 4]
    assert arrays["b"].tolist() == [[b"hi"]]
    assert arrays["c"].tolist() == [True, False]
    assert outputs is None
    assert params == {}


def test_raw_contents_decode_and_requested_outputs_keep_their_order() -> None:
    x = np.arange(4, dtype=np.float32)
    request = infer_request({"name": "x", "datatype": "FP32", "shape": [1, 4]}, raw=[x.tobytes()])
    request.outputs.add(name="b")
    request.outputs.add(name="a")
    request.parameters["timeout"].int64_param = 7
    arrays, outputs, params = decode_request(request, LIMIT)
    np.testing.assert_array_equal(arrays["x"], x.reshape(1, 4))
    assert outputs == ("b", "a")
    assert params == {"timeout": 7}


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (infer_request({"name": "x", "datatype": "FP32", "shape": [2]}, raw=[b"\0" * 4]), "needs 8 bytes"),
        (
            infer_request(
                {"name": "x", "datatype": "FP32", "shape": [1], "contents": {"fp32_contents": [1]}}, raw=[b"\0" * 4]
            ),
            "both typed contents and raw_input_contents",
        ),
        (infer_request({"name": "x", "datatype": "FP32", "shape": [1]}), "needs contents or raw_input_contents"),
        (
            infer_request({"name": "x", "datatype": "FP32", "shape": [1], "contents": {"fp64_contents": [1]}}),
            "FP32 data goes in contents.fp32_contents, got fp64_contents",
        ),
        (
            infer_request({"name": "x", "datatype": "INT8", "shape": [1], "contents": {"int_contents": [200]}}),
            "out of range for INT8",
        ),
        (infer_request({"name": "x", "datatype": "FP16", "shape": [1], "contents": {}}), "send raw_input_contents"),
        (infer_request({"name": "x", "datatype": "FP99", "shape": [1]}), "unsupported datatype 'FP99'"),
        (infer_request({"name": "x", "datatype": "FP32", "shape": [-1]}, raw=[b""]), "non-negative"),
        (infer_request({"name": "x", "datatype": "BOOL", "shape": [1]}, raw=[b"\x07"]), "bytes 0 or 1"),
        (infer_request({"name": "x", "datatype": "BYTES", "shape": [1]}, raw=[b"\x09\0\0\0ab"]), "overruns"),
        (infer_request({"name": "x", "datatype": "FP32", "shape": [1]}, raw=[b"", b""]), "2 entries for 1 inputs"),
        (infer_request(), "'inputs' must not be empty"),
    ],
)
def test_bad_infer_requests_name_the_problem(request_: Any, fragment: str) -> None:
    with pytest.raises(BadRequestError) as info:
        decode_request(request_, LIMIT)
    assert fragment in info.value.message


def test_unsupported_protocol_features_are_refused_by_name() -> None:
    request = infer_request({"name": "x", "datatype": "FP32", "shape": [1]}, raw=[b"\0" * 4])
    request.parameters["sequence_id"].int64_param = 3
    with pytest.raises(BadRequestError, match="'sequence_id' is not supported"):
        decode_request(request, LIMIT)


def test_responses_carry_every_output_raw() -> None:
    outputs = {"y": np.array([[1.5]], dtype=np.float32), "s": np.array([b"ab", b""], dtype=object)}
    response = message("inference.ModelInferResponse").FromString(encode_response("m", 3, "id-1", outputs))
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "id-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("y", "FP32", [1, 1]),
        ("s", "BYTES", [2]),
    ]
    assert response.raw_output_contents[0] == np.float32(1.5).tobytes()
    assert response.raw_output_contents[1] == b"\x02\0\0\0ab\0\0\0\0"


# ----- status codes ---------------------------------------------------------------------------------


def test_every_client_facing_error_has_a_grpc_code_and_only_internal_faults_are_internal() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.ServiceError)]
    for cls in classes:
        code = status_code(cls.__new__(cls))
        internal = cls in (errors.ServiceError, errors.InternalError)
        assert (code == grpc.StatusCode.INTERNAL) == internal, (cls.__name__, code)
    assert status_code(errors.QueueFullError("full")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_code(errors.ModelNotReadyError("loading")) == grpc.StatusCode.UNAVAILABLE
    assert status_code(errors.ModelLoadError("bad")) == grpc.StatusCode.INVALID_ARGUMENT
