"""Per-version inference statistics, kept in Triton's field names for the V2 statistics extension."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.batching import BatchObserver

_NS_PER_S = 1_000_000_000


@dataclass(slots=True)
class Duration:
    """A cumulative timer: how many times it ran and the nanoseconds in all."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        """Add `count` occurrences taking `ns` nanoseconds together."""
        self.count += count
        self.ns += ns

    def as_json(self) -> dict[str, int]:
        """Triton's {"count", "ns"} object."""
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """Cumulative counters of one model version, fed on the event loop by its batcher and its requests.

    The batcher times one span per batch (concatenate, runtime call, split), reported as `compute_infer`;
    `compute_input` and `compute_output` carry the same counts with no time of their own.
    """

    __slots__ = (
        "_by_size",
        "compute_infer",
        "execution_count",
        "fail",
        "inference_count",
        "last_inference_ms",
        "queue",
        "success",
    )

    def __init__(self) -> None:
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_infer = Duration()
        self._by_size: dict[int, Duration] = {}

    def request_finished(self, ok: bool, started_ns: int) -> None:
        """One request left the model, answered (ok) or failed; `started_ns` is its perf_counter_ns at arrival."""
        elapsed = time.perf_counter_ns() - started_ns
        if ok:
            self.success.add(elapsed)
            self.last_inference_ms = time.time_ns() // 1_000_000
        else:
            self.fail.add(elapsed)

    def queue_depth(self, depth: int) -> None:
        """Not kept: the Prometheus gauge has it."""

    def batch_started(self, rows: int, queue_waits_s: Sequence[float]) -> None:
        """Each request in the batch waited this long in the queue."""
        self.queue.add(int(sum(queue_waits_s) * _NS_PER_S), len(queue_waits_s))

    def batch_finished(self, rows: int, compute_s: float, ok: bool) -> None:
        """A runtime call returned; only successful ones count as executions, as in Triton."""
        if not ok:
            return
        ns = int(compute_s * _NS_PER_S)
        self.inference_count += rows
        self.execution_count += 1
        self.compute_infer.add(ns)
        self._by_size.setdefault(rows, Duration()).add(ns)

    def inflight(self, batches: int) -> None:
        """Not kept: the Prometheus gauge has it."""

    def as_json(self, name: str, version: int) -> dict[str, Any]:
        """One entry of {"model_stats": [...]}."""
        executions = self.execution_count
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": executions,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                "compute_input": {"count": executions, "ns": 0},
                "compute_infer": self.compute_infer.as_json(),
                "compute_output": {"count": executions, "ns": 0},
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [_batch_entry(size, timer) for size, timer in sorted(self._by_size.items())],
            "response_stats": {},
            "memory_usage": [],
        }


def _batch_entry(size: int, timer: Duration) -> dict[str, Any]:
    return {
        "batch_size": size,
        "compute_input": {"count": timer.count, "ns": 0},
        "compute_infer": timer.as_json(),
        "compute_output": {"count": timer.count, "ns": 0},
    }


class Observers:
    """Hands every batcher event to several observers (Prometheus metrics and these statistics)."""

    __slots__ = ("_observers",)

    def __init__(self, *observers: BatchObserver) -> None:
        self._observers = observers

    def queue_depth(self, depth: int) -> None:
        """Forward."""
        for observer in self._observers:
            observer.queue_depth(depth)

    def batch_started(self, rows: int, queue_waits_s: Sequence[float]) -> None:
        """Forward."""
        for observer in self._observers:
            observer.batch_started(rows, queue_waits_s)

    def batch_finished(self, rows: int, compute_s: float, ok: bool) -> None:
        """Forward."""
        for observer in self._observers:
            observer.batch_finished(rows, compute_s, ok)

    def inflight(self, batches: int) -> None:
        """Forward."""
        for observer in self._observers:
            observer.inflight(batches)
