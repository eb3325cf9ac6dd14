"""Several runtime instances of one model version behind one `predict`, so that one batcher feeds them all."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from service.runtimes import Runtime, RuntimeOptions
from service.runtimes.placement import Placement


def _nothing() -> None:
    pass


class InstancePool:
    """A Runtime whose `predict` hands each batch to its least busy instance (ties rotate over the instances).

    The batcher keeps one queue per model version and runs up to `max_concurrent_batches` batches at once; the pool
    spreads those batches over the instances, each its own session (on a GPU: its own CUDA stream).
    """

    def __init__(self, instances: Sequence[Runtime], release: Callable[[], None] = _nothing) -> None:
        if not instances:
            raise ValueError("a pool needs at least one instance")
        first = instances[0]
        self.instances: tuple[Runtime, ...] = tuple(instances)
        self.format = first.format
        self.inputs = first.inputs
        self.outputs = first.outputs
        self.signature_name = first.signature_name
        self.device = ",".join(dict.fromkeys(r.device for r in instances))  # "cuda:0" or "cuda:0,cuda:1"
        self.degraded = any(r.degraded for r in instances)
        self._release = release
        self._lock = threading.Lock()
        self._busy = [0] * len(instances)
        self._next = 0

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch on the least busy instance; blocking, like every runtime's predict."""
        index = self._acquire()
        try:
            return self.instances[index].predict(inputs)
        finally:
            with self._lock:
                self._busy[index] -= 1

    def _acquire(self) -> int:
        count = len(self._busy)
        with self._lock:
            start = self._next
            index = min(range(count), key=lambda i: (self._busy[i], (i - start) % count))
            self._busy[index] += 1
            self._next = (index + 1) % count
        return index

    def close(self) -> None:
        """Close every instance, then give the model's GPU memory budget back."""
        try:
            for runtime in self.instances:
                runtime.close()
        finally:
            self._release()


def open_instances(
    open_one: Callable[[RuntimeOptions], Runtime], placement: Placement, release: Callable[[], None] = _nothing
) -> Runtime:
    """Open every instance of a placement: one plain runtime where only one runs, else an InstancePool.

    A runtime that lands on the CPU (no usable CUDA) ends the loop: the CPU gets one session, and no budget is held.
    A failing instance closes the ones already open and releases the budget before the error goes on.
    """
    opened: list[Runtime] = []
    try:
        for options in placement.instances:
            opened.append(open_one(options))
            if opened[0].device == "cpu":
                break
    except BaseException:
        for runtime in opened:
            runtime.close()
        release()
        raise
    if opened[0].device == "cpu" or (len(opened) == 1 and not placement.budgets):
        release()
        return opened[0]
    return InstancePool(opened, release)


def instances_of(runtime: Runtime) -> tuple[Runtime, ...]:
    """Each session behind a runtime (for warm-up): a pool's instances, or the runtime itself."""
    return runtime.instances if isinstance(runtime, InstancePool) else (runtime,)
