"""Dynamic batching: a bounded queue per model version and one runtime call per batch of rows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import math
import operator
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from service.errors import (
    BadRequestError,
    BatchTooLargeError,
    DeadlineExceededError,
    InternalError,
    ModelNotReadyError,
    QueueFullError,
    QueueTimeoutError,
    ServiceError,
    ShuttingDownError,
)

Arrays = dict[str, npt.NDArray[Any]]
RunBatch = Callable[[Arrays], Arrays]
Executed = tuple[list[Arrays], float]  # per-request outputs, and the runtime call's own duration
ShapeKey = tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]

logger = logging.getLogger(__name__)
_EWMA_WEIGHT = 0.2
# Batches whose mean runtime call is below this run on the event loop: the hop to a worker thread and back costs
# more than such a model. The first batch always goes to the executor, and a model that slows down (bigger batches,
# a busy GPU) moves back to it as the mean rises.
INLINE_BATCH_S = 0.0002  # weight of the newest batch in the mean batch time behind Retry-After
_by_name = operator.itemgetter(0)


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


@dataclass(slots=True, eq=False)
class _Item:
    """A queued request; the future travels with it."""

    inputs: Arrays
    rows: int
    key: ShapeKey
    future: asyncio.Future[Arrays]
    enqueued_at: float
    deadline: float | None
    queue_deadline: float | None
    idle: bool  # nothing queued or running at submit: its batch must not wait for company
    queued: bool = True  # counted in queue_depth until dispatched, failed or abandoned


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class DynamicBatcher:
    """Merges concurrent requests of one model version into few runtime calls, bounded in queue and concurrency."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_batch_delay_ms: float,
        max_queue_size: int,
        max_concurrent_batches: int = 1,
        preferred_batch_sizes: Sequence[int] = (),
        executor: concurrent.futures.Executor | None = None,
        observer: BatchObserver | None = None,
        name: str = "",
        inline_below_s: float = INLINE_BATCH_S,
    ) -> None:
        if max_batch_delay_ms < 0 or max_queue_size < 1 or max_concurrent_batches < 0:
            raise ValueError("need max_batch_delay_ms >= 0, max_queue_size >= 1, max_concurrent_batches >= 0")
        if max_batch_size > 1 and any(not 1 <= size <= max_batch_size for size in preferred_batch_sizes):
            raise ValueError(f"preferred_batch_sizes must lie in 1..{max_batch_size}")
        self._run_batch = run_batch
        self._inline_below_s = inline_below_s
        self._max_rows = max_batch_size
        self._batching = max_batch_size > 1
        self._delay_s = max_batch_delay_ms / 1000
        self._max_queue = max_queue_size
        self._limit = max_concurrent_batches
        self._preferred = frozenset(preferred_batch_sizes)
        self._executor = executor
        self._observer = observer
        self._who = name or "model"  # callers pass a full label, e.g. "model 'm' version 1"
        self._queue: deque[_Item] = deque()  # abandoned items stay until popped or compacted
        self._forming: list[_Item] = []  # the batch being filled, still counted as queued
        self._running: dict[int, list[_Item]] = {}
        self._depth = 0
        self._inflight = 0
        self._batch_seq = 0
        self._mean_batch_s = 0.0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting to join a batch."""
        return self._depth

    @property
    def inflight_batches(self) -> int:
        """Batches executing in the runtime now."""
        return self._inflight

    def retry_after_s(self) -> int:
        """Whole seconds a refused client should wait: the queue's batches times the mean batch time."""
        per_round = max(self._max_rows, 1) * max(self._limit, 1)
        return max(1, math.ceil(self._depth * self._mean_batch_s / per_round))

    async def start(self) -> None:
        """Start the worker on the running loop; the batcher serves between start and stop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher {self._who}")

    async def submit(
        self, inputs: Arrays, *, deadline: float | None = None, queue_deadline: float | None = None
    ) -> Arrays:
        """Queue one request (deadlines are time.monotonic() values) and return its slice of the batch outputs."""
        item = self._admit(inputs, deadline, queue_deadline)
        timers = self._arm_timers(item)
        try:
            return await item.future
        finally:
            for timer in timers:
                timer.cancel()
            self._leave(item)  # still queued only if the caller was cancelled: it must never run

    async def stop(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Refuse new work, run (drain) or fail what is queued, then wait for the running batches."""
        self._closing = True
        if not drain:
            self._fail_waiting(ShuttingDownError)
        self._poke()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if done:
            return
        # Past the timeout nothing may hang: fail what is left. Runtime calls cannot be interrupted, so running
        # batches finish in the executor and their results are discarded.
        self._task.cancel()
        await asyncio.wait({self._task})
        for batch in self._running.values():
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(ShuttingDownError())

    def set_max_concurrent_batches(self, n: int) -> None:
        """Scale the batches running at once (loop thread only); 0 pauses and fails what is queued with 503."""
        if n < 0:
            raise ValueError("max_concurrent_batches must be >= 0")
        self._limit = n
        if n == 0:
            self._fail_waiting(lambda: ModelNotReadyError(f"{self._who} is paused"))
        self._poke()

    def _admit(self, inputs: Arrays, deadline: float | None, queue_deadline: float | None) -> _Item:
        if self._closing:
            raise ShuttingDownError()
        if self._limit == 0:
            raise ModelNotReadyError(f"{self._who} is paused")
        if self._task is None or self._task.done():
            raise ModelNotReadyError(f"{self._who} is not serving")
        rows, key = self._rows_and_key(inputs)
        if self._depth >= self._max_queue:
            message = f"{self._who}: queue is full ({self._max_queue} requests waiting)"
            raise QueueFullError(message, retry_after_s=self.retry_after_s())
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise self._deadline_error()
        if queue_deadline is not None and queue_deadline <= now:
            raise self._queue_timeout()
        idle = self._depth == 0 and self._inflight == 0
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        item = _Item(inputs, rows, key, future, now, deadline, queue_deadline, idle)
        if len(self._queue) >= 2 * self._max_queue:  # amortised removal of abandoned items
            self._queue = deque(queued for queued in self._queue if queued.queued)
        self._queue.append(item)
        self._depth += 1
        if self._observer is not None:
            self._observer.queue_depth(self._depth)
        if self._inflight < self._limit:  # with every slot busy the worker has nothing to do yet
            self._poke()
        return item

    def _rows_and_key(self, inputs: Arrays) -> tuple[int, ShapeKey]:
        if not self._batching:  # each request runs alone, whatever its shape
            first = next(iter(inputs.values()), None)
            return (first.shape[0] if first is not None and first.ndim else 1), ()
        rows = -1
        for name, array in inputs.items():
            if array.ndim == 0 or rows not in (-1, array.shape[0]):
                raise BadRequestError(f"all inputs need the same dim 0; {name!r} has shape {list(array.shape)}")
            rows = array.shape[0]
        if rows < 0:
            raise BadRequestError("request has no inputs")
        if rows > self._max_rows:
            raise BatchTooLargeError(f"request has {rows} rows, more than max_batch_size {self._max_rows}")
        return rows, tuple((name, a.dtype, a.shape[1:]) for name, a in sorted(inputs.items(), key=_by_name))

    def _arm_timers(self, item: _Item) -> list[asyncio.TimerHandle]:
        loop, now = asyncio.get_running_loop(), time.monotonic()
        timers: list[asyncio.TimerHandle] = []
        if item.deadline is not None:
            timers.append(loop.call_later(item.deadline - now, self._expire, item, False))
        if item.queue_deadline is not None:
            timers.append(loop.call_later(item.queue_deadline - now, self._expire, item, True))
        return timers

    def _expire(self, item: _Item, queue_only: bool) -> None:
        # A deadline fails the request queued or running (a running batch's result is then discarded);
        # a queue deadline only counts until the batch starts.
        if not item.future.done() and (item.queued or not queue_only):
            self._fail(item, self._queue_timeout() if queue_only else self._deadline_error())

    def _deadline_error(self) -> DeadlineExceededError:
        return DeadlineExceededError(f"{self._who}: request deadline exceeded")

    def _queue_timeout(self) -> QueueTimeoutError:
        message = f"{self._who}: request waited past its queue timeout"
        return QueueTimeoutError(message, retry_after_s=self.retry_after_s())

    def _leave(self, item: _Item) -> None:
        if item.queued:
            item.queued = False
            self._depth -= 1
            if self._observer is not None:
                self._observer.queue_depth(self._depth)

    def _fail(self, item: _Item, error: ServiceError) -> None:
        self._leave(item)
        if not item.future.done():
            item.future.set_exception(error)

    def _fail_waiting(self, make_error: Callable[[], ServiceError]) -> None:
        for item in [*self._queue, *self._forming]:
            if item.queued:
                self._fail(item, make_error())
        self._queue.clear()

    def _live(self, item: _Item, now: float) -> bool:
        """False for a request that may no longer run: abandoned, failed, or past a deadline (then failed)."""
        if item.future.done():
            self._leave(item)
        elif item.deadline is not None and item.deadline <= now:
            self._fail(item, self._deadline_error())
        elif item.queue_deadline is not None and item.queue_deadline <= now:
            self._fail(item, self._queue_timeout())
        else:
            return True
        return False

    def _poke(self) -> None:
        if self._wakeup is not None:
            _wake(self._wakeup)

    async def _sleep(self, timeout_s: float | None) -> None:
        # The worker yields only here, so a poke (arrival, finished batch, scale, stop) is never lost.
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup = loop.create_future()
        timer = None if timeout_s is None else loop.call_later(timeout_s, _wake, wakeup)
        try:
            await wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    async def _run(self) -> None:
        try:
            while not (self._closing and self._depth == 0 and self._inflight == 0):
                if self._depth == 0 or self._inflight >= self._limit:
                    await self._sleep(None)
                else:
                    self._dispatch(await self._assemble())
        except Exception:
            logger.exception("%s: batch worker failed", self._who)
            self._fail_waiting(lambda: InternalError(f"{self._who}: batch worker failed"))
        finally:
            self._fail_waiting(ShuttingDownError)

    async def _assemble(self) -> list[_Item]:
        now = time.monotonic()
        while self._queue and not self._live(self._queue[0], now):
            self._queue.popleft()
        if not self._queue:
            return []
        batch = self._forming = [self._queue.popleft()]
        if not self._batching:
            return batch
        first = batch[0]
        rows, closed = self._take(batch, first.rows)
        if first.idle or self._delay_s <= 0:  # a lone request must not wait for company
            return batch
        flush_at = first.enqueued_at + self._delay_s
        while not closed and not self._closing and self._limit > 0:
            remaining = flush_at - time.monotonic()
            if remaining <= 0:
                break
            await self._sleep(remaining)
            rows, closed = self._take(batch, rows)
        return batch

    def _take(self, batch: list[_Item], rows: int) -> tuple[int, bool]:
        """Move queued requests of the batch's shape into it in arrival order; True once it is closed."""
        queue, key, now = self._queue, batch[0].key, time.monotonic()
        skipped: list[_Item] = []
        closed = rows >= self._max_rows or rows in self._preferred
        while queue and not closed:
            item = queue[0]
            if not self._live(item, now):
                queue.popleft()
            elif item.key != key:  # another shape: stays queued, in order, for a later batch
                skipped.append(queue.popleft())
            elif rows + item.rows > self._max_rows:
                closed = True  # the next request does not fit, so waiting longer cannot help
            else:
                batch.append(queue.popleft())
                rows += item.rows
                closed = rows >= self._max_rows or rows in self._preferred
        queue.extendleft(reversed(skipped))
        return rows, closed

    def _dispatch(self, batch: list[_Item]) -> None:
        self._forming = []
        now = time.monotonic()
        batch = [item for item in batch if self._live(item, now)]  # some may have gone while it filled
        if not batch:
            return
        for item in batch:
            item.queued = False
        self._depth -= len(batch)
        rows = sum(item.rows for item in batch)
        self._inflight += 1
        self._batch_seq += 1
        self._running[self._batch_seq] = batch
        if self._observer is not None:
            self._observer.queue_depth(self._depth)
            self._observer.batch_started(rows, [now - item.enqueued_at for item in batch])
            self._observer.inflight(self._inflight)
        loop = asyncio.get_running_loop()
        args = ([item.inputs for item in batch], [item.rows for item in batch], rows)
        on_done = functools.partial(self._on_done, self._batch_seq, rows, now)
        if 0 < self._mean_batch_s <= self._inline_below_s:
            # A batch this short costs less than the hop to a worker thread and back: run it on the loop.
            done: asyncio.Future[Executed] = loop.create_future()
            try:
                done.set_result(self._execute(*args))
            except Exception as exc:
                done.set_exception(exc)
            on_done(done)
            return
        try:
            done = loop.run_in_executor(self._executor, self._execute, *args)
        except RuntimeError as exc:  # the executor was shut down under us
            done = loop.create_future()
            done.set_exception(exc)
        done.add_done_callback(on_done)

    def _execute(self, inputs: list[Arrays], counts: list[int], rows: int) -> tuple[list[Arrays], float]:
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
        bounds = itertools.pairwise(itertools.accumulate(counts, initial=0))
        return [{name: out[start:stop] for name, out in outputs.items()} for start, stop in bounds], compute_s

    def _on_done(self, seq: int, rows: int, started: float, done: asyncio.Future[Executed]) -> None:
        batch = self._running.pop(seq)
        self._inflight -= 1
        error = self._batch_error(done, rows)
        results, compute_s = done.result() if error is None else ([], time.monotonic() - started)
        mean = self._mean_batch_s
        self._mean_batch_s = compute_s if mean == 0 else mean + _EWMA_WEIGHT * (compute_s - mean)
        if error is None:
            for item, outputs in zip(batch, results, strict=True):
                if not item.future.done():  # done: the caller left, or its deadline passed while this ran
                    item.future.set_result(outputs)
        else:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        if self._observer is not None:
            self._observer.batch_finished(rows, compute_s, error is None)
            self._observer.inflight(self._inflight)
        self._poke()

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
