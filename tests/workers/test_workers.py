"""`tandem serve --workers N`: HTTP workers feeding one engine process, tested as real processes on loopback."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import http.client
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server import ServerProcess, start_server, stop_server
from tests.service.conftest import onnx_doubler, onnx_slow_doubler

pytestmark = pytest.mark.slow
WORKERS = 4  # more than this machine has cores: one engine, one session per model, whatever N
LONG_GRACE_S = 300
ROWS = 8  # the slow model's batch: a blocker runs, ROWS requests queue behind it and run as one batch


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    """Poll an observable condition, bounded; fail naming it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def samples(server: ServerProcess, name: str) -> list[Any]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def total(server: ServerProcess, name: str, **labels: str) -> float:
    return sum(s.value for s in samples(server, name) if all(s.labels.get(k) == v for k, v in labels.items()))


def children(server: ServerProcess) -> list[int]:
    """The supervisor's engine and worker processes (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == server.process.pid and b"spawn_main" in command:
                found.append(int(entry.name))
    return sorted(found)


def runtime_loaded(pid: int) -> bool:
    """Whether the process has ONNX Runtime or TensorFlow mapped."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "onnxruntime" in maps or "tensorflow" in maps


def engine_pid(server: ServerProcess) -> int:
    [engine] = [pid for pid in children(server) if runtime_loaded(pid)]
    return engine


def ready(server: ServerProcess) -> bool:
    try:
        return httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def infer(client: httpx.Client, model: str, value: float) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}]}
    return client.post(f"/v2/models/{model}/infer", json=body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("workers")
    repo = root / "repo"
    onnx_doubler(repo / "double" / "1" / "model.onnx")
    (repo / "double" / "model.json").write_text(json.dumps({"max_batch_size": 64, "max_batch_delay_ms": 2}))
    onnx_slow_doubler(repo / "slow" / "1" / "model.onnx", work=2560)  # about a second a call
    config = {"max_batch_size": ROWS, "max_batch_delay_ms": 5000, "max_concurrent_batches": 1}
    (repo / "slow" / "model.json").write_text(json.dumps(config))
    flags = ["--workers", str(WORKERS), "--device", "cpu", "--intra-op-threads", "1", "--poll-interval-s", "0.5"]
    flags += ["--shutdown-grace-s", str(LONG_GRACE_S)]  # the SIGTERM test ends the grace with a second signal
    running = start_server(repo, root / "server.log", *flags, timeout_s=120, wait_path="/v2/health/ready")
    yield running
    stop_server(running)


def test_one_engine_holds_the_models_and_workers_never_import_a_runtime(server: ServerProcess) -> None:
    pids = children(server)
    assert len(pids) == WORKERS + 1, pids
    engine = engine_pid(server)
    assert all(not runtime_loaded(pid) for pid in pids if pid != engine)
    # One load, one session per model, whatever the number of workers.
    assert total(server, "tandem_model_loads_total", model="double", outcome="ok") == 1
    assert total(server, "tandem_model_ready", model="double") == 1


def successes(server: ServerProcess, model: str) -> int:
    """The model's V2 statistics: requests answered, over every version."""
    stats = httpx.get(f"{server.url}/v2/models/{model}/stats", timeout=30).json()["model_stats"]
    return sum(int(entry["inference_stats"]["success"]["count"]) for entry in stats)


def test_metrics_count_every_request_across_workers(server: ServerProcess) -> None:
    # Concurrent requests reach the engine gathered per worker loop pass (service.ipc.gather): each still
    # gets its own rows back, and each counts once in the metrics and in the model's statistics.
    before = total(server, "tandem_requests_total", model="double", code="200")
    answered_before = successes(server, "double")

    def one(value: int) -> tuple[int, str]:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = infer(client, "double", value)
            assert response.json()["outputs"][0]["data"] == [2.0 * value] * 4
            return response.status_code, response.headers["x-request-id"].split("-")[0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(200)))
    assert [code for code, _ in answers] == [200] * 200
    assert len({worker for _, worker in answers}) >= 2  # several workers answered (ids carry the pid)
    assert total(server, "tandem_requests_total", model="double", code="200") - before == 200
    assert successes(server, "double") - answered_before == 200


def ready_status(server: ServerProcess) -> int:
    """/v2/health/ready on a fresh connection."""
    return httpx.get(f"{server.url}/v2/health/ready", timeout=30).status_code


def queued_or_done(server: ServerProcess, requests: list[concurrent.futures.Future[int]]) -> bool:
    """ROWS requests wait in the queue, or every request was already answered."""
    return total(server, "tandem_queue_requests", model="slow") == ROWS or all(f.done() for f in requests)


def gathered(server: ServerProcess, batches_before: float) -> bool:
    """All ROWS requests wait in the queue, or the blocker's batch and theirs have both run."""
    if total(server, "tandem_queue_requests", model="slow") == ROWS:
        return True
    return total(server, "tandem_batches_total", model="slow") - batches_before >= 2


