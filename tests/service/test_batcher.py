"""DynamicBatcher through its public API, with a scripted runtime that records batches and can hold one running."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import pytest

from service.batcher import DynamicBatcher
from service.errors import (
    DeadlineExceededError,
    InternalError,
    ModelNotReadyError,
    OutOfMemoryError,
    QueueFullError,
    QueueTimeoutError,
    ShuttingDownError,
)
from tests.fakes import ScriptedRuntime, double

Arrays = dict[str, npt.NDArray[Any]]
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """A BatchObserver that keeps every report."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.started: list[tuple[int, list[float]]] = []
        self.finished: list[tuple[int, bool]] = []
        self.inflights: list[int] = []

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def batch_started(self, rows: int, queue_waits_s: Sequence[float]) -> None:
        self.started.append((rows, list(queue_waits_s)))

    def batch_finished(self, rows: int, compute_s: float, ok: bool) -> None:
        self.finished.append((rows, ok))

    def inflight(self, batches: int) -> None:
        self.inflights.append(batches)


def req(value: float, rows: int = 1, width: int = 1, dtype: str = "float64") -> Arrays:
    return {"x": np.full((rows, width), value, dtype=dtype)}


async def settle() -> None:
    """Let every ready task run until it blocks: submits enqueue, the worker reacts."""
    for _ in range(10):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def serving(rt: ScriptedRuntime, **options: Any) -> AsyncIterator[DynamicBatcher]:
    """A started batcher on its own executor; afterwards, asserts the loop reported no leaked future or task."""
    settings: dict[str, Any] = {"max_batch_size": 8, "max_batch_delay_ms": 0.0, "max_queue_size": 16, **options}
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []  # "Future exception was never retrieved", "Task was destroyed" ...
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reports.append(context))
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            batcher = DynamicBatcher(rt, executor=pool, **settings)
            await batcher.start()
            try:
                yield batcher
            finally:
                rt.release()
                await batcher.stop(drain=False, timeout_s=2)
        await settle()  # completions of runtime calls that outlived a stop timeout land now
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert reports == []


async def submitted(batcher: DynamicBatcher, inputs: Arrays, **deadlines: float) -> Arrays:
    """Submit a request as the registry does after validation: with its row count."""
    rows = next(iter(inputs.values())).shape[0] if inputs else 1
    return await batcher.submit(inputs, rows=rows, **deadlines)


def submit(batcher: DynamicBatcher, inputs: Arrays, **deadlines: float) -> asyncio.Task[Arrays]:
    return asyncio.create_task(submitted(batcher, inputs, **deadlines))


async def occupy(batcher: DynamicBatcher, rt: ScriptedRuntime) -> asyncio.Task[Arrays]:
    """Hold one request running, so later arrivals find the batcher busy."""
    rt.hold()
    blocker = submit(batcher, req(-1))
    await rt.wait_calls(1)
    return blocker


async def results(*tasks: asyncio.Task[Arrays]) -> list[Arrays | BaseException]:
    with anyio.fail_after(3):
        return await asyncio.gather(*tasks, return_exceptions=True)


async def test_concurrent_submits_form_one_batch_and_are_observed() -> None:
    rt, seen = ScriptedRuntime(), Recorder()
    async with serving(rt, max_batch_size=32, observer=seen) as batcher:
        outs = await results(*(submit(batcher, req(i)) for i in range(10)))
    assert rt.values() == [[float(i) for i in range(10)]]
    assert [out["y"].tolist() for out in outs if isinstance(out, dict)] == [[[2.0 * i]] for i in range(10)]
    assert [rows for rows, _ in seen.started] == [10]
    assert len(seen.started[0][1]) == 10
    assert all(wait >= 0 for wait in seen.started[0][1])
    assert seen.finished == [(10, True)]
    assert seen.inflights == [1, 0]
    assert seen.depths[-1] == 0
    assert max(seen.depths) == 10


async def test_full_batch_runs_without_waiting_for_the_delay() -> None:
    rt = ScriptedRuntime()
    async with serving(rt, max_batch_size=4, max_batch_delay_ms=5000, max_concurrent_batches=2) as batcher:
        blocker = await occupy(batcher, rt)
        tasks = [submit(batcher, req(i)) for i in range(4)]
        await rt.wait_calls(2)  # long before the 5 s delay
        assert rt.rows == [1, 4]
        rt.release()
        await results(blocker, *tasks)


