"""Fuzzed ModelInfer and Predict messages never get INTERNAL or UNKNOWN, and the server keeps serving.

Random bytes, and random but well-formed messages (any datatype, shape, contents, raw bytes, parameters,
model spec), go to the session server process (real ONNX Runtime models) over one channel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from service.grpc.protos import message
from tests.api.conftest import Server

pytestmark = pytest.mark.slow
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
# Weighted towards what the models accept, so that many examples get past the lookup into decoding and validation.
MODELS = ["mlp", "mlp", "mlp", "pair", "pair", "echo", "echo", "fixed", "broken", "nope", "", "../x"]
VERSIONS = ["", "", "", "", "1", "2", "01", "-1", "x", "99999999999999999999"]
NAMES = ["x", "x", "a", "b", "s", "y", "t", ""]
DATATYPES = (
    ["FP32"] * 4 + ["INT64", "BYTES"] * 2 + ["BOOL", "UINT8", "INT8", "INT16", "INT32", "UINT64", "FP16", "FP64"]
)
DATATYPES += ["BF16", "?"]
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
PredictRequest = message("tensorflow.serving.PredictRequest")

dims = st.lists(st.integers(0, 4) | st.integers(-2, 5) | st.sampled_from([2**31, 2**62, 2**63 - 1]), max_size=3)
contents = st.fixed_dictionaries(
    {},
    optional={
        "bool_contents": st.lists(st.booleans(), max_size=8),
        "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
        "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
        "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=8),
        "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=8),
        "fp32_contents": st.lists(st.floats(width=32), max_size=8),
        "fp64_contents": st.lists(st.floats(), max_size=8),
        "bytes_contents": st.lists(st.binary(max_size=6), max_size=4),
    },
)
parameter = st.one_of(
    st.builds(lambda v: {"bool_param": v}, st.booleans()),
    st.builds(lambda v: {"int64_param": v}, st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: {"string_param": v}, st.text(max_size=6)),
)
parameters = st.dictionaries(st.sampled_from(["timeout", "priority", "sequence_id", "binary_data_output"]), parameter)
infer_input = st.fixed_dictionaries(
    {"name": st.sampled_from(NAMES), "datatype": st.sampled_from(DATATYPES), "shape": dims},
    optional={"contents": contents, "parameters": parameters},
)
infer_request = st.fixed_dictionaries(
    {
        "model_name": st.sampled_from(MODELS),
        "model_version": st.sampled_from(VERSIONS),
        "inputs": st.lists(infer_input, max_size=3),
    },
    optional={
        "id": st.text(max_size=8),
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(NAMES)}), max_size=3),
        "parameters": parameters,
        "raw_input_contents": st.lists(st.binary(max_size=64), max_size=3),
    },
)
tensor_proto = st.fixed_dictionaries(
    {"dtype": st.integers(0, 30)},
    optional={
        "tensor_shape": st.fixed_dictionaries(
            {"dim": st.lists(st.fixed_dictionaries({"size": st.integers(-2, 5) | st.just(2**62)}), max_size=3)},
            optional={"unknown_rank": st.booleans()},
        ),
        "tensor_content": st.binary(max_size=64),
        "float_val": st.lists(st.floats(width=32), max_size=8),
        "int_val": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
        "int64_val": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
        "half_val": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4),
        "string_val": st.lists(st.binary(max_size=6), max_size=4),
        "bool_val": st.lists(st.booleans(), max_size=4),
    },
)
model_spec = st.fixed_dictionaries(
    {"name": st.sampled_from(MODELS)},
    optional={
        "version": st.fixed_dictionaries({"value": st.integers(-(2**63), 2**63 - 1)}),
        "version_label": st.sampled_from(["stable", "canary", "gone", "bad label"]),
        "signature_name": st.sampled_from(["", "serving_default", "other"]),
    },
)


@st.composite
def near_valid_infer(draw: st.DrawFn) -> dict[str, Any]:
    """An mlp request right or slightly wrong: exact or random raw bytes, typed floats, or both."""
    rows = draw(st.integers(0, 3))
    datatype = draw(st.sampled_from(["FP32", "FP32", "FP32", "FP16", "BYTES", "INT8"]))
    exact = st.binary(min_size=rows * 16, max_size=rows * 16)
    raw = draw(st.none() | exact | st.binary(max_size=64))
    floats = st.lists(st.floats(width=32), min_size=rows * 4, max_size=rows * 4) | st.lists(st.floats(width=32))
    typed = draw(st.none() | floats)
    tensor: dict[str, Any] = {"name": "x", "datatype": datatype, "shape": [rows, 4]}
    if typed is not None:
        tensor["contents"] = {"fp32_contents": typed}
    return {"model_name": "mlp", "inputs": [tensor], "raw_input_contents": [] if raw is None else [raw]}


predict_request = st.fixed_dictionaries(
    {"model_spec": model_spec, "inputs": st.dictionaries(st.sampled_from(NAMES), tensor_proto, max_size=3)},
    optional={"output_filter": st.lists(st.sampled_from(NAMES), max_size=3)},
)


@st.composite
def near_valid_predict(draw: st.DrawFn) -> dict[str, Any]:
    """An mlp Predict right or slightly wrong: tensor_content exact or random, or float_val of any length."""
    rows = draw(st.integers(0, 3))
    tensor: dict[str, Any] = {"dtype": draw(st.sampled_from([1, 1, 1, 2, 7, 19])), "tensor_shape": {}}
    tensor["tensor_shape"]["dim"] = [{"size": rows}, {"size": 4}]
    if draw(st.booleans()):
        exact = st.binary(min_size=rows * 16, max_size=rows * 16)
        tensor["tensor_content"] = draw(exact | st.binary(max_size=64))
    else:
        tensor["float_val"] = draw(st.lists(st.floats(width=32), max_size=rows * 4 + 1))
    spec = draw(st.sampled_from([{}, {"version": {"value": 1}}, {"version_label": "canary"}]))
    return {"model_spec": {"name": "mlp", **spec}, "inputs": {"x": tensor}}


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as opened:
        yield opened


def call(channel: grpc.Channel, method: str, payload: bytes) -> None:
    """One call with serialized bytes; any status but INTERNAL or UNKNOWN (and never a hang) passes."""
    code, details = grpc.StatusCode.OK, ""
    try:
        channel.unary_unary(method)(payload, timeout=30)
    except grpc.RpcError as error:
        code, details = error.code(), error.details()
    assert code not in FORBIDDEN, (code, details, payload[:200])


INFER = "/inference.GRPCInferenceService/ModelInfer"
PREDICT = "/tensorflow.serving.PredictionService/Predict"


@FUZZ
@given(method=st.sampled_from([INFER, PREDICT]), payload=st.binary(max_size=256))
def test_random_bytes_never_internal(channel: grpc.Channel, method: str, payload: bytes) -> None:
    call(channel, method, payload)


@FUZZ
@given(fields=infer_request | near_valid_infer())
def test_structured_model_infer_requests_never_internal(channel: grpc.Channel, fields: dict[str, Any]) -> None:
    call(channel, INFER, service_pb2.ModelInferRequest(**fields).SerializeToString())


@FUZZ
@given(fields=predict_request | near_valid_predict())
def test_structured_predict_requests_never_internal(channel: grpc.Channel, fields: dict[str, Any]) -> None:
    call(channel, PREDICT, PredictRequest(**fields).SerializeToString())


def test_the_server_still_serves_after_fuzzing(channel: grpc.Channel) -> None:
    live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=30)
    assert service_pb2.ServerLiveResponse.FromString(live).live


def test_a_malformed_message_is_invalid_argument(channel: grpc.Channel) -> None:
    """What the fuzzer mostly sees: a clear INVALID_ARGUMENT naming the message type."""
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(INFER)(b"\xff\xff", timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "malformed inference.ModelInferRequest message"
