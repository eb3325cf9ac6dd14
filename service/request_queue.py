"""The waiting requests of one batcher: arrival order, queue-depth accounting, deadlines and failure."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable

from service.batching import BatchObserver, Pending
from service.errors import ClientGoneError, DeadlineExceededError, QueueTimeoutError, ServiceError


class RequestQueue:
    """Requests in arrival order; abandoned ones stay until popped or compacted, but leave the depth at once."""

    def __init__(self, who: str, observer: BatchObserver | None, retry_after_s: Callable[[], int]) -> None:
        self.items: deque[Pending] = deque()
        self.forming: list[Pending] = []  # the batch being filled, still counted as queued
        self.depth = 0
        self._who = who
        self._observer = observer
        self._retry_after_s = retry_after_s

    def push(self, item: Pending, max_queue: int) -> None:
        """Queue an admitted request."""
        if len(self.items) >= 2 * max_queue:  # amortised removal of abandoned items
            self.items = deque(queued for queued in self.items if queued.queued)
        self.items.append(item)
        self.depth += 1
        if self._observer is not None:
            self._observer.queue_depth(self.depth)

    def sweep(self, running: Iterable[Pending], now: float) -> float | None:
        """Fail every request past a deadline (queued or running) or its queue deadline (queued); the next due time.

        One timer per batcher calls this at the earliest due time, instead of timers per request.
        """
        due: float | None = None
        for item in itertools.chain(self.items, self.forming, running):
            if item.future.done():
                continue
            if item.deadline is not None and item.deadline <= now:
                self.fail(item, self.deadline_error())
            elif item.queued and item.queue_deadline is not None and item.queue_deadline <= now:
                self.fail(item, self.queue_timeout())
            else:
                for when in (item.deadline, item.queue_deadline if item.queued else None):
                    if when is not None and (due is None or when < due):
                        due = when
        return due

    def deadline_error(self) -> DeadlineExceededError:
        """The 504 for a request past its deadline."""
        return DeadlineExceededError(f"{self._who}: request deadline exceeded")

    def queue_timeout(self) -> QueueTimeoutError:
        """The 503 for a request that waited past its queue timeout."""
        message = f"{self._who}: request waited past its queue timeout"
        return QueueTimeoutError(message, retry_after_s=self._retry_after_s())

    def leave(self, item: Pending) -> None:
        """Stop counting a request as queued (dispatched, failed or abandoned)."""
        if item.queued:
            item.queued = False
            self.depth -= 1
            if self._observer is not None:
                self._observer.queue_depth(self.depth)

    def fail(self, item: Pending, error: ServiceError) -> None:
        """Fail a request that has not been answered yet."""
        self.leave(item)
        if not item.future.done():
            item.future.set_exception(error)

    def fail_waiting(self, make_error: Callable[[], ServiceError]) -> None:
        """Fail every queued request, including those of a batch still forming."""
        for item in [*self.items, *self.forming]:
            if item.queued:
                self.fail(item, make_error())
        self.items.clear()

    def live(self, item: Pending, now: float) -> bool:
        """False for a request that may no longer run: abandoned, failed, past a deadline, or its client gone."""
        if item.future.done():
            self.leave(item)
        elif item.deadline is not None and item.deadline <= now:
            self.fail(item, self.deadline_error())
        elif item.queue_deadline is not None and item.queue_deadline <= now:
            self.fail(item, self.queue_timeout())
        elif item.gone is not None and item.gone():
            self.fail(item, ClientGoneError(f"{self._who}: the client closed the connection"))
        else:
            return True
        return False


class DeadlineTimer:
    """One timer per batcher, at the earliest deadline of any request, instead of timers per request.

    `sweep(now)` fails what is due and returns the next due time (or None), at which the timer is set again.
    """

    def __init__(self, sweep: Callable[[float], float | None]) -> None:
        self._sweep = sweep
        self._timer: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def watch(self, due: float | None) -> None:
        """Make the timer fire no later than `due` (a time.monotonic() value)."""
        if due is None or (self._at is not None and self._at <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._at = due
        self._timer = asyncio.get_running_loop().call_later(max(0.0, due - time.monotonic()), self._fire)

    def cancel(self) -> None:
        """Stop the timer (the batcher stopped and nothing runs)."""
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        self._timer = self._at = None
        self.watch(self._sweep(time.monotonic()))
