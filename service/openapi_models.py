"""Request and response bodies of the inference routes, for the OpenAPI description only.

The routes read their bodies raw (service.codec_*): these models never parse a request; they document it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Datatype = (
    Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
    | Literal["FP16", "FP32", "FP64", "BF16", "BYTES"]
)
Parameters = dict[str, Any]
Data = list[Any]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class V2InputTensor(_Doc):
    """One input tensor; `data` is flat or nested row-major, or absent with `binary_data_size`."""

    name: str
    shape: list[int] = Field(description="Dimensions; -1 is not allowed in a request.")
    datatype: Datatype
    parameters: Parameters | None = Field(None, description="binary_data_size: bytes of this tensor after the JSON.")
    data: Data | None = None


class V2RequestedOutput(_Doc):
    """An output the client wants; `binary_data: true` asks for it after the JSON header."""

    name: str
    parameters: Parameters | None = None


class V2InferRequest(_Doc):
    """KServe V2 inference request (JSON, or a JSON header followed by binary tensors)."""

    id: str | None = None
    parameters: Parameters | None = Field(None, description="timeout (µs), binary_data_output.")
    inputs: list[V2InputTensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(_Doc):
    """One output tensor; `data` is absent when it was sent as binary."""

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: Data | None = None


class V2InferResponse(_Doc):
    """KServe V2 inference response."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[V2OutputTensor]


class V2Error(BaseModel):
    """Every V2 and TF Serving error."""

    error: str


class TFPredictRow(_Doc):
    """TF Serving predict, row form: one entry per example."""

    signature_name: str | None = None
    instances: list[Any]


class TFPredictColumnar(_Doc):
    """TF Serving predict, columnar form: one array (or one per named input) over all examples."""

    signature_name: str | None = None
    inputs: Any


class TFPredictResponse(_Doc):
    """`predictions` answers the row form, `outputs` the columnar form."""

    predictions: list[Any] | None = None
    outputs: Any = None


class TorchServeError(BaseModel):
    """Every error under /ping, /predictions and /models, in TorchServe's shape."""

    code: int
    type: str
    message: str


DOC_MODELS: list[type[BaseModel]] = [
    V2InferRequest,
    V2InferResponse,
    V2Error,
    TFPredictRow,
    TFPredictColumnar,
    TFPredictResponse,
    TorchServeError,
]
