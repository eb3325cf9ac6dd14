"""The pieces of a batch: a pending request, the observer hook, how a batch forms, and running it once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import operator
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from service.errors import InternalError, ServiceError

Arrays = dict[str, npt.NDArray[Any]]
ShapeKey = tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]
RunBatch = Callable[[Arrays], Arrays]
Executed = tuple[list[Arrays], float]  # per-request outputs, and the runtime call's own duration

logger = logging.getLogger("service.batcher")
_by_name = operator.itemgetter(0)
# Weight of the newest batch in the mean batch time (Retry-After and the inline decision).
_EWMA_WEIGHT = 0.2
# Batches whose mean runtime call is below this run on the event loop: the hop to a worker thread and back costs
# more than such a model. The first batch always goes to the executor, and a model that slows down (bigger batches,
# a busy GPU) moves back to it as the mean rises.
INLINE_BATCH_S = 0.0002


class BatchObserver(Protocol):
    """Metrics hook, called on the event loop thread; implementations must be cheap and must not raise."""

    def queue_depth(self, depth: int) -> None:
        """Requests waiting now, reported after every change."""

    def batch_started(self, rows: int, queue_waits_s: Sequence[float]) -> None:
        """A batch went to the runtime; one queue wait per request in it."""

    def batch_finished(self, rows: int, compute_s: float, ok: bool) -> None:
        """A batch came back from the runtime, successfully or not."""

    def inflight(self, batches: int) -> None:
        """Batches executing now."""


BATCH_IDS = itertools.count(1)  # every batch of this process, across versions


@dataclass(slots=True)
class Timing:
    """Where one request's time went in the engine: waiting for its batch, and that batch's runtime call."""

    queue_s: float = 0.0
    compute_s: float = 0.0
    batch_id: int = 0  # the batch it ran in, unique in this process (traces link the requests of one batch)


@dataclass(slots=True, eq=False)
class Pending:
    """A queued request; the future travels with it."""

    inputs: Arrays
    rows: int
    key: ShapeKey
    future: asyncio.Future[Arrays]
    enqueued_at: float
    deadline: float | None
    queue_deadline: float | None
    idle: bool  # nothing queued or running at submit: its batch must not wait for company
    gone: Callable[[], bool] | None  # True once the client has left: the request is dropped before it runs
    queued: bool = True  # counted in queue_depth until dispatched, failed or abandoned
    dispatched_at: float = 0.0  # time.monotonic() when its batch started
    compute_s: float = 0.0  # its batch's runtime call
    batch_id: int = 0


def split_rows(outputs: Arrays, counts: Sequence[int]) -> list[Arrays]:
    """Each request's rows of a batch's outputs, in order: views by slicing (np.split costs ten times as much)."""
    bounds = itertools.pairwise(itertools.accumulate(counts, initial=0))
    return [{name: out[start:stop] for name, out in outputs.items()} for start, stop in bounds]


def shape_key(inputs: Arrays) -> ShapeKey:
    """Requests batch together only when every input agrees in name, dtype and non-batch dims."""
    return tuple((name, a.dtype, a.shape[1:]) for name, a in sorted(inputs.items(), key=_by_name))


def take(
    queue: deque[Pending],
    batch: list[Pending],
    rows: int,
    max_rows: int,
    preferred: frozenset[int],
    live: Callable[[Pending, float], bool],
) -> tuple[int, bool]:
    """Move queued requests of the batch's shape into it in arrival order; True once it is closed."""
    key, now = batch[0].key, time.monotonic()
    skipped: list[Pending] = []
    closed = rows >= max_rows or rows in preferred
    while queue and not closed:
        item = queue[0]
        if not live(item, now):
            queue.popleft()
        elif item.key != key:  # another shape: stays queued, in order, for a later batch
            skipped.append(queue.popleft())
        elif rows + item.rows > max_rows:
            closed = True  # the next request does not fit, so waiting longer cannot help
        else:
            batch.append(queue.popleft())
            rows += item.rows
            closed = rows >= max_rows or rows in preferred
    queue.extendleft(reversed(skipped))
    return rows, closed


class BatchRunner:
    """Calls the runtime for a batch, inline or on the executor, and keeps the mean batch time."""

    def __init__(
        self,
        run_batch: RunBatch,
        executor: concurrent.futures.Executor | None,
        inline_below_s: float,
        who: str,
        batching: bool,
    ) -> None:
        self._run_batch = run_batch
        self._executor = executor
        self._inline_below_s = inline_below_s
        self._who = who
        self._batching = batching
        self.mean_batch_s = 0.0

    def start(self, inputs: list[Arrays], counts: list[int], rows: int) -> asyncio.Future[Executed]:
        """Begin one runtime call; the future holds the per-request outputs and the call's duration."""
        loop = asyncio.get_running_loop()
        if 0 < self.mean_batch_s <= self._inline_below_s:
            done: asyncio.Future[Executed] = loop.create_future()
            try:
                done.set_result(self._execute(inputs, counts, rows))
            except Exception as exc:
                done.set_exception(exc)
            return done
        try:
            return loop.run_in_executor(self._executor, self._execute, inputs, counts, rows)
        except RuntimeError as exc:  # the executor was shut down under us
            done = loop.create_future()
            done.set_exception(exc)
            return done

    def finish(
        self, done: asyncio.Future[Executed], rows: int, started: float
    ) -> tuple[list[Arrays], float, ServiceError | None]:
        """Outputs per request, the call's duration and the error for every request when it failed."""
        error = self._batch_error(done, rows)
        results, compute_s = done.result() if error is None else ([], time.monotonic() - started)
        mean = self.mean_batch_s
        self.mean_batch_s = compute_s if mean == 0 else mean + _EWMA_WEIGHT * (compute_s - mean)
        return results, compute_s, error

    def _execute(self, inputs: list[Arrays], counts: list[int], rows: int) -> Executed:
        """Merge when needed, call the runtime once (timed alone), split the outputs into views."""
        merged = inputs[0] if len(inputs) == 1 else {n: np.concatenate([i[n] for i in inputs]) for n in inputs[0]}
        started = time.perf_counter()
        outputs = self._run_batch(merged)
        compute_s = time.perf_counter() - started
        if not self._batching:
            return [outputs], compute_s
        for name, out in outputs.items():
            if out.ndim == 0 or out.shape[0] != rows:
                raise InternalError(f"{self._who}: output {name!r} has shape {list(out.shape)} for {rows} rows")
        if len(inputs) == 1:
            return [outputs], compute_s
        return split_rows(outputs, counts), compute_s

    def _batch_error(self, done: asyncio.Future[Executed], rows: int) -> ServiceError | None:
        if done.cancelled():
            return InternalError(f"{self._who}: batch was cancelled")
        exc = done.exception()
        if exc is None:
            return None
        if isinstance(exc, ServiceError) and not isinstance(exc, InternalError):
            return exc  # e.g. OutOfMemoryError: the runtime already chose the client's answer
        logger.error("%s: batch of %d rows failed", self._who, rows, exc_info=exc)
        if isinstance(exc, InternalError):
            return exc
        error = InternalError(f"{self._who}: runtime failed on a batch of {rows} rows")
        error.__cause__ = exc
        return error
