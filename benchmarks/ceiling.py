"""The ceiling: in-process ONNX Runtime on one intra-op thread, no HTTP, no JSON, on the server's CPU."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bodies import pixels
from benchmarks.models import BenchModel
from benchmarks.servers import cpu_set


@dataclass(frozen=True)
class Ceiling:
    """Calls and rows per second of session.run at one batch size."""

    setup: str
    model: str
    rows: int
    calls: int
    seconds: float
    cpu_seconds: float  # the measuring thread's CPU time: what the calls cost however the CPU was shared
    other_cores: float = 0.0  # CPU other processes took from the same CPUs meanwhile

    @property
    def rows_per_s(self) -> float:
        """Rows (samples) per second."""
        return self.calls * self.rows / self.seconds

    @property
    def rows_per_cpu_s(self) -> float:
        """Rows per CPU-second of the thread that ran them."""
        return self.calls * self.rows / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    @property
    def us_per_call(self) -> float:
        """Mean microseconds per session.run."""
        return self.seconds / self.calls * 1e6


@contextlib.contextmanager
def pinned(cpus: str | None) -> Iterator[None]:
    """Run this process on cpus (e.g. "0") for the duration of the block; None leaves it unpinned."""
    before = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpu_set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def measure(setup: str, model: BenchModel, artifact: Path, rows: int, seconds: float, cpus: str | None) -> Ceiling:
    """Time back-to-back session.run calls at `rows` rows each for `seconds`, after a short warm-up."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with pinned(cpus):
        session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
        feeds = {model.input_name: pixels(model, rows)}
        for _ in range(20):
            session.run(None, feeds)
        calls, start, cpu_start = 0, time.perf_counter(), time.thread_time()
        while (elapsed := time.perf_counter() - start) < seconds:
            session.run(None, feeds)
            calls += 1
        cpu = time.thread_time() - cpu_start
    return Ceiling(setup, model.name, rows, calls, elapsed, cpu)