async def test_batches_count_rows_not_requests() -> None:
    rt = ScriptedRuntime()
    async with serving(rt, max_batch_size=4) as batcher:
        blocker = await occupy(batcher, rt)
        tasks = [submit(batcher, req(i, rows=n)) for i, n in enumerate([2, 1, 2, 1, 3, 4])]
        await settle()
        rt.release()
        outs = await results(blocker, *tasks)
    assert rt.rows == [1, 3, 3, 3, 4]
    assert [len(out["y"]) for out in outs if isinstance(out, dict)] == [1, 2, 1, 2, 1, 3, 4]


async def test_under_load_the_delay_gathers_late_arrivals() -> None:
    rt = ScriptedRuntime()
    async with serving(rt, max_batch_delay_ms=300, max_concurrent_batches=2) as batcher:
        blocker = await occupy(batcher, rt)
        begun = time.monotonic()
        first = submit(batcher, req(1))
        await asyncio.sleep(0.1)
        assert rt.rows == [1]  # a slot is free, but the batch waits for company
        second = submit(batcher, req(2))
        await rt.wait_calls(2)
        waited = time.monotonic() - begun
        assert rt.values()[1] == [1.0, 2.0]
        assert 0.25 <= waited < 1.5
        rt.release()
        await results(blocker, first, second)


async def test_zero_delay_takes_only_what_is_queued() -> None:
    rt = ScriptedRuntime()
    async with serving(rt, max_concurrent_batches=2) as batcher:
        blocker = await occupy(batcher, rt)
        task = submit(batcher, req(1))
        await rt.wait_calls(2)
        assert rt.rows == [1, 1]
        rt.release()
        await results(blocker, task)


async def test_preferred_batch_size_runs_at_once() -> None:
    rt = ScriptedRuntime()
    options = {"max_batch_delay_ms": 5000, "max_concurrent_batches": 3, "preferred_batch_sizes": (2,)}
    async with serving(rt, **options) as batcher:
        blocker = await occupy(batcher, rt)
        first = submit(batcher, req(1))
        await settle()
        assert rt.rows == [1]
        second = submit(batcher, req(2))
        await rt.wait_calls(2)
        third = submit(batcher, req(3, rows=2))  # one request of a preferred size
        await rt.wait_calls(3)
        assert rt.rows == [1, 2, 2]
        rt.release()
        await results(blocker, first, second, third)


async def test_lone_request_is_not_delayed() -> None:
    rt = ScriptedRuntime()
    async with serving(rt, max_batch_delay_ms=500) as batcher:
        for i in range(5):
            begun = time.monotonic()
            out = await submitted(batcher, req(i))
            assert time.monotonic() - begun < 0.1
            assert out["y"].tolist() == [[2.0 * i]]
    assert rt.rows == [1] * 5


async def test_batching_off_runs_each_request_alone_with_any_rows() -> None:
    rt = ScriptedRuntime()
    async with serving(rt, max_batch_size=1) as batcher:
        outs = await results(*(submit(batcher, req(i, rows=5)) for i in range(3)))
    assert rt.rows == [5, 5, 5]
    assert all(isinstance(out, dict) and out["y"].shape == (5, 1) for out in outs)


async def test_full_queue_refuses_at_once_with_retry_after() -> None:
    rt = ScriptedRuntime()
    async with serving(rt, max_queue_size=2) as batcher:
        blocker = await occupy(batcher, rt)
        queued = [submit(batcher, req(i)) for i in range(2)]
        await settle()
        assert batcher.queue_depth == 2
        with pytest.raises(QueueFullError) as caught:
            await submitted(batcher, req(9))
        assert caught.value.status_code == 503
        assert caught.value.headers["Retry-After"] == str(batcher.retry_after_s())
        rt.release()
        await results(blocker, *queued)
    assert [9.0] not in rt.values()


async def test_retry_after_grows_with_queue_and_batch_time() -> None:
    rt = ScriptedRuntime()
    async with serving(rt, max_batch_size=1, max_queue_size=32) as batcher:
        assert batcher.retry_after_s() == 1
        blocker = await occupy(batcher, rt)
        await asyncio.sleep(0.3)  # the one measured batch takes about 0.3 s
        rt.release()
        await results(blocker)
        blocker = await occupy(batcher, rt)
        queued = [submit(batcher, req(i)) for i in range(20)]
        await settle()
        assert batcher.retry_after_s() >= 5  # 20 requests x ~0.3 s, one at a time
        rt.release()
        await results(blocker, *queued)


