"""service.codec: JSON values to typed arrays without silent casts, shapes, BYTES, strict JSON out."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from service.codec import (
    bytes_to_jsonable,
    check_shape,
    deserialize_bytes_tensor,
    dumps,
    parse_json,
    reshape,
    serialize_bytes_tensor,
    to_array,
)
from service.errors import BadRequestError, PayloadTooLargeError
from service.tensors import DATATYPE_TO_NUMPY, datatype_of, numpy_dtype

INTEGER_TYPES = ["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
FLOAT_TYPES = ["FP16", "FP32", "FP64"]


def test_every_datatype_maps_to_numpy_and_back() -> None:
    for datatype in DATATYPE_TO_NUMPY:
        assert datatype_of(numpy_dtype(datatype)) == datatype
    assert datatype_of(np.dtype("U3")) == "BYTES"
    assert datatype_of(np.dtype("S3")) == "BYTES"


def test_unknown_datatype_is_a_bad_request_naming_it() -> None:
    with pytest.raises(BadRequestError, match=r"'FP128'"):
        numpy_dtype("FP128")
    with pytest.raises(BadRequestError, match=r"'fp32'"):
        to_array([1.0], "fp32", "input 'x'")


# ----- integers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", INTEGER_TYPES)
def test_integers_keep_their_exact_type(datatype: str) -> None:
    arr = to_array([[0, 1], [2, 3]], datatype, "input 'x'")
    assert arr.dtype == numpy_dtype(datatype)
    assert arr.tolist() == [[0, 1], [2, 3]]


@pytest.mark.parametrize("datatype", INTEGER_TYPES)
def test_integer_range_limits_are_accepted_and_one_past_them_refused(datatype: str) -> None:
    info = np.iinfo(numpy_dtype(datatype))
    low, high = int(info.min), int(info.max)
    assert to_array([low, high], datatype, "x").tolist() == [low, high]
    for outside in (low - 1, high + 1):
        with pytest.raises(BadRequestError, match=f"input 'x'.*{datatype}"):
            to_array([outside], datatype, "input 'x'")


def test_uint64_above_int64_survives_exactly_beside_small_values() -> None:
    values = [2**63, 1, 2**64 - 1]
    arr = to_array(values, "UINT64", "x")
    assert arr.dtype == np.uint64
    assert [int(v) for v in arr] == values


def test_int64_past_its_range_is_out_of_range_not_a_cast() -> None:
    with pytest.raises(BadRequestError, match=r"range"):
        to_array([2**63, -1], "INT64", "input 'x'")


@pytest.mark.parametrize("datatype", INTEGER_TYPES)
@pytest.mark.parametrize("value", [1.0, 1.5, float("nan"), float("inf")])
def test_floats_into_integers_are_refused_never_truncated(datatype: str, value: float) -> None:
    with pytest.raises(BadRequestError, match=f"input 'x'.*{datatype}.*floats"):
        to_array([1, value], datatype, "input 'x'")


@pytest.mark.parametrize("datatype", INTEGER_TYPES)
def test_booleans_and_strings_into_integers_are_refused(datatype: str) -> None:
    with pytest.raises(BadRequestError, match=r"booleans"):
        to_array([True, False], datatype, "x")
    with pytest.raises(BadRequestError, match=r"strings"):
        to_array(["1", "2"], datatype, "x")
    with pytest.raises(BadRequestError, match=datatype):
        to_array([1, None], datatype, "x")


# ----- booleans ---------------------------------------------------------------------------------


def test_bool_takes_only_true_and_false() -> None:
    assert to_array([[True], [False]], "BOOL", "x").tolist() == [[True], [False]]
    for data in ([1, 0], [1.0], ["true"], [True, 1]):
        with pytest.raises(BadRequestError, match=r"true/false"):
            to_array(data, "BOOL", "input 'flag'")


# ----- floats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", FLOAT_TYPES)
def test_floats_accept_integers_and_round_to_the_type(datatype: str) -> None:
    arr = to_array([1, 2.5, -3], datatype, "x")
    assert arr.dtype == numpy_dtype(datatype)
    assert arr.tolist() == [1.0, 2.5, -3.0]
    third = to_array([1 / 3], datatype, "x")
    assert third[0] == numpy_dtype(datatype).type(1 / 3)


@pytest.mark.parametrize("datatype", FLOAT_TYPES)
def test_non_finite_floats_are_accepted(datatype: str) -> None:
    arr = to_array([float("nan"), float("inf"), float("-inf")], datatype, "x")
    assert math.isnan(arr[0])
    assert arr[1] == np.inf
    assert arr[2] == -np.inf


@pytest.mark.parametrize("datatype", FLOAT_TYPES)
@pytest.mark.parametrize("data", [[True, False], ["1.5"], [1.0, None], [1, "a"], [{"b64": "AA=="}]])
def test_floats_refuse_booleans_strings_and_nulls(datatype: str, data: list[object]) -> None:
    with pytest.raises(BadRequestError, match=f"input 'x'.*{datatype}"):
        to_array(data, datatype, "input 'x'")


@pytest.mark.parametrize(("datatype", "value"), [("FP16", 1e5), ("FP32", 1e39)])
def test_finite_floats_beyond_the_type_are_refused_not_turned_into_infinity(datatype: str, value: float) -> None:
    with pytest.raises(BadRequestError, match=f"range.*{datatype}|{datatype}.*range"):
        to_array([1.0, value], datatype, "input 'x'")


def test_fp64_accepts_integers_beyond_int64() -> None:
    assert to_array([2**70, 1.5], "FP64", "x").tolist() == [float(2**70), 1.5]


# ----- shapes of data ---------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", ["FP32", "INT32", "BOOL", "BYTES"])
def test_ragged_data_is_refused(datatype: str) -> None:
    value: object = {"FP32": 1.0, "INT32": 1, "BOOL": True, "BYTES": "a"}[datatype]
    with pytest.raises(BadRequestError, match=r"input 'x'"):
        to_array([[value, value], [value]], datatype, "input 'x'")


def test_flat_and_nested_data_reshape_to_the_same_array() -> None:
    flat = reshape(to_array([1, 2, 3, 4, 5, 6], "INT32", "x"), [2, 3], "x")
    nested = reshape(to_array([[1, 2, 3], [4, 5, 6]], "INT32", "x"), [2, 3], "x")
    assert np.array_equal(flat, nested)
    assert flat.shape == (2, 3)


def test_count_other_than_the_shape_product_is_refused_with_both_numbers() -> None:
    arr = to_array([1.0, 2.0, 3.0], "FP32", "x")
    with pytest.raises(BadRequestError, match=r"input 'x'.*\[2, 2\].*4.*3"):
        reshape(arr, [2, 2], "input 'x'")


def test_scalar_data_takes_an_empty_shape() -> None:
    assert reshape(to_array(1.5, "FP32", "x"), [], "x").shape == ()


@pytest.mark.parametrize("datatype", ["FP32", "INT64", "BOOL", "BYTES"])
def test_empty_data_takes_the_declared_type(datatype: str) -> None:
    arr = reshape(to_array([], datatype, "x"), [0, 4], "x")
    assert arr.shape == (0, 4)
    assert datatype_of(arr.dtype) == datatype


# ----- declared shapes --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [None, "2", [2, -1], [2.0], [True], [[2]], {"0": 2}])
def test_a_shape_must_be_a_list_of_non_negative_integers(shape: object) -> None:
    with pytest.raises(BadRequestError, match=r"input 'x'.*shape"):
        check_shape(shape, "input 'x'", 1 << 20, 4)


def test_a_huge_shape_is_too_large_before_anything_is_allocated() -> None:
    with pytest.raises(PayloadTooLargeError, match=r"input 'x'"):
        check_shape([2**40, 2**40], "input 'x'", 1 << 20, 4)
    with pytest.raises(PayloadTooLargeError):
        check_shape([1 << 18, 2], "x", 1 << 20, 4)  # 2 MiB of FP32
    assert check_shape([1 << 18], "x", 1 << 20, 4) == [1 << 18]  # exactly 1 MiB


def test_a_zero_dim_does_not_hide_dims_no_array_can_have() -> None:
    with pytest.raises((BadRequestError, PayloadTooLargeError)):
        check_shape([2**62, 2**62, 0], "input 'x'", 1 << 20, 4)
    assert check_shape([0, 4], "x", 1 << 20, 4) == [0, 4]


# ----- BYTES ------------------------------------------------------------------------------------


def test_bytes_from_json_strings_are_utf8_encoded() -> None:
    arr = to_array([["héllo", ""], ["a", "b"]], "BYTES", "x")
    assert arr.dtype == object
    assert arr.tolist() == [["héllo".encode(), b""], [b"a", b"b"]]


def test_bytes_refuse_non_strings() -> None:
    for data in ([1], [None], [["a"], "b"], [True]):
        with pytest.raises(BadRequestError, match=r"input 's'"):
            to_array(data, "BYTES", "input 's'")


def test_bytes_round_trip_the_binary_layout() -> None:
    arr = np.array([b"", b"ab", "ü".encode(), b"\x00\xff"], dtype=object)
    raw = serialize_bytes_tensor(arr)
    assert raw[:4] == b"\x00\x00\x00\x00"
    assert raw[4:10] == b"\x02\x00\x00\x00ab"
    assert deserialize_bytes_tensor(raw, 4, "x").tolist() == arr.tolist()


def test_binary_bytes_that_do_not_split_into_the_count_are_refused() -> None:
    raw = serialize_bytes_tensor(np.array([b"ab", b"cd"], dtype=object))
    with pytest.raises(BadRequestError, match=r"input 's'.*ends after 2 of 3"):
        deserialize_bytes_tensor(raw, 3, "input 's'")
    with pytest.raises(BadRequestError, match=r"input 's'.*trailing"):
        deserialize_bytes_tensor(raw, 1, "input 's'")
    with pytest.raises(BadRequestError, match=r"overruns"):
        deserialize_bytes_tensor(b"\x09\x00\x00\x00abc", 1, "input 's'")
    with pytest.raises(BadRequestError, match=r"ends after 0"):
        deserialize_bytes_tensor(b"\x01\x00", 1, "input 's'")


def test_bytes_go_to_json_as_text_or_base64() -> None:
    arr = np.array([[b"ok", b"\xff\x00"]], dtype=object)
    assert bytes_to_jsonable(arr) == [["ok", {"b64": "/wA="}]]


# ----- JSON in and out --------------------------------------------------------------------------


def test_parse_json_accepts_nan_and_infinity_tokens() -> None:
    value = parse_json(b'{"data": [NaN, Infinity, -Infinity, 1.5]}')
    assert math.isnan(value["data"][0])
    assert value["data"][1:] == [math.inf, -math.inf, 1.5]


@pytest.mark.parametrize("body", [b"", b"   ", b"{", b'{"a": }', b"[1, 2,]", b"\xff\xfe", b"{'a': 1}"])
def test_parse_json_refuses_malformed_bodies_with_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequestError, match=r"JSON"):
        parse_json(body)


def test_parse_json_refuses_deep_nesting_without_crashing() -> None:
    with pytest.raises(BadRequestError, match=r"JSON"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)


def test_dumps_writes_strict_json_with_null_for_non_finite_floats() -> None:
    for dtype in ("float16", "float32", "float64"):
        arr = np.array([np.nan, np.inf, -np.inf, 0.5], dtype=dtype)
        raw = dumps({"data": arr, "scalar": float("nan")})
        assert orjson.loads(raw) == {"data": [None, None, None, 0.5], "scalar": None}


def test_dumps_serialises_every_numeric_dtype_natively() -> None:
    for datatype, name in DATATYPE_TO_NUMPY.items():
        if datatype == "BYTES":
            continue
        expected = [False, True] if datatype == "BOOL" else [0, 1]
        assert orjson.loads(dumps(np.array([0, 1], dtype=name))) == expected
