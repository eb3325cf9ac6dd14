"""Tensor types shared by every layer: V2 datatype names, their numpy dtypes, and named tensor signatures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import BadRequestError

DATATYPE_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
NUMPY_TO_DATATYPE: dict[str, str] = {v: k for k, v in DATATYPE_TO_NUMPY.items()}
_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {k: np.dtype(v) for k, v in DATATYPE_TO_NUMPY.items()}
_DATATYPES: dict[np.dtype[Any], str] = {dtype: name for name, dtype in _NUMPY_DTYPES.items()}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """Numpy dtype for a V2 datatype name; 400 for a name tandem does not know."""
    try:
        return _NUMPY_DTYPES[datatype]
    except KeyError:
        raise BadRequestError(f"unsupported datatype '{datatype}'") from None


def datatype_of(dtype: np.dtype[Any]) -> str:
    """V2 datatype name for a numpy dtype (str and bytes arrays count as BYTES)."""
    found = _DATATYPES.get(dtype)  # a dict hit: dtype.name is slow, and this runs for every tensor
    if found is not None:
        return found
    if dtype.kind in "OSU":
        return "BYTES"
    return NUMPY_TO_DATATYPE[dtype.name]


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output as the artifact declares it; -1 marks a dynamic dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    # The tensor's name in the graph where the format has one (SavedModel: "serving_default_x:0"); descriptive only.
    graph_name: str = field(default="", compare=False)
    # BYTES elements must be UTF-8 text (ONNX string tensors); checked before a request is queued.
    text: bool = field(default=False, compare=False)

    @property
    def dtype(self) -> np.dtype[np.generic]:
        """Numpy dtype of this tensor (object for BYTES)."""
        return np.dtype(DATATYPE_TO_NUMPY[self.datatype])

    @property
    def batched(self) -> bool:
        """Whether dim 0 is the dynamic batch dim."""
        return bool(self.shape) and self.shape[0] == -1
