"""TorchServe /predictions bodies without handlers: one fixed decoding per Content-Type, and the rank rule."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from service.codec import dumps, parse_json
from service.codec_tfserving import is_b64, to_json_value, to_tensor
from service.errors import BadRequestError, UnsupportedMediaTypeError
from service.inference import check_names

if TYPE_CHECKING:
    from service.tensors import TensorSpec

NPY_MAGIC = b"\x93NUMPY"
NPY_TYPES = frozenset({"application/x-npy", "application/npy"})


def media_type(content_type: str | None) -> str:
    """The bare, lower-case media type of a Content-Type header ('' when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_body(
    body: bytes, content_type: str | None, specs: Sequence[TensorSpec], what: str
) -> tuple[dict[str, np.ndarray], bool]:
    """Arrays by input name, and whether the body was one instance (its batch dim added, to strip on the way out)."""
    media = media_type(content_type)
    if media.startswith("multipart/"):
        raise UnsupportedMediaTypeError(f"{media} bodies are not supported; send JSON or the raw tensor bytes")
    if media == "application/json" or media.endswith("+json"):
        return _from_json(parse_json(body), specs, what)
    if media in NPY_TYPES:
        return rank_rule({_single(specs, what, media).name: _from_npy(body, what)}, specs, what)
    return _from_raw(body, _single(specs, what, media or "a body without Content-Type"), what)


def _single(specs: Sequence[TensorSpec], what: str, media: str) -> TensorSpec:
    if len(specs) != 1:
        names = [spec.name for spec in specs]
        raise UnsupportedMediaTypeError(
            f"{what} has inputs {names}; {media} carries one tensor, send JSON {{input: value}} instead"
        )
    return specs[0]


def _from_json(value: Any, specs: Sequence[TensorSpec], what: str) -> tuple[dict[str, np.ndarray], bool]:
    names = [spec.name for spec in specs]
    if isinstance(value, dict) and not is_b64(value):
        check_names(value, specs, what)
        values = value
    elif len(specs) == 1:
        values = {names[0]: value}
    else:
        raise BadRequestError(f"{what} has inputs {names}: send a JSON object {{input: value}}")
    return rank_rule({spec.name: to_tensor(values[spec.name], spec, what) for spec in specs}, specs, what)


def rank_rule(
    arrays: dict[str, np.ndarray], specs: Sequence[TensorSpec], what: str
) -> tuple[dict[str, np.ndarray], bool]:
    """A value one rank short of the input is one instance (a batch dim is added); the input's rank is a batch."""
    instance: bool | None = None
    for spec in specs:
        arr, rank = arrays[spec.name], len(spec.shape)
        if arr.ndim not in (rank, rank - 1):
            raise BadRequestError(
                f"{what}: input '{spec.name}' takes rank {rank} (a batch) or {rank - 1} (one instance), "
                f"got shape {list(arr.shape)}"
            )
        one = arr.ndim == rank - 1
        if instance is not None and one != instance:
            raise BadRequestError(f"{what}: inputs mix single instances and batches")
        instance = one
    if instance:
        return {name: arr[np.newaxis] for name, arr in arrays.items()}, True
    return arrays, False


def _from_npy(body: bytes, what: str) -> np.ndarray:
    if not body.startswith(NPY_MAGIC):
        raise BadRequestError(f"{what}: body is not a .npy array")
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise BadRequestError(f"{what}: body is not a readable .npy array (object arrays are refused)") from None
    if arr.dtype.kind in "SU":
        out = np.empty(arr.size, dtype=object)
        out[:] = [item.encode() if isinstance(item, str) else item for item in arr.reshape(-1).tolist()]
        return out.reshape(arr.shape)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _from_raw(body: bytes, spec: TensorSpec, what: str) -> tuple[dict[str, np.ndarray], bool]:
    batched = bool(spec.shape) and spec.shape[0] == -1
    row = spec.shape[1:] if batched else spec.shape
    if spec.datatype == "BYTES":
        dims = [1 if d == -1 else d for d in row]
        if math.prod(dims) != 1:
            raise BadRequestError(f"{what}: input '{spec.name}' {list(spec.shape)} needs more than one element")
        arr = np.empty(dims, dtype=object)
        arr[(0,) * len(dims)] = body
    else:
        if any(d < 0 for d in row):
            raise UnsupportedMediaTypeError(
                f"{what}: input '{spec.name}' {list(spec.shape)} has dynamic dims; send JSON (application/json)"
            )
        need = math.prod(row) * spec.dtype.itemsize
        if len(body) != need:
            raise BadRequestError(
                f"{what}: raw body has {len(body)} bytes; one row of input '{spec.name}' "
                f"({spec.datatype} {list(row)}, little-endian) is {need} bytes"
            )
        arr = np.frombuffer(body, dtype=spec.dtype.newbyteorder("<")).reshape(row)
    return {spec.name: arr[np.newaxis] if batched else arr}, batched


def encode_outputs(produced: dict[str, np.ndarray], names: list[str], instance: bool) -> bytes:
    """One output as its nested list, several as {output: nested list}; one instance loses its batch dim."""
    values = {name: _unbatch(produced[name]) if instance else produced[name] for name in names}
    if len(names) == 1:
        return dumps(to_json_value(values[names[0]], names[0]))
    return dumps({name: to_json_value(value, name) for name, value in values.items()})


def _unbatch(arr: np.ndarray) -> np.ndarray:
    return arr[0, ...] if arr.ndim and arr.shape[0] == 1 else arr
