"""TensorFlow Serving REST wire format: row and columnar predict bodies, {"b64"} strings, SignatureDef JSON."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.codec import dumps, encode_bytes_element, object_array, parse_json, to_array
from service.errors import BadRequestError
from service.inference import check_names

if TYPE_CHECKING:
    from service.tensors import TensorSpec

DT_NAMES = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BF16": "DT_BFLOAT16",
    "BYTES": "DT_STRING",
}
PREDICT_METHOD = "tensorflow/serving/predict"
B64_SUFFIX = "_bytes"


@dataclass(slots=True)
class PredictRequest:
    """A decoded :predict body: arrays by input name, and the row count when it came in row format."""

    arrays: dict[str, np.ndarray]
    rows: int | None  # None: columnar ("inputs"), answered as {"outputs": ...}


def decode_predict(body: bytes, specs: Sequence[TensorSpec], signature: str, what: str) -> PredictRequest:
    """Decode {"signature_name"?, "instances"|"inputs"} against the model's inputs; 400 naming any problem."""
    request = parse_json(body)
    if not isinstance(request, dict):
        raise BadRequestError("request body must be a JSON object")
    asked = request.get("signature_name", signature)
    if not isinstance(asked, str):
        raise BadRequestError("'signature_name' must be a string")
    if asked != signature:
        raise BadRequestError(f"{what}: unknown signature '{asked:.64}'; this model serves '{signature}'")
    if "instances" in request and "inputs" in request:
        raise BadRequestError("expecting only one of 'inputs' or 'instances'")
    if "instances" in request:
        instances = request["instances"]
        return PredictRequest(_from_rows(instances, specs, what), len(instances))
    if "inputs" in request:
        return PredictRequest(_from_columns(request["inputs"], specs, what), None)
    raise BadRequestError("Missing 'inputs' or 'instances' key")


def _from_rows(instances: Any, specs: Sequence[TensorSpec], what: str) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise BadRequestError("'instances' must be a non-empty list")
    names = [spec.name for spec in specs]
    if _is_named(instances[0]):
        for index, item in enumerate(instances):
            if not isinstance(item, dict):
                raise BadRequestError(f"instances[{index}] must be an object like instances[0]")
            check_names(item, specs, what, f"instances[{index}]: ")
        columns = {name: [item[name] for item in instances] for name in names}
    elif len(specs) == 1:
        columns = {names[0]: instances}
    else:
        raise BadRequestError(f"{what} has inputs {names}: each instance must be an object {{input: value}}")
    return {spec.name: to_tensor(columns[spec.name], spec, what) for spec in specs}


def _from_columns(inputs: Any, specs: Sequence[TensorSpec], what: str) -> dict[str, np.ndarray]:
    names = [spec.name for spec in specs]
    if _is_named(inputs):
        check_names(inputs, specs, what, "'inputs': ")
        columns = inputs
    elif len(specs) == 1:
        columns = {names[0]: inputs}
    else:
        raise BadRequestError(f"{what} has inputs {names}: 'inputs' must be an object {{input: tensor}}")
    return {spec.name: to_tensor(columns[spec.name], spec, what) for spec in specs}


def _is_named(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64(value)


def is_b64(value: Any) -> bool:
    """Whether a JSON value is TF Serving's {"b64": "..."} binary string."""
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def to_tensor(value: Any, spec: TensorSpec, what: str) -> np.ndarray:
    """A JSON value as an array of the input's dtype; strings may be plain or {"b64": ...}."""
    where = f"{what}: input '{spec.name}'"
    if spec.datatype != "BYTES":
        return to_array(value, spec.datatype, where)
    return object_array(value, where, lambda item: _string_element(item, where))


def _string_element(item: Any, where: str) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if is_b64(item) and isinstance(item["b64"], str):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequestError(f"{where}: 'b64' value is not valid base64") from None
    raise BadRequestError(f'{where}: DT_STRING elements must be strings or {{"b64": ...}}, got {type(item).__name__}')


def to_json_value(arr: np.ndarray, name: str) -> Any:
    """An output as orjson can write it: strings by TF Serving's rules (b64 for names ending in _bytes)."""
    if arr.dtype.kind in "OSU":
        b64 = name.endswith(B64_SUFFIX)
        flat = [_encode_string(item, b64) for item in arr.reshape(-1)]
        return np.asarray(flat, dtype=object).reshape(arr.shape).tolist() if arr.ndim else flat[0]
    if arr.ndim == 0:
        return arr.item()
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _encode_string(item: Any, b64: bool) -> Any:
    raw = item if isinstance(item, bytes) else str(item).encode()
    if b64:
        return {"b64": base64.b64encode(raw).decode()}
    return encode_bytes_element(raw)


def encode_predict(request: PredictRequest, produced: dict[str, np.ndarray], names: list[str], what: str) -> bytes:
    """{"predictions": ...} for a row-format request, {"outputs": ...} for a columnar one."""
    if request.rows is None:
        if len(names) == 1:
            return dumps({"outputs": to_json_value(produced[names[0]], names[0])})
        return dumps({"outputs": {name: to_json_value(produced[name], name) for name in names}})
    rows = request.rows
    for name in names:
        shape = produced[name].shape
        if not shape or shape[0] != rows:
            raise BadRequestError(
                f"{what}: output '{name}' has shape {list(shape)}, which does not split into {rows} instance(s); "
                "send the columnar format ('inputs') instead"
            )
    if len(names) == 1:
        return dumps({"predictions": to_json_value(produced[names[0]], names[0])})
    columns = {name: produced[name] for name in names}
    return dumps({"predictions": [{n: to_json_value(a[i, ...], n) for n, a in columns.items()} for i in range(rows)]})


def signature_def(signature: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> dict[str, Any]:
    """TF Serving's SignatureDefMap JSON for one predict signature; int64s (dims) are strings."""
    return {
        signature: {
            "inputs": {spec.name: _tensor_info(spec) for spec in inputs},
            "outputs": {spec.name: _tensor_info(spec) for spec in outputs},
            "method_name": PREDICT_METHOD,
            "defaults": {},
        }
    }


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    return {
        "dtype": DT_NAMES.get(spec.datatype, "DT_INVALID"),
        "name": spec.graph_name or spec.name,
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in spec.shape], "unknown_rank": False},
    }