async def test_deadline_passed_in_queue_is_never_executed() -> None:
    rt = ScriptedRuntime()
    async with serving(rt) as batcher:
        blocker = await occupy(batcher, rt)
        late = submit(batcher, req(7), deadline=time.monotonic() + 0.05)
        (error,) = await results(late)
        assert isinstance(error, DeadlineExceededError)
        assert error.status_code == 504
        assert batcher.queue_depth == 0
        rt.release()
        await results(blocker)
        with pytest.raises(DeadlineExceededError):
            await submitted(batcher, req(8), deadline=time.monotonic() - 1)
        await submitted(batcher, req(9))
    assert rt.values() == [[-1.0], [9.0]]


async def test_deadline_during_a_running_batch_discards_its_result() -> None:
    rt = ScriptedRuntime()
    async with serving(rt) as batcher:
        rt.hold()
        with pytest.raises(DeadlineExceededError):
            await submitted(batcher, req(1), deadline=time.monotonic() + 0.05)
        assert batcher.inflight_batches == 1  # the runtime call cannot be interrupted
        rt.release()
        out = await submitted(batcher, req(2))
    assert out["y"].tolist() == [[4.0]]


async def test_queue_timeout_refuses_a_request_still_waiting() -> None:
    rt = ScriptedRuntime()
    async with serving(rt) as batcher:
        blocker = await occupy(batcher, rt)
        late = submit(batcher, req(7), queue_deadline=time.monotonic() + 0.05)
        (error,) = await results(late)
        assert isinstance(error, QueueTimeoutError)
        assert error.status_code == 503
        assert "Retry-After" in error.headers
        rt.release()
        await results(blocker)
    assert rt.values() == [[-1.0]]


async def test_queue_timeout_does_not_cut_a_batch_that_started() -> None:
    rt = ScriptedRuntime()
    async with serving(rt) as batcher:
        rt.hold()
        task = submit(batcher, req(3), queue_deadline=time.monotonic() + 0.05)
        await rt.wait_calls(1)
        await asyncio.sleep(0.1)
        rt.release()
        (out,) = await results(task)
    assert isinstance(out, dict)
    assert out["y"].tolist() == [[6.0]]


async def test_cancelled_submit_is_dropped_before_it_runs() -> None:
    rt = ScriptedRuntime()
    async with serving(rt) as batcher:
        blocker = await occupy(batcher, rt)
        gone = submit(batcher, req(7))
        await settle()
        assert batcher.queue_depth == 1
        gone.cancel()
        (error,) = await results(gone)
        assert isinstance(error, asyncio.CancelledError)
        assert batcher.queue_depth == 0
        rt.release()
        await results(blocker)
        await submitted(batcher, req(8))
    assert rt.values() == [[-1.0], [8.0]]


async def test_cancelled_submit_inside_a_running_batch_is_discarded() -> None:
    rt = ScriptedRuntime()
    async with serving(rt) as batcher:
        gone = await occupy(batcher, rt)
        gone.cancel()
        await results(gone)
        rt.release()
        out = await submitted(batcher, req(5))
    assert out["y"].tolist() == [[10.0]]
    assert rt.values() == [[-1.0], [5.0]]


def fail_on_13(inputs: Arrays) -> Arrays:
    if (inputs["x"] == 13).any():
        raise ValueError("bad value")
    return double(inputs)


async def test_runtime_error_reaches_every_request_and_the_worker_survives() -> None:
    rt, seen = ScriptedRuntime(fail_on_13), Recorder()
    async with serving(rt, observer=seen) as batcher:
        errors = await results(*(submit(batcher, req(v)) for v in (1, 13, 2)))
        assert rt.values() == [[1.0, 13.0, 2.0]]
        assert all(type(error) is InternalError and error.status_code == 500 for error in errors)
        out = await submitted(batcher, req(4))
    assert out["y"].tolist() == [[8.0]]
    assert seen.finished == [(3, False), (1, True)]


def out_of_memory(inputs: Arrays) -> Arrays:
    raise OutOfMemoryError("device out of memory", retry_after_s=2)


async def test_service_error_from_the_runtime_passes_as_is() -> None:
    rt = ScriptedRuntime(out_of_memory)
    async with serving(rt) as batcher:
        errors = await results(*(submit(batcher, req(v)) for v in (1, 2)))
    assert all(isinstance(error, OutOfMemoryError) and error.headers["Retry-After"] == "2" for error in errors)


async def test_output_rows_differing_from_the_batch_is_an_internal_error() -> None:
    rt = ScriptedRuntime(lambda inputs: {"y": np.zeros((1, 1))})
    async with serving(rt) as batcher:
        errors = await results(*(submit(batcher, req(v)) for v in (1, 2)))
    assert rt.rows == [2]
    assert all(isinstance(error, InternalError) for error in errors)


