"""A real `python -m service serve` process on loopback: tritonclient unchanged, batching under load, SIGTERM drain."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server import ServerProcess as Server
from tests.server import start_server, stop_server
from tests.service.conftest import onnx_doubler, onnx_slow_doubler

pytestmark = pytest.mark.slow
DRAIN_S = 10


def make_repository(root: Path, *, slow: bool = False, **config: Any) -> Path:
    """One model, `double` (y = 2x, x FP32 [-1, 4]; ~10 ms a call if slow), with the given model.json."""
    (onnx_slow_doubler if slow else onnx_doubler)(root / "double" / "1" / "model.onnx")
    (root / "double" / "model.json").write_text(json.dumps(config))
    return root


def start(repo: Path, log: Path) -> Server:
    """Start the server on the CPU with a short drain and wait (bounded) until it is ready."""
    flags = ("--device", "cpu", "--drain-timeout-s", str(DRAIN_S))
    return start_server(repo, log, *flags, wait_path="/v2/health/ready")


def stop(server: Server) -> None:
    """Terminate, then kill if it does not leave in time."""
    stop_server(server, timeout_s=DRAIN_S + 5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("e2e")
    repo = make_repository(root / "models", slow=True, max_batch_size=64, max_batch_delay_ms=20)
    running = start(repo, root / "server.log")
    try:
        yield running
    finally:
        stop(running)


def infer_json(client: httpx.Client, value: float) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}]}
    return client.post("/v2/models/double/infer", json=body)


def metric_samples(url: str, name: str) -> list[Any]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


# ----- the official Triton client, unchanged ------------------------------------------------------


def test_tritonclient_health_and_metadata(server: Server) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("double")
        metadata = client.get_model_metadata("double")
        assert metadata["name"] == "double"
        assert metadata["versions"] == ["1"]
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    finally:
        client.close()


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_infer_with_json_and_binary_tensors(server: Server, binary: bool) -> None:
    import tritonclient.http as triton

    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3.5
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        tensor = triton.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [triton.InferRequestedOutput("y", binary_data=binary)]
        result = client.infer("double", [tensor], outputs=outputs, request_id="e2e-1")
        assert result.get_response()["id"] == "e2e-1"
        assert result.get_output("y")["datatype"] == "FP32"
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
        if binary:  # the client's default: binary in, binary_data_output out
            tensor.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("double", [tensor]).as_numpy("y"), x * 2)
    finally:
        client.close()


def test_tritonclient_raises_with_the_servers_message(server: Server) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        tensor = triton.InferInput("x", [1, 4], "FP64")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float64))
        with pytest.raises(InferenceServerException) as info:
            client.infer("double", [tensor])
        assert info.value.status() == "400"
        assert "input 'x' expects datatype FP32, got FP64" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("nope")
        assert info.value.status() == "404"
        assert "nope" in info.value.message()
    finally:
        client.close()


# ----- concurrency --------------------------------------------------------------------------------


def test_64_concurrent_requests_all_succeed_and_form_batches(server: Server) -> None:
    before = {s.labels["le"]: s.value for s in metric_samples(server.url, "tandem_batch_rows_bucket")}

    def one(value: int) -> tuple[int, list[float]]:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = infer_json(client, value)
            return response.status_code, response.json()["outputs"][0]["data"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(one, range(64)))
    assert [code for code, _ in results] == [200] * 64
    assert [data for _, data in results] == [[2.0 * i] * 4 for i in range(64)]
    after = {s.labels["le"]: s.value for s in metric_samples(server.url, "tandem_batch_rows_bucket")}
    batches = after["+Inf"] - before.get("+Inf", 0)
    single = after["1.0"] - before.get("1.0", 0)
    assert 1 <= batches < 64
    assert single < batches  # at least one batch held more than one row
    rows = metric_samples(server.url, "tandem_inference_rows_total")
    assert sum(s.value for s in rows) >= 64


# ----- graceful shutdown --------------------------------------------------------------------------


def test_sigterm_drains_queued_requests_and_exits_zero(tmp_path: Path) -> None:
    # One request per runtime call and a model that takes a good fraction of a second per call: requests queue
    # behind each other, and on a slower (busier) machine they stay queued longer, so the test needs no timing.
    repo = tmp_path / "models"
    onnx_slow_doubler(repo / "double" / "1" / "model.onnx", work=1536)
    (repo / "double" / "model.json").write_text(json.dumps({"max_batch_size": 0}))
    drain_s = 300  # never reached: the drain ends when the queue is worked through
    flags = ("--device", "cpu", "--drain-timeout-s", str(drain_s))
    server = start_server(repo, tmp_path / "server.log", *flags, wait_path="/v2/health/ready")
    try:

        def one(value: int) -> int:
            with httpx.Client(base_url=server.url, timeout=drain_s) as client:
                response = infer_json(client, value)
                assert response.json()["outputs"][0]["data"] == [2.0 * value] * 4
                return response.status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            in_flight = [pool.submit(one, i) for i in range(16)]
            give_up = time.monotonic() + drain_s  # a bound for a broken server, not a timing assumption
            while (received := in_server(server) + sum(f.done() for f in in_flight)) < 16:
                assert server.process.poll() is None, server.output()
                assert time.monotonic() < give_up, f"{received} requests received:\n{server.output()}"
                time.sleep(0.02)  # polling observables: the queue and the running calls
            queued = sum(s.value for s in metric_samples(server.url, "tandem_queue_requests"))
            server.process.send_signal(signal.SIGTERM)
            codes = [f.result(timeout=drain_s) for f in in_flight]
        assert queued >= 1  # serial calls of a good fraction of a second each: most are still waiting
        assert codes == [200] * 16
        assert server.process.wait(timeout=drain_s) == 0, server.output()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/v2/health/live", timeout=2)
    finally:
        stop(server)


def in_server(server: Server) -> float:
    """Requests the server holds now, from one scrape: waiting in a batcher or running (one per call here)."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    names = ("tandem_queue_requests", "tandem_inflight_batches")
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name in names)
