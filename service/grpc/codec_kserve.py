"""KServe V2 gRPC wire format: ModelInferRequest to arrays (typed contents or raw_input_contents), outputs to raw.

Outputs always go back as raw_output_contents, as Triton sends them: tritonclient's InferResult reads raw
contents (or bytes_contents) only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service import repository
from service.codec import check_shape, deserialize_bytes_tensor, serialize_bytes_tensor
from service.errors import BadRequestError
from service.grpc.protos import message
from service.repository import MODEL_NAME
from service.tensors import datatype_of, numpy_dtype

InferRequestMessage = message("inference.ModelInferRequest")
InferResponseMessage = message("inference.ModelInferResponse")
# The typed contents field of each datatype (FP16 and BF16 have none: raw only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_UNSUPPORTED_PREFIXES = ("sequence_", "shared_memory_", "cuda_shared_memory_")


def target(request: Any) -> tuple[str, int | None, str | None]:
    """The model name and version a ModelInferRequest asks for (V2 has no labels)."""
    name = check_name(request.model_name)
    return name, parse_version(request.model_version, name), None


def check_name(name: str) -> str:
    """A model name, INVALID_ARGUMENT before any lookup when it is not one."""
    if not MODEL_NAME.fullmatch(name):
        raise BadRequestError("model name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
    return name


def parse_version(text: str, name: str) -> int | None:
    """A version string: empty for the default; a positive decimal int64 without leading zeros, else NOT_FOUND."""
    return repository.parse_version(text or None, name)


def parameters(params: Any, where: str) -> dict[str, Any]:
    """A parameters map as plain values; protocol features tandem does not offer are refused by name."""
    values: dict[str, Any] = {}
    for key, param in params.items():
        if key.startswith(_UNSUPPORTED_PREFIXES) or key == "classification":
            raise BadRequestError(f"{where} parameter '{key}' is not supported by this server")
        choice = param.WhichOneof("parameter_choice")
        values[key] = getattr(param, choice) if choice else None
    return values


Decoded = tuple[dict[str, np.ndarray], tuple[str, ...] | None, dict[str, Any]]


def decode_request(request: Any, max_bytes: int) -> Decoded:
    """Input arrays, requested outputs (None: all) and request parameters; INVALID_ARGUMENT naming any problem."""
    params = parameters(request.parameters, "request")
    timeout = params.get("timeout")
    if timeout is not None and (type(timeout) is not int or timeout <= 0):
        raise BadRequestError("parameter 'timeout' must be a positive int64_param of microseconds")
    inputs = request.inputs
    raw = request.raw_input_contents
    if not inputs:
        raise BadRequestError("'inputs' must not be empty")
    if raw and len(raw) != len(inputs):
        raise BadRequestError(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; use it for every input or none"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(inputs):
        name = tensor.name
        if name in arrays:
            raise BadRequestError(f"input '{name}' appears more than once")
        arrays[name] = _decode_input(tensor, raw[index] if raw else None, max_bytes)
    return arrays, _requested_outputs(request.outputs), {"timeout": timeout} if timeout is not None else {}


def _decode_input(tensor: Any, raw: bytes | None, max_bytes: int) -> np.ndarray:
    what = f"input '{tensor.name}'"
    datatype = tensor.datatype
    if datatype == "BF16":
        raise BadRequestError(f"{what}: datatype BF16 is not supported")
    dtype = numpy_dtype(datatype)
    shape = check_shape(list(tensor.shape), what, max_bytes, dtype.itemsize)
    parameters(tensor.parameters, what)
    count = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise BadRequestError(f"{what}: has both typed contents and raw_input_contents")
        return _from_raw(raw, datatype, dtype, shape, count, what)
    if not tensor.HasField("contents"):
        raise BadRequestError(f"{what}: needs contents or raw_input_contents")
    return _from_contents(tensor.contents, datatype, dtype, shape, count, what)


def _from_raw(raw: bytes, datatype: str, dtype: np.dtype[Any], shape: list[int], count: int, what: str) -> np.ndarray:
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw, count, what).reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise BadRequestError(
            f"{what}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, raw contents have {len(raw)}"
        )
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    if datatype == "BOOL" and count and arr.view(np.uint8).max() > 1:
        raise BadRequestError(f"{what}: raw BOOL elements must be bytes 0 or 1")
    return arr.reshape(shape)


def _from_contents(
    contents: Any, datatype: str, dtype: np.dtype[Any], shape: list[int], count: int, what: str
) -> np.ndarray:
    field = CONTENTS.get(datatype)
    if field is None:
        raise BadRequestError(f"{what}: {datatype} has no typed contents field; send raw_input_contents")
    others = sorted(descriptor.name for descriptor, _ in contents.ListFields() if descriptor.name != field)
    if others:
        raise BadRequestError(f"{what}: {datatype} data goes in contents.{field}, got {', '.join(others)}")
    values = getattr(contents, field)
    if len(values) != count:
        raise BadRequestError(f"{what}: shape {shape} needs {count} elements, contents.{field} has {len(values)}")
    return typed_array(values, dtype, datatype, what).reshape(shape)


def typed_array(values: Any, dtype: np.dtype[Any], datatype: str, what: str) -> np.ndarray:
    """A repeated protobuf field as a flat array of `dtype`; integers carried in a wider field must fit."""
    if datatype == "BYTES":
        out = np.empty(len(values), dtype=object)
        out[:] = list(values)
        return out
    # int64 holds every value an int32/uint32 field carries (negative ones included); only UINT64 needs uint64.
    wide = np.asarray(values, dtype=dtype if dtype.kind not in "iu" or dtype == np.uint64 else np.int64)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise BadRequestError(f"{what}: value out of range for {datatype} [{info.min}, {info.max}]")
    return wide.astype(dtype, copy=False)


def _requested_outputs(outputs: Any) -> tuple[str, ...] | None:
    if not outputs:
        return None
    names: list[str] = []
    for item in outputs:
        parameters(item.parameters, f"output '{item.name}'")
        if item.name in names:
            raise BadRequestError(f"output '{item.name}' is requested more than once")
        names.append(item.name)
    return tuple(names)


def encode_response(model: str, version: int, request_id: str, outputs: dict[str, np.ndarray]) -> bytes:
    """A serialized ModelInferResponse: every output's bytes in raw_output_contents, in the outputs' order."""
    response = InferResponseMessage(model_name=model, model_version=str(version), id=request_id)
    raw = response.raw_output_contents
    for name, arr in outputs.items():
        datatype = datatype_of(arr.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        raw.append(serialize_bytes_tensor(arr) if datatype == "BYTES" else _little_endian(arr).tobytes())
    serialized: bytes = response.SerializeToString()
    return serialized


def _little_endian(arr: np.ndarray) -> np.ndarray:
    return arr if arr.dtype.byteorder != ">" else arr.astype(arr.dtype.newbyteorder("<"))