async def test_different_shapes_and_dtypes_never_share_a_batch() -> None:
    rt = ScriptedRuntime()
    async with serving(rt) as batcher:
        blocker = await occupy(batcher, rt)
        requests = [req(1, width=3), req(2, width=4), req(3, width=3), req(4, width=3, dtype="float32")]
        tasks = [submit(batcher, inputs) for inputs in requests]
        await settle()
        rt.release()
        outs = await results(blocker, *tasks)
    assert rt.values() == [[-1.0], [1.0, 3.0], [2.0], [4.0]]
    for inputs, out in zip(requests, outs[1:], strict=True):
        assert isinstance(out, dict)
        np.testing.assert_array_equal(out["y"], inputs["x"] * 2)
        assert out["y"].dtype == inputs["x"].dtype


async def test_batched_outputs_equal_unbatched_and_are_views() -> None:
    rng = np.random.default_rng(7)
    weights, bias = rng.normal(size=(3, 2)), rng.normal(size=2)
    rt = ScriptedRuntime(lambda inputs: {"y": inputs["x"] @ weights + bias})
    requests = [{"x": rng.normal(size=(n, 3))} for n in (1, 3, 2, 1, 4)]
    async with serving(rt, max_batch_size=16) as batcher:
        outs = await results(*(submit(batcher, inputs) for inputs in requests))
    assert rt.rows == [11]
    for inputs, out in zip(requests, outs, strict=True):
        assert isinstance(out, dict)
        np.testing.assert_allclose(out["y"], inputs["x"] @ weights + bias, rtol=1e-12)
    assert isinstance(outs[0], dict)
    assert isinstance(outs[1], dict)
    base = outs[0]["y"].base
    assert base is not None
    assert outs[1]["y"].base is base


async def test_a_lone_request_passes_its_arrays_through() -> None:
    rt = ScriptedRuntime()
    inputs = req(1)
    async with serving(rt) as batcher:
        await submitted(batcher, inputs)
    assert rt.calls[0]["x"] is inputs["x"]


async def test_stop_drains_the_queue_and_refuses_new_work() -> None:
    rt = ScriptedRuntime()
    async with serving(rt) as batcher:
        blocker = await occupy(batcher, rt)
        queued = [submit(batcher, req(i)) for i in range(3)]
        await settle()
        stopping = asyncio.create_task(batcher.stop(drain=True))
        await settle()
        with pytest.raises(ShuttingDownError):
            await submitted(batcher, req(9))
        rt.release()
        with anyio.fail_after(2):
            await stopping
        outs = await results(blocker, *queued)
    assert all(isinstance(out, dict) for out in outs)
    assert rt.rows == [1, 3]


async def test_stop_without_drain_fails_the_queue() -> None:
    rt = ScriptedRuntime()
    async with serving(rt) as batcher:
        blocker = await occupy(batcher, rt)
        queued = [submit(batcher, req(i)) for i in range(2)]
        await settle()
        stopping = asyncio.create_task(batcher.stop(drain=False))
        errors = await results(*queued)
        assert all(isinstance(error, ShuttingDownError) for error in errors)
        rt.release()
        with anyio.fail_after(2):
            await stopping
        (out,) = await results(blocker)
    assert isinstance(out, dict)
    assert rt.rows == [1]


async def test_stop_timeout_fails_a_batch_still_running() -> None:
    rt = ScriptedRuntime()
    async with serving(rt) as batcher:
        blocker = await occupy(batcher, rt)
        await batcher.stop(timeout_s=0.05)
        (error,) = await results(blocker)
    assert isinstance(error, ShuttingDownError)


async def test_concurrency_limit_is_respected_and_can_be_raised() -> None:
    rt, seen = ScriptedRuntime(), Recorder()
    async with serving(rt, max_batch_size=1, max_concurrent_batches=2, observer=seen) as batcher:
        rt.hold()
        tasks = [submit(batcher, req(i)) for i in range(5)]
        await rt.wait_calls(2)
        await asyncio.sleep(0.05)
        assert len(rt.calls) == 2
        assert batcher.inflight_batches == 2
        batcher.set_max_concurrent_batches(3)
        await rt.wait_calls(3)
        await asyncio.sleep(0.05)
        assert len(rt.calls) == 3
        assert batcher.inflight_batches == 3
        rt.release()
        await results(*tasks)
    assert max(seen.inflights) == 3
    assert seen.inflights[-1] == 0


