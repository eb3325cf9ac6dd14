"""The one inference path over HTTP: every dialect is a decoder to InferRequest and an encoder of InferResponse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from service import tracing
from service.api.http import (
    Call,
    begin,
    check_name,
    deadline,
    disconnected,
    engine,
    finish,
    not_ready,
    read_body,
    settings,
)
from service.engine import Engine
from service.errors import ModelNotFoundError, QueueFullError
from service.inference import InferRequest, InferResponse, validate_for
from service.model import ModelInfo
from service.overload import RESERVED, Refusals
from service.repository import parse_version

# decode(body, headers, model, max_body_bytes) -> the request and what the encoder needs to answer it
Decode = Callable[[bytes, Mapping[str, str], ModelInfo, int], tuple[InferRequest, Any]]
# encode(response, what decode kept) -> the HTTP response
Encode = Callable[[InferResponse, Any], Response]


@dataclass(frozen=True, slots=True)
class Dialect:
    """One wire format's pair of functions, and how it names things in metrics and messages."""

    name: str  # the `dialect` metric label
    decode: Decode
    encode: Encode
    decompress: bool = False  # accept gzip/deflate request bodies
    not_found: str = "model '{name}' not found"  # the dialect's wording for an unknown model


async def infer(
    request: Request, dialect: Dialect, name: str, version: str | int | None = None, label: str | None = None
) -> Response:
    """Look up, read, decode, validate, queue, run and encode one request: the same six hops for every dialect.

    `version` is the path's text (checked here) or a number the dialect already parsed; None means the default.
    """
    call = begin(request, dialect.name)
    if (reserved := request.scope.get(RESERVED)) is not None:
        reserved.end()  # the connection held this request's place since its head; admit() below decides now
    marks = [time.time_ns()] if tracing.ENABLED else None  # span instants, only when traces are on
    if isinstance(version, str) or version is None:
        version = parse_version(version, check_name(name))
    found = engine(request)
    try:
        model = found.get(name, version, label)
    except ModelNotFoundError as exc:
        if type(exc) is ModelNotFoundError:
            raise ModelNotFoundError(dialect.not_found.format(name=name)) from None
        raise
    call.bind(model.name, model.version)
    if not model.ready:
        raise not_ready(model)
    refusals: Refusals = request.app.state.refusals
    try:
        model.admit()
    except QueueFullError:  # from now on the connection refuses this path from the request head (overload.py)
        if (raw_path := request.scope.get("raw_path")) is not None:
            metrics, ts = request.app.state.metrics, dialect.name == "torchserve"
            refusals.remember(raw_path, found, metrics, dialect.name, (name, version, label), ts)
        raise
    try:
        response, reply = await _queued(request, found, dialect, model, version is not None or label is not None, marks)
    finally:
        if refusals.holding:  # after the batcher has taken its next batch off the queue (it runs first)
            asyncio.get_running_loop().call_soon(refusals.release, model)
    if marks is not None:
        marks.append(time.time_ns())
    call.bind(response.model, response.version)
    call.queue_s, call.compute_s = response.queue_s, response.compute_s
    answer = dialect.encode(response, reply)
    finish(request.app.state.metrics, call, 200, "ok")
    if marks is not None:
        marks.append(time.time_ns())
        tracing.record(request.headers, _span_attributes(request, call), marks, response)
    return answer


async def _queued(
    request: Request, found: Engine, dialect: Dialect, model: ModelInfo, pinned: bool, marks: list[int] | None
) -> tuple[InferResponse, Any]:
    """Read and decode an admitted request, queue it and wait for its batch: its answer and what encode needs."""
    model.admitting += 1
    try:
        infer_request, reply = await _decoded(request, dialect, model)
    finally:
        model.admitting -= 1
    if marks is not None:
        marks.append(time.time_ns())
    infer_request.pinned = pinned
    infer_request.deadline = deadline(request, model.limits, infer_request.parameters.get("timeout"))
    return await found.infer(infer_request, disconnected(request.receive)), reply


def _span_attributes(request: Request, call: Call) -> dict[str, str]:
    return {
        "http.request.method": request.method,
        "url.path": request.url.path,
        "tandem.dialect": call.dialect,
        "tandem.model": call.model,
        "tandem.version": call.version,
        "tandem.request_id": str(request.scope.get("tandem.request_id", "")),
    }


async def _decoded(request: Request, dialect: Dialect, model: ModelInfo) -> tuple[InferRequest, Any]:
    """Read, decode and validate the body against the version's signature."""
    max_bytes = settings(request).max_body_bytes
    body = await read_body(request, max_bytes, decompress=dialect.decompress)
    request.app.state.metrics.observe_body(dialect.name, len(body))
    infer_request, reply = dialect.decode(body, request.headers, model, max_bytes)
    validate_for(infer_request, model)
    return infer_request, reply
