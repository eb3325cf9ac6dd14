"""KServe V2 / Open Inference Protocol wire format: JSON tensors and the binary tensor extension."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

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
from service.errors import BadRequestError
from service.tensors import datatype_of, numpy_dtype

_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
_UNSUPPORTED_PREFIXES = ("sequence_", "shared_memory_")


@dataclass
class V2Request:
    """A decoded infer request: arrays by input name plus what the client asked of the response."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[tuple[str, bool | None]] | None  # requested outputs and their binary_data flag, if any
    binary_output: bool
    timeout_us: int | None


def decode_request(body: bytes, header_length: str | None, max_bytes: int) -> V2Request:
    """Decode a JSON (or JSON header + binary tensors) infer request; 400 naming any problem."""
    head, binary = _split_binary(body, header_length)
    if not isinstance(head, dict):
        raise BadRequestError("infer request must be a JSON object")
    unknown = sorted(set(head) - _REQUEST_KEYS)
    if unknown:
        raise BadRequestError(f"unknown key(s) in infer request: {unknown}")
    params = _parameters(head.get("parameters"), "request")
    _reject_unsupported(params, "request")
    request_id = head.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequestError("'id' must be a string")
    timeout = params.get("timeout")
    if timeout is not None and (type(timeout) is not int or timeout <= 0):
        raise BadRequestError("parameter 'timeout' must be a positive integer of microseconds")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise BadRequestError("parameter 'binary_data_output' must be true or false")
    arrays = _decode_inputs(head.get("inputs"), binary, max_bytes)
    return V2Request(request_id, arrays, _requested_outputs(head.get("outputs")), binary_output, timeout)


def _split_binary(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    if header_length is None:
        return parse_json(body), memoryview(b"")
    if not (header_length.isascii() and header_length.isdigit()) or not 0 < int(header_length) <= len(body):
        raise BadRequestError(
            f"Inference-Header-Content-Length must be an integer in [1, {len(body)}], got '{header_length:.20}'"
        )
    size = int(header_length)
    return parse_json(body[:size]), memoryview(body)[size:]


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequestError(f"{where} 'parameters' must be an object")
    return value


def _reject_unsupported(params: dict[str, Any], where: str) -> None:
    for key in params:
        if key.startswith(_UNSUPPORTED_PREFIXES) or key == "classification":
            raise BadRequestError(f"{where} parameter '{key}' is not supported by this server")


def _decode_inputs(inputs: Any, binary: memoryview, max_bytes: int) -> dict[str, np.ndarray]:
    if not isinstance(inputs, list) or not inputs:
        raise BadRequestError("'inputs' must be a non-empty list")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequestError(f"inputs[{index}] must be an object with a string 'name'")
        name = item["name"]
        if name in arrays:
            raise BadRequestError(f"input '{name}' appears more than once")
        arrays[name], offset = _decode_input(item, binary, offset, max_bytes)
    if offset != len(binary):
        raise BadRequestError(f"{len(binary) - offset} bytes of binary data were not claimed by any input")
    return arrays


def _decode_input(item: dict[str, Any], binary: memoryview, offset: int, max_bytes: int) -> tuple[np.ndarray, int]:
    what = f"input '{item['name']}'"
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise BadRequestError(f"{what}: 'datatype' must be a string")
    dtype = numpy_dtype(datatype)
    shape = check_shape(item.get("shape"), what, max_bytes, dtype.itemsize)
    params = _parameters(item.get("parameters"), what)
    _reject_unsupported(params, what)
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise BadRequestError(f"{what}: needs 'data' or parameters.binary_data_size")
        return reshape(to_array(item["data"], datatype, what), shape, what), offset
    if "data" in item:
        raise BadRequestError(f"{what}: has both 'data' and binary_data_size")
    if type(size) is not int or size < 0 or offset + size > len(binary):
        raise BadRequestError(f"{what}: binary_data_size {size!r:.20} does not fit the {len(binary)} binary bytes")
    chunk = binary[offset : offset + size]
    count = math.prod(shape)  # exact, and bounded by check_shape
    if datatype == "BYTES":
        return deserialize_bytes_tensor(chunk, count, what).reshape(shape), offset + size
    if size != count * dtype.itemsize:
        raise BadRequestError(f"{what}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {size}")
    if datatype == "BOOL" and size and np.frombuffer(chunk, dtype=np.uint8).max() > 1:
        raise BadRequestError(f"{what}: binary BOOL elements must be bytes 0 or 1")
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(shape), offset + size


def _requested_outputs(outputs: Any) -> list[tuple[str, bool | None]] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise BadRequestError("'outputs' must be a list")
    wanted: list[tuple[str, bool | None]] = []
    for index, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequestError(f"outputs[{index}] must be an object with a string 'name'")
        params = _parameters(item.get("parameters"), f"output '{item['name']}'")
        _reject_unsupported(params, f"output '{item['name']}'")
        binary = params.get("binary_data", None)
        if binary is not None and not isinstance(binary, bool):
            raise BadRequestError(f"output '{item['name']}': binary_data must be true or false")
        if any(name == item["name"] for name, _ in wanted):
            raise BadRequestError(f"output '{item['name']}' is requested more than once")
        wanted.append((item["name"], binary))
    return wanted


def select_outputs(request: V2Request, produced: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, bool]]:
    """Each output to send (the engine already chose and ordered them), with whether it goes binary."""
    binary = dict(request.outputs or ())
    default = request.binary_output
    return [(name, arr, default if binary.get(name) is None else bool(binary[name])) for name, arr in produced.items()]


def encode_response(
    model_name: str, version: str, request_id: str | None, outputs: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """The infer response body, and the JSON header length when binary outputs follow it."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr, binary in outputs:
        datatype = datatype_of(arr.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            raw = serialize_bytes_tensor(arr) if datatype == "BYTES" else np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif datatype == "BYTES":
            entry["data"] = bytes_to_jsonable(arr.reshape(-1))
        else:
            entry["data"] = np.ascontiguousarray(arr).reshape(-1)
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = entries
    header = dumps(body)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