async def test_pause_refuses_and_fails_queued_until_resumed() -> None:
    rt = ScriptedRuntime()
    async with serving(rt) as batcher:
        blocker = await occupy(batcher, rt)
        queued = submit(batcher, req(1))
        await settle()
        batcher.set_max_concurrent_batches(0)
        (error,) = await results(queued)
        assert isinstance(error, ModelNotReadyError)
        assert "paused" in error.message
        with pytest.raises(ModelNotReadyError, match="paused"):
            await submitted(batcher, req(2))
        rt.release()
        (out,) = await results(blocker)  # a batch already running finishes
        assert isinstance(out, dict)
        batcher.set_max_concurrent_batches(1)
        await submitted(batcher, req(3))
    assert rt.values() == [[-1.0], [3.0]]


async def test_submit_before_start_is_refused() -> None:
    batcher = DynamicBatcher(double, max_batch_size=4, max_batch_delay_ms=0, max_queue_size=4)
    with pytest.raises(ModelNotReadyError):
        await submitted(batcher, req(1))
    await batcher.stop()


@pytest.mark.parametrize(
    "options",
    [{"max_queue_size": 0}, {"max_batch_delay_ms": -1}, {"preferred_batch_sizes": (9,)}],
    ids=["queue", "delay", "preferred"],
)
def test_invalid_limits_are_refused(options: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"max_batch_size": 8, "max_batch_delay_ms": 0, "max_queue_size": 4, **options}
    with pytest.raises(ValueError, match=r"max_queue_size|preferred"):
        DynamicBatcher(double, **settings)


def thread_recording(delays_s: Sequence[float]) -> tuple[list[int], Callable[[Arrays], Arrays]]:
    """A runtime that records which thread ran each call and sleeps delays_s[i] on call i."""
    threads: list[int] = []

    def run(inputs: Arrays) -> Arrays:
        delay = delays_s[len(threads)] if len(threads) < len(delays_s) else 0.0
        threads.append(threading.get_ident())
        time.sleep(delay)
        return double(inputs)

    return threads, run


@pytest.mark.anyio
async def test_fast_batches_run_on_the_event_loop_after_the_first() -> None:
    threads, run = thread_recording([0.0] * 4)
    async with serving(ScriptedRuntime(run), inline_below_s=0.05) as batcher:
        for value in range(4):
            assert (await submitted(batcher, req(value)))["y"][0, 0] == 2 * value
    loop_thread = threading.get_ident()
    assert threads[0] != loop_thread  # nothing measured yet: the first batch goes to the executor
    assert threads[1:] == [loop_thread] * 3


@pytest.mark.anyio
async def test_slow_batches_always_run_in_the_executor() -> None:
    threads, run = thread_recording([0.02] * 4)
    async with serving(ScriptedRuntime(run), inline_below_s=0.005) as batcher:
        for value in range(4):
            await submitted(batcher, req(value))
    assert threading.get_ident() not in threads


@pytest.mark.anyio
async def test_a_model_that_slows_down_moves_back_to_the_executor() -> None:
    threads, run = thread_recording([0.0, 0.0, 0.5, 0.0, 0.0])
    async with serving(ScriptedRuntime(run), inline_below_s=0.05) as batcher:
        for value in range(5):
            await submitted(batcher, req(value))
    loop_thread = threading.get_ident()
    assert [t == loop_thread for t in threads] == [False, True, True, False, False]


def completes_without_yielding(coro: Any) -> Any:
    """Drive a coroutine one step: its result if it finished without waiting on the event loop, else fail."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the request waited on the event loop")


@pytest.mark.anyio
async def test_a_lone_request_after_a_lone_request_runs_inside_submit() -> None:
    threads, run = thread_recording([0.0] * 4)
    async with serving(ScriptedRuntime(run), inline_below_s=0.05) as batcher:
        for value in range(2):  # the first call is measured in the executor; then calls run inline
            await submitted(batcher, req(value))
        await settle()
        out = completes_without_yielding(submitted(batcher, req(7)))
    assert out["y"][0, 0] == 14
    assert len(threads) == 3


@pytest.mark.anyio
async def test_a_burst_after_lone_requests_still_forms_a_batch() -> None:
    rt, seen = ScriptedRuntime(), Recorder()
    async with serving(rt, max_batch_size=32, observer=seen, inline_below_s=0.05) as batcher:
        for value in range(3):
            await submitted(batcher, req(value))
        await settle()
        outs = await results(*(submit(batcher, req(i)) for i in range(10, 20)))
    assert [out["y"][0, 0] for out in outs if isinstance(out, dict)] == [2.0 * i for i in range(10, 20)]
    # the first of the burst may go alone, straight from submit; the others share one batch
    assert [rows for rows, _ in seen.started][3:] in ([10], [1, 9])
