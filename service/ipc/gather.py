"""A worker's requests of one pass of its event loop, sent to the engine as one message per model and shape.

Under load a worker reads many requests per pass of its loop, and the engine would handle each message on its
own (parse, admit, answer) before batching them anyway. Requests that would batch together in the engine (same
model and version, pin, requested outputs, input dtypes and trailing dims, deadlines within DEADLINE_WINDOW_S,
rows within the model's max_batch_size) travel as one request instead: their inputs concatenated, one message,
one place in the engine's queue; the answer's outputs are split back by rows. The engine counts each part in
the model's statistics. What the batcher would do with them is unchanged: a batch fails or succeeds as a whole
either way, and a merged request is never split across batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.batching import split_rows
from service.errors import ServiceUnavailableError
from service.inference import InferRequest
from service.ipc import wire

DEADLINE_WINDOW_S = 0.01  # requests merge only with deadlines this close: none runs later than its own
Outputs = dict[str, np.ndarray]


@dataclass(slots=True)
class Part:
    """One request waiting in a gathered message, and the future its caller awaits."""

    request: InferRequest
    future: asyncio.Future[tuple[dict[str, Any], Outputs]]
    gone: Callable[[], bool] | None


def key_of(request: InferRequest, max_rows: int) -> tuple[object, ...] | None:
    """Requests with equal keys may travel as one; None when this one cannot share a message."""
    if max_rows < 2 or request.rows >= max_rows:
        return None
    shapes = []
    for name, array in request.inputs.items():
        if array.dtype.kind not in "biuf" or array.ndim == 0:
            return None  # BYTES travel inline, and a scalar has no batch dim
        shapes.append((name, array.dtype.str, array.shape[1:]))
    window = None if request.deadline is None else int(request.deadline // DEADLINE_WINDOW_S)
    return (request.model, request.version, request.pinned, request.outputs, tuple(shapes), window)


class Gathering:
    """The groups formed during this pass of the loop: per key, lists of parts whose rows fit one batch."""

    def __init__(self) -> None:
        self.groups: dict[tuple[object, ...], list[list[Part]]] = {}
        self._open_rows: dict[tuple[object, ...], int] = {}  # rows of each key's last group, not summed per add

    def add(self, key: tuple[object, ...], part: Part, max_rows: int) -> None:
        """Join the key's open group, or open another when its rows would pass max_rows."""
        groups = self.groups.setdefault(key, [[]])
        rows = self._open_rows.get(key, 0) + part.request.rows
        if rows > max_rows and groups[-1]:
            groups.append([])
            rows = part.request.rows
        groups[-1].append(part)
        self._open_rows[key] = rows

    def take(self) -> list[list[Part]]:
        """Every group, emptied from here."""
        found = [group for groups in self.groups.values() for group in groups if group]
        self.groups, self._open_rows = {}, {}
        return found


def merge(parts: list[Part]) -> InferRequest:
    """The one request the parts travel as: inputs concatenated in order, the earliest deadline."""
    first = parts[0].request
    if len(parts) == 1:
        return first
    inputs = {name: np.concatenate([p.request.inputs[name] for p in parts]) for name in first.inputs}
    deadlines = [p.request.deadline for p in parts if p.request.deadline is not None]
    return InferRequest(
        first.model,
        first.version,
        inputs,
        first.outputs,
        pinned=first.pinned,
        deadline=min(deadlines) if deadlines else None,
        id=first.id,
        rows=sum(p.request.rows for p in parts),
    )


def split(outputs: Outputs, parts: list[Part]) -> list[Outputs]:
    """Each part's rows of the merged outputs, in order (views, no copy)."""
    if len(parts) == 1:
        return [outputs]
    return split_rows(outputs, [p.request.rows for p in parts])


def all_gone(parts: list[Part]) -> Callable[[], bool] | None:
    """A merged request is dropped only when every part's client has left."""
    checks = [p.gone for p in parts]
    if any(check is None for check in checks):
        return None
    return lambda: all(check() for check in checks if check is not None)


def deliver(done: asyncio.Future[tuple[dict[str, Any], memoryview]], parts: list[Part]) -> None:
    """The engine answered the parts' message (or could not): each part gets its rows, or the error."""
    waiting = [p for p in parts if not p.future.done()]  # a caller may have been cancelled meanwhile
    error = done.exception() if not done.cancelled() else ServiceUnavailableError("the engine did not answer")
    if error is not None:
        for part in waiting:
            part.future.set_exception(error)
        return
    answer, data = done.result()
    if "error" in answer:
        for part in waiting:
            part.future.set_exception(wire.error_from(answer))
        return
    for part, outputs in zip(parts, split(wire.unpack(answer["outputs"], data, None), parts), strict=True):
        if not part.future.done():
            part.future.set_result((answer, outputs))
