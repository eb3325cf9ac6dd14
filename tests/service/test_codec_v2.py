"""service.codec_v2: the V2 infer request and response, as JSON and with the binary tensor extension."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest

from service.codec import serialize_bytes_tensor
from service.codec_v2 import V2Request, decode_request, encode_response, select_outputs
from service.errors import BadRequestError, PayloadTooLargeError
from service.tensors import DATATYPE_TO_NUMPY

MAX = 1 << 20
FIXED_SIZE = [t for t in DATATYPE_TO_NUMPY if t != "BYTES"]


def body(**request: Any) -> bytes:
    return orjson.dumps(request)


def binary_body(head: dict[str, Any], *blobs: bytes) -> tuple[bytes, str]:
    header = orjson.dumps(head)
    return header + b"".join(blobs), str(len(header))


def tensor(name: str = "x", shape: list[Any] | None = None, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    return {"name": name, "shape": [2, 2] if shape is None else shape, "datatype": datatype, **extra}


def decode(raw: bytes, header_length: str | None = None, max_bytes: int = MAX) -> V2Request:
    return decode_request(raw, header_length, max_bytes)


# ----- JSON requests ----------------------------------------------------------------------------


def test_a_json_request_decodes_flat_and_nested_data_alike() -> None:
    flat = decode(body(inputs=[tensor(data=[1, 2, 3, 4.5])]))
    nested = decode(body(inputs=[tensor(data=[[1, 2], [3, 4.5]])]))
    for req in (flat, nested):
        assert req.inputs["x"].dtype == np.float32
        assert req.inputs["x"].tolist() == [[1.0, 2.0], [3.0, 4.5]]
    assert flat.id is None
    assert flat.outputs is None
    assert flat.binary_output is False
    assert flat.timeout_us is None


def test_request_fields_are_read() -> None:
    req = decode(
        body(
            id="r1",
            parameters={"timeout": 1500, "binary_data_output": True, "priority": 3, "custom": "kept quiet"},
            inputs=[tensor(data=[1, 2, 3, 4])],
            outputs=[{"name": "b", "parameters": {"binary_data": False}}, {"name": "a"}],
        )
    )
    assert req.id == "r1"
    assert req.timeout_us == 1500
    assert req.binary_output is True
    assert req.outputs == [("b", False), ("a", None)]


def test_nan_and_infinity_tokens_are_accepted_in_requests() -> None:
    raw = b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [NaN, Infinity, -Infinity]}]}'
    arr = decode(raw).inputs["x"]
    assert math.isnan(arr[0])
    assert arr[1:].tolist() == [math.inf, -math.inf]


def test_several_inputs_keep_their_own_datatypes() -> None:
    req = decode(
        body(
            inputs=[
                tensor("ids", [1, 3], "INT64", data=[1, 2, 3]),
                tensor("mask", [1, 3], "BOOL", data=[True, False, True]),
                tensor("text", [1], "BYTES", data=["héllo"]),
            ]
        )
    )
    assert req.inputs["ids"].dtype == np.int64
    assert req.inputs["mask"].dtype == np.bool_
    assert req.inputs["text"].tolist() == ["héllo".encode()]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "empty"),
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (body(inputs=[tensor(data=[1, 2, 3, 4])], extra=1), r"unknown key.*extra"),
        (body(inputs=[]), "'inputs' must be a non-empty list"),
        (body(inputs={"x": 1}), "'inputs' must be a non-empty list"),
        (body(), "'inputs'"),
        (body(inputs=[{"shape": [1], "datatype": "FP32", "data": [1]}]), r"inputs\[0\].*'name'"),
        (body(inputs=[tensor(data=[1, 2, 3, 4]), tensor(data=[1, 2, 3, 4])]), "input 'x' appears more than once"),
        (body(inputs=[tensor()]), r"input 'x'.*'data'"),
        (body(inputs=[{"name": "x", "shape": [1], "data": [1]}]), r"input 'x'.*'datatype'"),
        (body(inputs=[tensor(datatype="FLOAT32", data=[1, 2, 3, 4])]), "unsupported datatype 'FLOAT32'"),
        (body(inputs=[tensor(shape=[2, "2"], data=[1, 2, 3, 4])]), r"input 'x'.*shape"),
        (body(inputs=[tensor(data=[1, 2, 3])]), r"input 'x'.*needs 4 elements, data has 3"),
        (body(inputs=[tensor(data=[[1, 2], [3]])]), r"input 'x'.*rectangular"),
        (body(inputs=[tensor(datatype="INT32", data=[1, 2, 3, 4.5])]), r"input 'x'.*INT32.*floats"),
        (body(inputs=[tensor(datatype="INT8", data=[1, 2, 3, 128])]), r"input 'x'.*out of range"),
        (body(inputs=[tensor(datatype="FP32", data=[True, False, True, True])]), r"input 'x'.*FP32"),
        (body(id=7, inputs=[tensor(data=[1, 2, 3, 4])]), "'id' must be a string"),
        (body(parameters=[], inputs=[tensor(data=[1, 2, 3, 4])]), "'parameters' must be an object"),
        (body(parameters={"timeout": 0}, inputs=[tensor(data=[1, 2, 3, 4])]), "timeout"),
        (body(parameters={"timeout": 1.5}, inputs=[tensor(data=[1, 2, 3, 4])]), "timeout"),
        (body(parameters={"timeout": "9"}, inputs=[tensor(data=[1, 2, 3, 4])]), "timeout"),
        (body(parameters={"binary_data_output": 1}, inputs=[tensor(data=[1, 2, 3, 4])]), "binary_data_output"),
        (body(parameters={"sequence_id": 3}, inputs=[tensor(data=[1, 2, 3, 4])]), "'sequence_id' is not supported"),
        (
            body(inputs=[tensor(data=[1, 2, 3, 4], parameters={"shared_memory_region": "r"})]),
            "'shared_memory_region' is not supported",
        ),
        (body(inputs=[tensor(data=[1, 2, 3, 4])], outputs={"y": 1}), "'outputs' must be a list"),
        (body(inputs=[tensor(data=[1, 2, 3, 4])], outputs=[{"parameters": {}}]), r"outputs\[0\].*'name'"),
        (
            body(inputs=[tensor(data=[1, 2, 3, 4])], outputs=[{"name": "y", "parameters": {"classification": 2}}]),
            "'classification' is not supported",
        ),
        (
            body(inputs=[tensor(data=[1, 2, 3, 4])], outputs=[{"name": "y"}, {"name": "y"}]),
            "output 'y' is requested more than once",
        ),
        (
            body(inputs=[tensor(data=[1, 2, 3, 4])], outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]),
            "binary_data must be true or false",
        ),
    ],
)
def test_bad_json_requests_are_bad_requests_naming_the_problem(raw: bytes, problem: str) -> None:
    with pytest.raises(BadRequestError, match=problem):
        decode(raw)


def test_a_huge_shape_is_too_large_before_the_data_is_read() -> None:
    with pytest.raises(PayloadTooLargeError, match=r"input 'x'"):
        decode(body(inputs=[tensor(shape=[2**31, 2**31], data=[])]))
    with pytest.raises(PayloadTooLargeError, match=r"input 'x'"):
        decode(body(inputs=[tensor(shape=[2**20, 1], datatype="FP64", data=[])]), max_bytes=MAX)


def test_deeply_nested_data_is_a_bad_request() -> None:
    raw = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}]}"
    with pytest.raises(BadRequestError):
        decode(raw)


# ----- binary requests --------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", FIXED_SIZE)
def test_binary_inputs_of_every_fixed_size_type_decode_little_endian(datatype: str) -> None:
    values = np.array([[0, 1, 1], [1, 0, 1]], dtype=DATATYPE_TO_NUMPY[datatype])
    raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
    payload, length = binary_body(
        {"inputs": [tensor(shape=[2, 3], datatype=datatype, parameters={"binary_data_size": len(raw)})]}, raw
    )
    arr = decode(payload, length).inputs["x"]
    assert arr.dtype == values.dtype
    assert arr.shape == (2, 3)
    assert arr.tolist() == values.tolist()


def test_binary_inputs_take_their_bytes_in_input_order_beside_json_inputs() -> None:
    a = np.arange(4, dtype="<f4")
    b = np.array([7, -7], dtype="<i8")
    texts = serialize_bytes_tensor(np.array([b"one", b"", b"three"], dtype=object))
    head = {
        "inputs": [
            tensor("a", [4], "FP32", parameters={"binary_data_size": a.nbytes}),
            tensor("j", [1], "INT32", data=[5]),
            tensor("s", [3], "BYTES", parameters={"binary_data_size": len(texts)}),
            tensor("b", [2], "INT64", parameters={"binary_data_size": b.nbytes}),
        ]
    }
    payload, length = binary_body(head, a.tobytes(), texts, b.tobytes())
    got = decode(payload, length).inputs
    assert got["a"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert got["j"].tolist() == [5]
    assert got["s"].tolist() == [b"one", b"", b"three"]
    assert got["b"].tolist() == [7, -7]


def test_binary_fp16_is_ieee_half() -> None:
    raw = np.array([1.5, -2.0], dtype="<f2").tobytes()
    payload, length = binary_body(
        {"inputs": [tensor(shape=[2], datatype="FP16", parameters={"binary_data_size": 4})]}, raw
    )
    assert decode(payload, length).inputs["x"].tolist() == [1.5, -2.0]


def test_binary_bool_takes_only_zero_and_one_bytes() -> None:
    payload, length = binary_body(
        {"inputs": [tensor(shape=[2], datatype="BOOL", parameters={"binary_data_size": 2})]}, b"\x01\x02"
    )
    with pytest.raises(BadRequestError, match=r"input 'x'.*BOOL"):
        decode(payload, length)


@pytest.mark.parametrize(
    ("head", "blob", "problem"),
    [
        ({"inputs": [tensor(parameters={"binary_data_size": 12})]}, bytes(12), r"input 'x'.*needs 16 bytes, got 12"),
        ({"inputs": [tensor(parameters={"binary_data_size": 16})]}, bytes(12), "does not fit the 12 binary bytes"),
        (
            {"inputs": [tensor(parameters={"binary_data_size": 16})]},
            bytes(20),
            "4 bytes of binary data were not claimed",
        ),
        ({"inputs": [tensor(data=[1, 2, 3, 4])]}, bytes(4), "4 bytes of binary data were not claimed"),
        ({"inputs": [tensor(parameters={"binary_data_size": -1})]}, bytes(16), "binary_data_size"),
        ({"inputs": [tensor(parameters={"binary_data_size": "16"})]}, bytes(16), "binary_data_size"),
        (
            {"inputs": [tensor(data=[1, 2, 3, 4], parameters={"binary_data_size": 16})]},
            bytes(16),
            "both 'data' and binary_data_size",
        ),
        (
            {"inputs": [tensor(shape=[3], datatype="BYTES", parameters={"binary_data_size": 10})]},
            serialize_bytes_tensor(np.array([b"ab", b"cd"], dtype=object)) + bytes(2),
            r"input 'x'.*BYTES",
        ),
        (
            {"inputs": [tensor(shape=[1], datatype="BYTES", parameters={"binary_data_size": 12})]},
            serialize_bytes_tensor(np.array([b"ab", b"cd"], dtype=object)),
            r"input 'x'.*trailing",
        ),
    ],
)
def test_binary_sizes_that_do_not_add_up_are_bad_requests(head: dict[str, Any], blob: bytes, problem: str) -> None:
    payload, length = binary_body(head, blob)
    with pytest.raises(BadRequestError, match=problem):
        decode(payload, length)


@pytest.mark.parametrize("length", ["0", "-1", "abc", "1e3", "", "999999999999999999999"])
def test_an_inference_header_length_out_of_range_is_a_bad_request(length: str) -> None:
    payload, _ = binary_body({"inputs": [tensor(data=[1, 2, 3, 4])]})
    with pytest.raises(BadRequestError, match=r"Inference-Header-Content-Length"):
        decode(payload, length)


def test_a_header_length_cutting_the_json_short_is_malformed_json() -> None:
    payload, length = binary_body({"inputs": [tensor(data=[1, 2, 3, 4])]})
    with pytest.raises(BadRequestError, match=r"JSON"):
        decode(payload, str(int(length) - 3))


def test_a_header_length_equal_to_the_body_means_no_binary_data() -> None:
    payload, length = binary_body({"inputs": [tensor(data=[1, 2, 3, 4])]})
    assert decode(payload, length).inputs["x"].shape == (2, 2)


# ----- outputs ----------------------------------------------------------------------------------

PRODUCED: dict[str, np.ndarray] = {
    "a": np.array([[1.0, 2.0]], np.float32),
    "b": np.array([7], np.int64),
    "c": np.array([b"x"], dtype=object),
}


def request_for(outputs: list[dict[str, Any]] | None = None, binary_data_output: bool = False) -> V2Request:
    req: dict[str, Any] = {
        "inputs": [tensor(data=[1, 2, 3, 4])],
        "parameters": {"binary_data_output": binary_data_output},
    }
    if outputs is not None:
        req["outputs"] = outputs
    return decode(body(**req))


def test_without_outputs_every_output_follows_binary_data_output() -> None:
    chosen = select_outputs(request_for(), PRODUCED)
    assert [(name, binary) for name, _, binary in chosen] == [("a", False), ("b", False), ("c", False)]
    chosen = select_outputs(request_for(binary_data_output=True), PRODUCED)
    assert [binary for _, _, binary in chosen] == [True, True, True]


def test_requested_outputs_keep_their_own_binary_flag() -> None:
    req = request_for([{"name": "c"}, {"name": "a", "parameters": {"binary_data": True}}], binary_data_output=False)
    assert req.outputs == [("c", None), ("a", True)]
    chosen = select_outputs(req, {"c": PRODUCED["c"], "a": PRODUCED["a"]})
    assert [(name, binary) for name, _, binary in chosen] == [("c", False), ("a", True)]
    req = request_for([{"name": "b", "parameters": {"binary_data": False}}, {"name": "a"}], binary_data_output=True)
    chosen = select_outputs(req, {"b": PRODUCED["b"], "a": PRODUCED["a"]})
    assert [(name, binary) for name, _, binary in chosen] == [("b", False), ("a", True)]


def test_a_json_response_is_strict_flat_and_echoes_the_id_only_if_sent() -> None:
    outputs = [
        ("y", np.array([[np.nan, np.inf], [-np.inf, 0.25]], np.float32), False),
        ("s", np.array([[b"ok"], [b"\xff"]], dtype=object), False),
        ("k", np.array([[True, False]]), False),
    ]
    raw, header_length = encode_response("m", "3", None, outputs)
    assert header_length is None
    got = orjson.loads(raw)  # orjson refuses NaN/Infinity tokens: the body is strict JSON
    assert "id" not in got
    assert got == {
        "model_name": "m",
        "model_version": "3",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [None, None, None, 0.25]},
            {"name": "s", "datatype": "BYTES", "shape": [2, 1], "data": ["ok", {"b64": "/w=="}]},
            {"name": "k", "datatype": "BOOL", "shape": [1, 2], "data": [True, False]},
        ],
    }
    raw, _ = encode_response("m", "3", "", outputs[:1])
    assert orjson.loads(raw)["id"] == ""


@pytest.mark.parametrize("datatype", FIXED_SIZE)
def test_binary_outputs_follow_the_header_in_header_order(datatype: str) -> None:
    dtype = np.dtype(DATATYPE_TO_NUMPY[datatype])
    first = np.array([[1, 0], [0, 1]], dtype=dtype)
    second = np.array([b"ab", b""], dtype=object)
    outputs = [("first", first, True), ("json", np.array([3], np.int32), False), ("second", second, True)]
    raw, header_length = encode_response("m", "1", "r", outputs)
    assert header_length is not None
    header = orjson.loads(raw[:header_length])
    assert header["id"] == "r"
    assert [o["name"] for o in header["outputs"]] == ["first", "json", "second"]
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in header["outputs"]]
    assert sizes == [4 * dtype.itemsize, None, 4 + 2 + 4]
    assert "data" not in header["outputs"][0]
    assert header["outputs"][1]["data"] == [3]
    blob = raw[header_length:]
    assert blob[: sizes[0]] == first.astype(dtype.newbyteorder("<")).tobytes()
    assert blob[sizes[0] :] == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def test_non_contiguous_outputs_are_sent_in_row_major_order() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3).T
    raw, length = encode_response("m", "1", None, [("y", arr, True)])
    assert length is not None
    assert np.frombuffer(raw[length:], "<f4").tolist() == arr.reshape(-1).tolist()
    raw, _ = encode_response("m", "1", None, [("y", arr, False)])
    assert orjson.loads(raw)["outputs"][0]["data"] == arr.reshape(-1).tolist()
