"""service.runtimes.pool: batches spread over instances; opening and closing a placement's instances."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import ModelLoadError
from service.runtimes import RuntimeOptions, TensorSpec, load_runtime
from service.runtimes.placement import Placement
from service.runtimes.pool import InstancePool, instances_of, open_instances
from tests.service.conftest import onnx_doubler

WAIT_S = 10


class Held:
    """An instance whose predict blocks until the test lets it go, recording which instance ran."""

    format = "onnx"
    degraded = False
    signature_name = "serving_default"

    def __init__(self, device: str, ran: list[str]) -> None:
        self.inputs = [TensorSpec("x", "FP32", (-1, 4))]
        self.outputs = [TensorSpec("y", "FP32", (-1, 4))]
        self.device = device
        self.ran = ran
        self.started = threading.Semaphore(0)
        self.go = threading.Event()
        self.closed = False

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.ran.append(self.device)
        self.started.release()
        assert self.go.wait(WAIT_S)
        return {"y": inputs["x"] * 2}

    def close(self) -> None:
        self.closed = True


def x(rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.ones((rows, 4), np.float32)}


def test_a_batch_goes_to_a_free_instance_while_another_is_busy() -> None:
    ran: list[str] = []
    first, second = Held("cuda:0", ran), Held("cuda:1", ran)
    pool = InstancePool([first, second])
    assert pool.device == "cuda:0,cuda:1"
    with ThreadPoolExecutor(2) as threads:
        one = threads.submit(pool.predict, x())
        assert first.started.acquire(timeout=WAIT_S)
        two = threads.submit(pool.predict, x(2))
        assert second.started.acquire(timeout=WAIT_S)  # the busy first instance was passed over
        first.go.set()
        second.go.set()
        assert one.result(WAIT_S)["y"].tolist() == [[2.0] * 4]
        assert two.result(WAIT_S)["y"].tolist() == [[2.0] * 4] * 2
    assert ran == ["cuda:0", "cuda:1"]


def test_idle_instances_take_turns_and_a_fully_busy_pool_shares_the_least_busy_one() -> None:
    ran: list[str] = []
    a, b = Held("cuda:0", ran), Held("cuda:1", ran)
    a.go.set()
    b.go.set()
    pool = InstancePool([a, b])
    for _ in range(4):
        pool.predict(x())
    assert ran == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    a.go.clear()
    b.go.clear()
    ran.clear()
    with ThreadPoolExecutor(3) as threads:
        calls = [threads.submit(pool.predict, x()) for _ in range(3)]
        # Each instance takes one; the third batch shares the instance whose turn it is (both are equally busy).
        for instance in (a, b, a):
            assert instance.started.acquire(timeout=WAIT_S)
        a.go.set()
        b.go.set()
        assert all(call.result(WAIT_S)["y"].shape == (1, 4) for call in calls)
    assert sorted(ran) == ["cuda:0", "cuda:0", "cuda:1"]


def test_closing_the_pool_closes_every_instance_and_releases_the_budget_once() -> None:
    released: list[bool] = []
    instances = [Held("cuda:0", []), Held("cuda:0", [])]
    InstancePool(instances, lambda: released.append(True)).close()
    assert [i.closed for i in instances] == [True, True]
    assert released == [True]


def test_real_onnx_runtime_sessions_serve_behind_one_pool(tmp_path: Path) -> None:
    artifact = onnx_doubler(tmp_path / "model.onnx")
    sessions = [load_runtime("onnx", artifact, RuntimeOptions(device="cpu", intra_op_threads=1)) for _ in range(2)]
    pool = InstancePool(sessions)
    assert (pool.format, pool.inputs, pool.outputs) == ("onnx", sessions[0].inputs, sessions[0].outputs)
    with ThreadPoolExecutor(4) as threads:
        results = list(threads.map(lambda n: pool.predict({"x": np.full((n, 4), n, np.float32)}), range(1, 9)))
    assert [r["y"].tolist() for r in results] == [[[2.0 * n] * 4] * n for n in range(1, 9)]
    pool.close()


# ----- opening a placement --------------------------------------------------------------------------------


def gpu_placement(devices: list[int], instances: int, budget: int) -> Placement:
    one = RuntimeOptions(device="cuda", gpu_memory_bytes=budget)
    options = tuple(dataclasses.replace(one, gpu_device_id=d) for _ in range(instances) for d in devices)
    return Placement(options, dict.fromkeys(devices, budget) if budget else {})


def opener(device_of: Callable[[RuntimeOptions], str], fail_at: int | None = None) -> tuple[Any, list[Held]]:
    opened: list[Held] = []

    def open_one(options: RuntimeOptions) -> Held:
        if len(opened) == fail_at:
            raise ModelLoadError("out of memory creating the session")
        opened.append(Held(device_of(options), []))
        return opened[-1]

    return open_one, opened


def test_one_instance_without_a_budget_is_the_plain_runtime() -> None:
    open_one, opened = opener(lambda o: f"cuda:{o.gpu_device_id}")
    runtime = open_instances(open_one, gpu_placement([0], 1, 0))
    assert runtime is opened[0]
    assert instances_of(runtime) == (runtime,)


def test_every_instance_opens_on_its_device_and_the_pool_holds_the_budget_until_closed() -> None:
    released: list[bool] = []
    open_one, _ = opener(lambda o: f"cuda:{o.gpu_device_id}")
    runtime = open_instances(open_one, gpu_placement([0, 1], 2, 1024), lambda: released.append(True))
    assert isinstance(runtime, InstancePool)
    assert [i.device for i in instances_of(runtime)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert runtime.device == "cuda:0,cuda:1"
    assert released == []
    runtime.close()
    assert released == [True]


def test_a_runtime_that_lands_on_the_cpu_gets_one_session_and_holds_no_budget() -> None:
    released: list[bool] = []
    open_one, opened = opener(lambda o: "cpu")
    runtime = open_instances(open_one, gpu_placement([0, 1], 2, 1024), lambda: released.append(True))
    assert runtime is opened[0]
    assert len(opened) == 1
    assert released == [True]


def test_an_instance_that_fails_to_open_closes_the_others_and_releases_the_budget() -> None:
    released: list[bool] = []
    open_one, opened = opener(lambda o: f"cuda:{o.gpu_device_id}", fail_at=2)
    with pytest.raises(ModelLoadError, match="out of memory"):
        open_instances(open_one, gpu_placement([0, 1], 2, 1024), lambda: released.append(True))
    assert [i.closed for i in opened] == [True, True]
    assert released == [True]
