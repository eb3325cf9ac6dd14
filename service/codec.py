"""Wire tensors <-> numpy arrays for every dialect: JSON parsing, coercion, shapes, BYTES layouts. Pure functions."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from service.errors import BadRequestError, PayloadTooLargeError
from service.tensors import numpy_dtype


def parse_json(body: bytes) -> Any:
    """Parse a JSON body fast; NaN/Infinity tokens are accepted (slow path) as TF Serving does."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if not body.strip():
            raise BadRequestError("request body is empty; expected JSON") from None
        try:  # orjson rejects NaN/Infinity; stdlib json accepts them.
            return json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequestError(f"malformed JSON: {exc.msg} at position {exc.pos}") from None


def dumps(obj: Any) -> bytes:
    """Strict JSON: numpy arrays serialised natively, NaN and +-Inf written as null."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def to_array(data: Any, datatype: str, what: str) -> np.ndarray:
    """Coerce a JSON value (flat or nested list, or scalar) to an array of `datatype` without silent casts."""
    dtype = numpy_dtype(datatype)
    if datatype == "BYTES":
        return _bytes_array(data, what)
    try:
        arr = np.asarray(data)
        if arr.dtype.kind in "fO" and dtype.kind != "b":
            arr = _exact_numbers(data, arr, dtype)
    except (ValueError, TypeError, OverflowError):
        raise BadRequestError(f"{what}: data is not a rectangular array of {datatype} values") from None
    if dtype.kind == "f":
        return _check_float(arr, dtype, datatype, what)
    return _check_integral(arr, dtype, datatype, what)


def _exact_numbers(data: Any, arr: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    # Integers past int64 turn numpy's guess into float64 or object: keep them exact when every element is one.
    if dtype.kind == "f" and arr.dtype.kind == "f":
        return arr
    exact = np.asarray(data, dtype=object)
    allowed = (int, float) if dtype.kind == "f" else (int,)
    if exact.size == 0 or not all(type(v) in allowed for v in exact.flat):
        return arr
    return exact.astype(np.float64) if dtype.kind == "f" else exact


def _check_float(arr: np.ndarray, dtype: np.dtype[Any], datatype: str, what: str) -> np.ndarray:
    if arr.size and arr.dtype.kind not in "iuf":
        raise BadRequestError(f"{what}: expected numbers for {datatype}, got {_kind_name(arr)}")
    if dtype.itemsize >= 4 and (arr.dtype.kind != "f" or arr.dtype.itemsize <= dtype.itemsize):
        return arr.astype(dtype)  # no overflow: integers into FP32/FP64, or a cast that does not narrow
    with np.errstate(over="ignore"):
        out = arr.astype(dtype)
    # One pass in the common case (all finite); the exact test only when something is not.
    if arr.size and not np.isfinite(out).all() and (np.isinf(out) & ~np.isinf(arr)).any():
        raise BadRequestError(f"{what}: value out of range for {datatype}")
    return out


def _check_integral(arr: np.ndarray, dtype: np.dtype[Any], datatype: str, what: str) -> np.ndarray:
    if arr.size == 0:
        return arr.astype(dtype)
    if dtype.kind == "b":
        if arr.dtype.kind != "b":
            raise BadRequestError(f"{what}: expected true/false values for {datatype}, got {_kind_name(arr)}")
        return arr
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "O" and all(type(v) is int for v in arr.flat)):
        raise BadRequestError(f"{what}: expected integer values for {datatype}, got {_kind_name(arr)}")
    info = np.iinfo(dtype)
    if arr.min() < info.min or arr.max() > info.max:
        raise BadRequestError(f"{what}: value out of range for {datatype} [{info.min}, {info.max}]")
    return arr.astype(dtype, copy=False)


def _kind_name(arr: np.ndarray) -> str:
    return {"f": "floats", "b": "booleans", "U": "strings", "O": "mixed values"}.get(arr.dtype.kind, arr.dtype.name)


def object_array(data: Any, what: str, element: Callable[[Any], bytes]) -> np.ndarray:
    """A rectangular (nested) JSON list as an object array, each element converted to bytes by `element`."""
    try:
        shaped = np.asarray(data, dtype=object)
    except ValueError:
        raise BadRequestError(f"{what}: data is not a rectangular array") from None
    out = np.empty(shaped.shape, dtype=object)
    for index, item in np.ndenumerate(shaped):
        out[index] = element(item)
    return out


def _bytes_array(data: Any, what: str) -> np.ndarray:
    def element(item: Any) -> bytes:
        if isinstance(item, str):
            return item.encode()
        if isinstance(item, bytes):
            return item
        raise BadRequestError(f"{what}: BYTES elements must be strings, got {type(item).__name__}")

    return object_array(data, what, element)


def reshape(arr: np.ndarray, shape: Sequence[int], what: str) -> np.ndarray:
    """Give `arr` the declared `shape`; the element counts must agree."""
    count = math.prod(shape)
    if arr.size != count:
        raise BadRequestError(f"{what}: shape {list(shape)} needs {count} elements, data has {arr.size}")
    return arr.reshape(shape)


def check_shape(shape: Any, what: str, max_bytes: int, itemsize: int) -> list[int]:
    """Validate a client-declared shape: a list of non-negative ints whose byte size fits the body limit."""
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BadRequestError(f"{what}: 'shape' must be a list of non-negative integers, got {shape!r:.80}")
    # Zero dims make the product small, yet numpy refuses shapes whose other dims overflow its index type.
    if math.prod(shape) * max(itemsize, 1) > max_bytes or math.prod(max(d, 1) for d in shape) >= 2**62:
        raise PayloadTooLargeError(f"{what}: shape {shape} exceeds the {max_bytes}-byte limit")
    return shape


def encode_bytes_element(value: bytes) -> Any:
    """A BYTES element for JSON: UTF-8 text when valid, else {"b64": ...}."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        import base64

        return {"b64": base64.b64encode(value).decode()}


def bytes_to_jsonable(arr: np.ndarray) -> Any:
    """A BYTES array as nested lists of str (or {"b64"}) for JSON."""
    flat = [encode_bytes_element(v if isinstance(v, bytes) else str(v).encode()) for v in arr.reshape(-1)]
    return np.asarray(flat, dtype=object).reshape(arr.shape).tolist() if arr.ndim else flat[0]


def serialize_bytes_tensor(arr: np.ndarray) -> bytes:
    """Triton's binary BYTES layout: each element as a 4-byte little-endian length then its bytes."""
    parts: list[bytes] = []
    for item in arr.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(len(raw).to_bytes(4, "little"))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes_tensor(raw: bytes | memoryview, count: int, what: str) -> np.ndarray:
    """Inverse of serialize_bytes_tensor; exactly `count` elements must fill `raw`."""
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise BadRequestError(f"{what}: binary BYTES data ends after {i} of {count} elements")
        size = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(view):
            raise BadRequestError(f"{what}: binary BYTES element {i} overruns the data")
        out[i] = bytes(view[offset : offset + size])
        offset += size
    if offset != len(view):
        raise BadRequestError(f"{what}: {len(view) - offset} trailing bytes after {count} BYTES elements")
    return out
