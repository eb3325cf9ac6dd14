"""The typed seam between a dialect and the engine: InferRequest in, InferResponse out, validated before queueing."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import BadRequestError, BatchTooLargeError, ServiceError
from service.tensors import TensorSpec, datatype_of

if TYPE_CHECKING:
    from service.model import ModelInfo


@dataclass(slots=True)
class InferRequest:
    """One decoded request: arrays by input name, checked against one version's signature by validate()."""

    model: str
    version: int  # the version whose signature the inputs were validated against
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None = None  # requested outputs in the client's order; None: all, declared order
    pinned: bool = False  # the client named the version (or a label): never retried on another one
    deadline: float | None = None  # time.monotonic() after which the request must not run
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    rows: int = 1  # dim 0 shared by the batched inputs, set by validate()
    parts: int = 1  # requests a worker gathered into this one (service.ipc.gather); each counts in the stats


@dataclass(slots=True)
class InferResponse:
    """The outputs of one request, by name, and the version that produced them."""

    model: str
    version: int
    outputs: dict[str, np.ndarray]
    queue_s: float = 0.0  # waiting for its batch to start
    compute_s: float = 0.0  # its batch's runtime call
    batch_id: int = 0  # which batch (the requests of one batch share it)


def validate_for(request: InferRequest, model: ModelInfo) -> None:
    """validate() against a model version's signature and batch limit; a refused request counts as failed.

    Triton counts requests refused before queueing in the version's failure statistics, and so does tandem.
    """
    max_rows = model.limits.max_batch_size if model.limits else 0
    try:
        validate(request, model.inputs, model.outputs, max_rows, model.label)
    except ServiceError:
        model.stats.request_finished(False, time.perf_counter_ns())
        raise


def validate(
    request: InferRequest, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], max_rows: int, what: str
) -> None:
    """Everything a request can get wrong, found before it is queued: a batch never fails for a neighbour.

    Checks input names, datatypes, ranks and fixed dims, dim 0 agreement, the batch limit (`max_rows` > 1 means the
    model batches), UTF-8 text where the runtime needs it, and the requested outputs; sets `request.rows`.
    """
    arrays = request.inputs
    if len(arrays) != len(inputs) or any(spec.name not in arrays for spec in inputs):
        check_names(arrays, inputs, what)
    rows = -1
    for spec in inputs:
        arr = arrays[spec.name]
        _check_tensor(arr, spec, what)
        if spec.batched:
            if rows not in (-1, arr.shape[0]):
                raise BadRequestError(f"{what}: inputs disagree on batch size ({rows} vs {arr.shape[0]})")
            rows = arr.shape[0]
    if rows == 0:  # the batch would run on no rows and answer none: refuse it rather than fail the batch
        raise BadRequestError(f"{what}: the request has 0 rows (dim 0 of the batched inputs); send at least one")
    request.rows = max(rows, 1)
    if max_rows > 1 and rows > max_rows:
        raise BatchTooLargeError(f"{what}: request has {rows} rows, more than max_batch_size {max_rows}")
    if request.outputs is not None:
        declared = [spec.name for spec in outputs]
        for name in request.outputs:
            if name not in declared:
                raise BadRequestError(f"{what}: unknown output '{name}'; the model has {declared}")


def check_names(given: Iterable[str], inputs: Sequence[TensorSpec], what: str, where: str = "") -> None:
    """400 naming every missing and unknown input name, and the names the model expects."""
    given = list(given)
    expected = [spec.name for spec in inputs]
    missing = [name for name in expected if name not in given]
    unknown = sorted(name for name in given if name not in expected)
    problems = [f"missing input(s) {missing}"] * bool(missing) + [f"unknown input(s) {unknown}"] * bool(unknown)
    if problems:
        raise BadRequestError(f"{what}: {where}{', '.join(problems)}; expected {expected}")


def _check_tensor(arr: np.ndarray, spec: TensorSpec, what: str) -> None:
    where = f"{what}: input '{spec.name}'"
    datatype = datatype_of(arr.dtype)
    if datatype != spec.datatype:
        raise BadRequestError(f"{where} expects datatype {spec.datatype}, got {datatype}")
    if arr.ndim != len(spec.shape):
        raise BadRequestError(
            f"{where} expects shape {list(spec.shape)} (rank {len(spec.shape)}), got {list(arr.shape)}"
        )
    for got, want in zip(arr.shape, spec.shape, strict=True):
        if want >= 0 and got != want:
            raise BadRequestError(f"{where} expects shape {list(spec.shape)}, got {list(arr.shape)}")
    if spec.text and datatype == "BYTES":
        for item in arr.reshape(-1):
            if isinstance(item, bytes):
                try:
                    item.decode()
                except UnicodeDecodeError:
                    raise BadRequestError(f"{where}: BYTES elements must be UTF-8 text for this model") from None


def select(
    produced: dict[str, np.ndarray], outputs: Sequence[TensorSpec], wanted: tuple[str, ...] | None
) -> dict[str, np.ndarray]:
    """The outputs a request asked for, in its order; every declared output, in declared order, when it asked none."""
    names = wanted if wanted is not None else [spec.name for spec in outputs]
    return {name: produced[name] for name in names}
