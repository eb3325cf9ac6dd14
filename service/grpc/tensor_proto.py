"""tensorflow.TensorProto <-> numpy, by TensorFlow's rules, without importing TensorFlow.

Requests may carry values in tensor_content (little-endian bytes, what tf.make_tensor_proto writes for
numbers) or in the dtype's typed field; as in TensorFlow, fewer typed values than elements repeat the last
one (none: zeros). Responses use the typed fields, as TF Serving's Predict does by default, so client code
that reads `outputs["y"].float_val` keeps working.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.codec import check_shape
from service.codec_tfserving import DT_NAMES
from service.errors import BadRequestError
from service.grpc.codec_kserve import typed_array
from service.grpc.protos import enum_values
from service.tensors import datatype_of, numpy_dtype

DT_NUMBERS = enum_values("tensorflow.DataType")
# V2 datatype <-> DataType number, for the dtypes tandem serves (BF16 has no numpy dtype here).
DATATYPES = {DT_NUMBERS[dt]: datatype for datatype, dt in DT_NAMES.items() if datatype != "BF16"}
DT_OF = {datatype: number for number, datatype in DATATYPES.items()}
FIELDS = {
    "BOOL": "bool_val",
    "UINT8": "int_val",
    "UINT16": "int_val",
    "INT8": "int_val",
    "INT16": "int_val",
    "INT32": "int_val",
    "UINT32": "uint32_val",
    "UINT64": "uint64_val",
    "INT64": "int64_val",
    "FP16": "half_val",
    "FP32": "float_val",
    "FP64": "double_val",
    "BYTES": "string_val",
}
_DT_NAMES = {number: name for name, number in DT_NUMBERS.items()}


def to_array(tensor: Any, what: str, max_bytes: int) -> np.ndarray:
    """A TensorProto as an array; INVALID_ARGUMENT naming the input for any dtype, shape or size problem."""
    datatype = DATATYPES.get(tensor.dtype)
    if datatype is None:
        raise BadRequestError(f"{what}: dtype {_DT_NAMES.get(tensor.dtype, tensor.dtype)} is not supported")
    if tensor.tensor_shape.unknown_rank:
        raise BadRequestError(f"{what}: tensor_shape must have a known rank")
    dtype = numpy_dtype(datatype)
    shape = check_shape([dim.size for dim in tensor.tensor_shape.dim], what, max_bytes, dtype.itemsize)
    count = math.prod(shape)
    present = [f.name for f, _ in tensor.ListFields() if f.name.endswith("_val") or f.name == "tensor_content"]
    field = FIELDS[datatype]
    if tensor.tensor_content:
        if datatype == "BYTES" or len(present) > 1:
            raise BadRequestError(f"{what}: {DT_NAMES[datatype]} values go in {field} or tensor_content, not both")
        return _from_content(tensor.tensor_content, datatype, dtype, shape, count, what)
    wrong = [name for name in present if name != field]
    if wrong:
        raise BadRequestError(f"{what}: {DT_NAMES[datatype]} values go in {field} or tensor_content, got {wrong}")
    values = getattr(tensor, field)
    if len(values) > count:
        raise BadRequestError(f"{what}: shape {shape} holds {count} elements, {field} has {len(values)}")
    if datatype == "FP16":  # half_val carries each float16's bit pattern in an int32
        arr = typed_array(values, np.dtype(np.uint16), "FP16 bit pattern", what).view(np.float16)
    else:
        arr = typed_array(values, dtype, datatype, what)
    return _fill(arr, count, datatype).reshape(shape)


def _from_content(
    content: bytes, datatype: str, dtype: np.dtype[Any], shape: list[int], count: int, what: str
) -> np.ndarray:
    if len(content) != count * dtype.itemsize:
        raise BadRequestError(
            f"{what}: shape {shape} of {DT_NAMES[datatype]} needs {count * dtype.itemsize} bytes "
            f"of tensor_content, got {len(content)}"
        )
    arr = np.frombuffer(content, dtype=dtype.newbyteorder("<"))
    if datatype == "BOOL" and count and arr.view(np.uint8).max() > 1:
        raise BadRequestError(f"{what}: DT_BOOL tensor_content bytes must be 0 or 1")
    return arr.reshape(shape)


def _fill(arr: np.ndarray, count: int, datatype: str) -> np.ndarray:
    """TensorFlow's rule for short typed fields: repeat the last value; no value at all means zeros."""
    if arr.size == count:
        return arr
    if arr.size == 0:
        if datatype == "BYTES":
            return np.full(count, b"", dtype=object)
        return np.zeros(count, dtype=arr.dtype)
    return np.concatenate([arr, np.repeat(arr[-1:], count - arr.size)])


def fill_tensor_proto(tensor: Any, arr: np.ndarray) -> None:
    """Write an array into a TensorProto: dtype, shape and the dtype's typed field."""
    datatype = datatype_of(arr.dtype)
    tensor.dtype = DT_OF[datatype]
    for size in arr.shape:
        tensor.tensor_shape.dim.add(size=size)
    flat = np.ascontiguousarray(arr).reshape(-1)
    if datatype == "BYTES":
        values: list[Any] = [item if isinstance(item, bytes) else str(item).encode() for item in flat]
    elif datatype == "FP16":
        values = flat.view(np.uint16).tolist()
    else:
        values = flat.tolist()
    getattr(tensor, FIELDS[datatype]).extend(values)
