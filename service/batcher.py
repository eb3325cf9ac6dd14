"""Dynamic batching: a bounded queue per model version and one runtime call per batch of rows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence

from service.batching import (
    BATCH_IDS,
    INLINE_BATCH_S,
    Arrays,
    BatchObserver,
    BatchRunner,
    Executed,
    Pending,
    RunBatch,
    Timing,
    shape_key,
    take,
)
from service.errors import InternalError, ModelNotReadyError, QueueFullError, ShuttingDownError
from service.request_queue import DeadlineTimer, RequestQueue

logger = logging.getLogger(__name__)


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
        self._runner = BatchRunner(run_batch, executor, inline_below_s, name or "model", max_batch_size > 1)
        self._max_rows = max_batch_size
        self._batching = max_batch_size > 1
        self._delay_s = max_batch_delay_ms / 1000
        self._max_queue = max_queue_size
        self._limit = max_concurrent_batches
        self._preferred = frozenset(preferred_batch_sizes)
        self._observer = observer
        self._who = name or "model"  # callers pass a full label, e.g. "model 'm' version 1"
        self._waiting = RequestQueue(self._who, observer, self.retry_after_s)
        self._running: dict[int, list[Pending]] = {}
        self._inflight = 0
        self._batch_seq = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._alone = False  # the last batch held a single request
        self._direct = True  # no request of this event-loop pass was dispatched by submit itself
        self._deadlines = DeadlineTimer(self._sweep)

    @property
    def queue_depth(self) -> int:
        """Requests waiting to join a batch."""
        return self._waiting.depth

    @property
    def inflight_batches(self) -> int:
        """Batches executing in the runtime now."""
        return self._inflight

    def retry_after_s(self) -> int:
        """Whole seconds a refused client should wait: the queue's batches times the mean batch time."""
        per_round = max(self._max_rows, 1) * max(self._limit, 1)
        return max(1, math.ceil(self._waiting.depth * self._runner.mean_batch_s / per_round))

    async def start(self) -> None:
        """Start the worker on the running loop; the batcher serves between start and stop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher {self._who}")

    async def submit(
        self,
        inputs: Arrays,
        *,
        rows: int = 1,
        deadline: float | None = None,
        queue_deadline: float | None = None,
        gone: Callable[[], bool] | None = None,
        timing: Timing | None = None,
    ) -> Arrays:
        """Queue one validated request of `rows` rows (deadlines are time.monotonic() values); return its outputs.

        Callers validate first (service.inference.validate): the batcher trusts names, dtypes, shapes and the
        row count, so that a batch never fails because of a neighbour. `gone` tells whether the client has left;
        it is asked while the batch forms, and such a request is dropped with ClientGoneError. `timing`, when
        given, receives the time the request waited and its batch's runtime call.
        """
        item = self._admit(inputs, rows, deadline, queue_deadline, gone)
        self._deadlines.watch(item.deadline)
        self._deadlines.watch(item.queue_deadline)
        try:
            outputs = await item.future
            if timing is not None:
                timing.queue_s, timing.compute_s = item.dispatched_at - item.enqueued_at, item.compute_s
                timing.batch_id = item.batch_id
            return outputs
        finally:
            self._waiting.leave(item)  # still queued only if the caller was cancelled: it must never run

    async def stop(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Refuse new work, run (drain) or fail what is queued, then wait for the running batches."""
        self._closing = True
        if not drain:
            self._waiting.fail_waiting(ShuttingDownError)
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
            self._waiting.fail_waiting(lambda: ModelNotReadyError(f"{self._who} is paused"))
        self._poke()

    def _admit(
        self,
        inputs: Arrays,
        rows: int,
        deadline: float | None,
        queue_deadline: float | None,
        gone: Callable[[], bool] | None,
    ) -> Pending:
        if self._closing:
            raise ShuttingDownError()
        if self._limit == 0:
            raise ModelNotReadyError(f"{self._who} is paused")
        if self._task is None or self._task.done():
            raise ModelNotReadyError(f"{self._who} is not serving")
        key = shape_key(inputs) if self._batching else ()
        if self._waiting.depth >= self._max_queue:
            message = f"{self._who}: queue is full ({self._max_queue} requests waiting)"
            raise QueueFullError(message, retry_after_s=self.retry_after_s())
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise self._waiting.deadline_error()
        if queue_deadline is not None and queue_deadline <= now:
            raise self._waiting.queue_timeout()
        idle = self._waiting.depth == 0 and self._inflight == 0
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        item = Pending(inputs, rows, key, future, now, deadline, queue_deadline, idle, gone)
        self._waiting.push(item, self._max_queue)
        if idle and self._alone and self._direct and self._wakeup is not None:
            # Requests come one at a time (the last batch held one) and the worker sleeps: it would dispatch this
            # one alone at once, so do it here and skip the hop through the worker task (a runtime call run inline
            # answers before submit awaits). Under concurrency batches hold more, and arrivals go through the worker,
            # which batches everything that arrived in the same pass of the event loop.
            self._waiting.items.pop()
            self._direct = False  # one per pass: the next arrivals of this pass go through the worker and batch
            asyncio.get_running_loop().call_soon(self._open_direct)
            self._dispatch([item])
        elif self._inflight < self._limit:  # with every slot busy the worker has nothing to do yet
            self._poke()
        return item

    def _open_direct(self) -> None:
        self._direct = True

    def _sweep(self, now: float) -> float | None:
        return self._waiting.sweep(itertools.chain.from_iterable(self._running.values()), now)

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
            while not (self._closing and self._waiting.depth == 0 and self._inflight == 0):
                if self._waiting.depth == 0 or self._inflight >= self._limit:
                    await self._sleep(None)
                else:
                    self._dispatch(await self._assemble())
        except Exception:
            logger.exception("%s: batch worker failed", self._who)
            self._waiting.fail_waiting(lambda: InternalError(f"{self._who}: batch worker failed"))
        finally:
            self._waiting.fail_waiting(ShuttingDownError)
            if not self._running:
                self._deadlines.cancel()

    async def _assemble(self) -> list[Pending]:
        now = time.monotonic()
        while self._waiting.items and not self._waiting.live(self._waiting.items[0], now):
            self._waiting.items.popleft()
        if not self._waiting.items:
            return []
        batch = self._waiting.forming = [self._waiting.items.popleft()]
        if not self._batching:
            return batch
        first = batch[0]
        rows, closed = take(self._waiting.items, batch, first.rows, self._max_rows, self._preferred, self._waiting.live)
        if first.idle or self._delay_s <= 0:  # a lone request must not wait for company
            return batch
        flush_at = first.enqueued_at + self._delay_s
        while not closed and not self._closing and self._limit > 0:
            remaining = flush_at - time.monotonic()
            if remaining <= 0:
                break
            await self._sleep(remaining)
            rows, closed = take(self._waiting.items, batch, rows, self._max_rows, self._preferred, self._waiting.live)
        return batch

    def _dispatch(self, batch: list[Pending]) -> None:
        self._waiting.forming = []
        now = time.monotonic()
        batch = [item for item in batch if self._waiting.live(item, now)]  # some may have gone while it filled
        if not batch:
            return
        batch_id = next(BATCH_IDS)
        for item in batch:
            item.queued = False
            item.dispatched_at, item.batch_id = now, batch_id
        self._waiting.depth -= len(batch)
        self._alone = len(batch) == 1
        rows = sum(item.rows for item in batch)
        self._inflight += 1
        self._batch_seq += 1
        self._running[self._batch_seq] = batch
        if self._observer is not None:
            self._observer.queue_depth(self._waiting.depth)
            self._observer.batch_started(rows, [now - item.enqueued_at for item in batch])
            self._observer.inflight(self._inflight)
        done = self._runner.start([item.inputs for item in batch], [item.rows for item in batch], rows)
        on_done = functools.partial(self._on_done, self._batch_seq, rows, now)
        if done.done():
            on_done(done)
        else:
            done.add_done_callback(on_done)

    def _on_done(self, seq: int, rows: int, started: float, done: asyncio.Future[Executed]) -> None:
        batch = self._running.pop(seq)
        self._inflight -= 1
        results, compute_s, error = self._runner.finish(done, rows, started)
        if error is None:
            for item, outputs in zip(batch, results, strict=True):
                if not item.future.done():  # done: the caller left, or its deadline passed while this ran
                    item.compute_s = compute_s
                    item.future.set_result(outputs)
        else:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        if self._observer is not None:
            self._observer.batch_finished(rows, compute_s, error is None)
            self._observer.inflight(self._inflight)
        if self._waiting.depth or self._closing:  # otherwise the worker has nothing new to do
            self._poke()