def test_requests_to_different_workers_share_a_batch(server: ServerProcess) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]}

    def one(_: int) -> str:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            response = client.post("/v2/models/slow/infer", json=body)
            assert response.status_code == 200
            return response.headers["x-request-id"].split("-")[0]

    for _attempt in range(5):  # the kernel picks the worker that accepts each connection: retry until two did
        batches = total(server, "tandem_batches_total", model="slow")
        with concurrent.futures.ThreadPoolExecutor(ROWS + 1) as pool:
            blocker = pool.submit(one, -1)
            wait_for(lambda: total(server, "tandem_inflight_batches", model="slow") == 1, "the blocker to run")
            queued = [pool.submit(one, i) for i in range(ROWS)]
            # Queued together behind the blocker; on a slow machine the blocker may finish first, and then the
            # 5 s batch delay still gathers them into one batch (already run by the time this looks, maybe).
            wait_for(functools.partial(gathered, server, batches), "the queue to fill")
            blocker.result(timeout=120)
            workers = {future.result(timeout=120) for future in queued}
        assert total(server, "tandem_batches_total", model="slow") - batches == 2  # the blocker, then all ROWS
        if len(workers) >= 2:
            return
    pytest.fail("every queued request went to one worker five times")


def test_connections_opened_together_spread_over_the_workers(server: ServerProcess) -> None:
    # A client pool opens its connections at once and keeps them: each worker must take its share, or one
    # worker's core saturates while another idles (service.balance).
    share = 4
    pool = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=60) for _ in range(WORKERS * share)]
    for connection in pool:
        connection.connect()
    served: collections.Counter[str] = collections.Counter()
    for connection in pool:
        connection.request("GET", "/v2/health/live")
        response = connection.getresponse()
        response.read()
        served[response.headers["x-request-id"].split("-")[0]] += 1  # ids carry the worker's pid
        connection.close()
    assert len(served) == WORKERS, served
    assert max(served.values()) <= 2 * share, served


def test_a_worker_that_dies_is_replaced(server: ServerProcess) -> None:
    engine = engine_pid(server)
    victim = next(pid for pid in children(server) if pid != engine)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in children(server) and len(children(server)) == WORKERS + 1, "a new worker")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert all(infer(client, "double", i).status_code == 200 for i in range(20))


def test_an_engine_that_dies_makes_the_server_not_ready_until_it_is_back(server: ServerProcess) -> None:
    engine = engine_pid(server)
    os.kill(engine, signal.SIGKILL)
    wait_for(lambda: not ready(server), "ready to turn 503")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = infer(client, "double", 1)  # during the restart: an answer, never a lost connection
        assert answer.status_code in (200, 503)
        wait_for(lambda: ready(server), "ready again", timeout_s=120)
        assert infer(client, "double", 3).json()["outputs"][0]["data"] == [6.0] * 4
    assert engine_pid(server) != engine


def test_a_version_swap_under_load_through_several_workers_loses_nothing(server: ServerProcess) -> None:
    shutil.copytree(server.repo / "double" / "1", server.repo / "double" / "2")
    codes: list[int] = []
    versions: set[str] = set()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        deadline = time.monotonic() + 90
        while "2" not in versions and time.monotonic() < deadline:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda i: infer(client, "double", i), range(32)))
            codes += [a.status_code for a in answers]
            versions |= {a.json()["model_version"] for a in answers if a.status_code == 200}
    assert "2" in versions
    assert set(codes) == {200}


def test_workers_bound_request_heads_like_a_single_process(server: ServerProcess) -> None:
    for _ in range(WORKERS * 3):  # fresh connections: the kernel spreads them over the workers
        response = httpx.get(f"{server.url}/v2/health/live", headers={"x-big": "a" * 20_000}, timeout=30)
        assert response.status_code == 431
        assert "max_header_line_bytes" in response.json()["error"]
        assert response.headers["connection"] == "close"


def test_sigterm_with_workers_answers_everything_sent_and_exits_zero(server: ServerProcess) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]}

    def one(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            return client.post("/v2/models/slow/infer", json=body).status_code

    codes: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(ROWS + 1) as pool:
        for _attempt in range(5):  # on a slow machine the blocker may finish before ROWS requests queue: again
            blocker = pool.submit(one, -1)
            wait_for(lambda: total(server, "tandem_inflight_batches", model="slow") == 1, "the blocker to run")
            queued = [blocker, *(pool.submit(one, i) for i in range(ROWS))]
            wait_for(functools.partial(queued_or_done, server, queued), "the queue to fill")
            if not all(f.done() for f in queued):
                break
            assert [f.result() for f in queued] == [200] * (ROWS + 1)
        else:
            pytest.fail("the blocker finished before the queue filled, five times")
        server.process.send_signal(signal.SIGTERM)
        # The grace: every worker reports not ready yet still serves (a fresh connection reaches any of them).
        wait_for(lambda: all(ready_status(server) == 503 for _ in range(WORKERS * 3)), "every worker not ready")
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert infer(client, "double", 1).status_code == 200
        server.process.send_signal(signal.SIGTERM)  # passed on to the workers: the rest of the grace is skipped
        codes = [f.result(timeout=120) for f in queued]
    assert codes == [200] * (ROWS + 1)
    assert server.process.wait(timeout=120) == 0, server.output()
