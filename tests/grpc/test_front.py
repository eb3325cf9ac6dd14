"""The gRPC front in process, over the fake runtime: deadlines, cancellation, a full queue, readiness, control, metrics.

The app runs with its lifespan (TestClient), so the gRPC server shares the event loop and the registry with HTTP,
as under `tandem serve`; calls go through a real channel on loopback with the official tritonclient stubs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.app import create_app
from service.settings import Settings
from tests.fakes import JsonArtifactLoader, write_json_model
from tests.server import free_port

MAX_BODY = 16 * 1024
TOKEN = "t0k"


class Served:
    """The app's HTTP client, a channel to its gRPC port, the KServe stub and the fake runtimes' loader."""

    def __init__(self, client: TestClient, channel: grpc.Channel, loader: JsonArtifactLoader) -> None:
        self.http, self.channel, self.loader = client, channel, loader
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels`."""
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        total = 0.0
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(name + "{") and all(item in line for item in wanted):
                total += float(line.rsplit(" ", 1)[1])
        return total


@contextlib.contextmanager
def serving(repo: Path, **settings: Any) -> Iterator[Served]:
    """The app with gRPC on a free port, lifespan running for the duration."""
    port = free_port()
    options: dict[str, Any] = {"models_dir": repo, "max_body_bytes": MAX_BODY, "warmup": False, **settings}
    loader = JsonArtifactLoader()
    app = create_app(Settings(grpc_port=port, **options), loader=loader, grpc=True)
    with TestClient(app) as client, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Served(client, channel, loader)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """m: versions 1 and 2; slow: 0.4 s per call, no batching, a queue of one; broken: fails to load."""
    for version in (1, 2):
        write_json_model(tmp_path, "m", version, config={"version_policy": "all", "max_batch_size": 8})
    write_json_model(tmp_path, "slow", 1, delay_s=0.4, config={"max_batch_size": 0, "max_queue_size": 1})
    return tmp_path


@pytest.fixture
def served(repo: Path) -> Iterator[Served]:
    with serving(repo) as running:
        yield running


def infer_request(model: str = "m", rows: int = 1, **fields: Any) -> Any:
    """A ModelInferRequest for x FP32 [rows, 4] in raw_input_contents."""
    request = service_pb2.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    request.raw_input_contents.append(np.full((rows, 4), 1.5, np.float32).tobytes())
    return request


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The RpcError a call ends with."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    """Wait (bounded) for an observable state of the server."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def occupy(served: Served, pool: concurrent.futures.Executor) -> concurrent.futures.Future[Any]:
    """Start one 1-row request on `slow` and wait until the runtime is running it."""
    running = pool.submit(served.stub.ModelInfer, infer_request("slow"), timeout=10)
    wait_until(lambda: served.loader.of("slow", 1).running == 1, "the first request to run")
    return running


def test_infer_over_grpc_shares_the_registry_and_metrics_with_http(served: Served) -> None:
    response = served.stub.ModelInfer(infer_request(rows=2, id="r-1"), timeout=10)
    assert (response.model_name, response.model_version, response.id) == ("m", "2", "r-1")
    assert [o.name for o in response.outputs] == ["y", "version"]
    y = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(response.outputs[0].shape))
    np.testing.assert_array_equal(y, np.full((2, 4), 3.0, np.float32))
    assert served.http.get("/v2/models/m/stats").json()["model_stats"][1]["inference_count"] == 2
    error = rpc_error(lambda: served.stub.ModelInfer(infer_request(model="nope"), timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert served.metric("tandem_requests_total", dialect="v2_grpc", model="m", code="200", outcome="ok") == 1
    assert served.metric("tandem_requests_total", dialect="v2_grpc", model="", code="404", outcome="not_found") == 1
    assert served.metric("tandem_request_body_bytes_count", dialect="v2_grpc") == 2


def test_the_grpc_deadline_is_the_request_deadline_and_a_late_request_never_runs(served: Served) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        running = occupy(served, pool)
        error = rpc_error(lambda: served.stub.ModelInfer(infer_request("slow", rows=3), timeout=0.1))
        assert running.result().outputs[0].shape == [1, 4]
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 3 not in served.loader.of("slow", 1).batch_rows


def test_the_v2_timeout_parameter_gives_deadline_exceeded(served: Served) -> None:
    request = infer_request("slow", rows=3)
    request.parameters["timeout"].int64_param = 50_000  # microseconds
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        running = occupy(served, pool)
        error = rpc_error(lambda: served.stub.ModelInfer(request, timeout=10))
        running.result()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in (error.details() or "")
    assert served.metric("tandem_requests_total", dialect="v2_grpc", code="504", outcome="deadline") == 1
    assert 3 not in served.loader.of("slow", 1).batch_rows


def test_a_cancelled_call_is_dropped_from_the_queue(served: Served) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        running = occupy(served, pool)
        queued = served.stub.ModelInfer.future(infer_request("slow", rows=3), timeout=10)
        wait_until(lambda: served.metric("tandem_queue_requests", model="slow") == 1, "the second request to queue")
        queued.cancel()
        wait_until(
            lambda: served.metric("tandem_requests_total", dialect="v2_grpc", code="499", outcome="cancelled") == 1,
            "the server to see the cancellation",
        )
        running.result()
    assert served.loader.of("slow", 1).batch_rows == [1]


def test_a_full_queue_is_resource_exhausted_with_retry_information(served: Served) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        running = occupy(served, pool)
        queued = pool.submit(served.stub.ModelInfer, infer_request("slow"), timeout=10)
        wait_until(lambda: served.metric("tandem_queue_requests", model="slow") == 1, "the second request to queue")
        error = rpc_error(lambda: served.stub.ModelInfer(infer_request("slow"), timeout=10))
        running.result(), queued.result()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in (error.details() or "")
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert int(trailers["retry-after"]) >= 1
    assert int(trailers["grpc-retry-pushback-ms"]) == int(trailers["retry-after"]) * 1000


def test_a_message_larger_than_max_body_bytes_is_refused(served: Served) -> None:
    error = rpc_error(lambda: served.stub.ModelInfer(infer_request(rows=MAX_BODY // 16 + 1), timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served.stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live


def test_a_version_that_is_not_ready_is_unavailable(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1)
    write_json_model(tmp_path, "m", 2, fail_predict=True, config={"version_policy": "all"})
    with serving(tmp_path, warmup=True) as served:
        error = rpc_error(lambda: served.stub.ModelInfer(infer_request(model_version="2"), timeout=10))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "model 'm' version 2 is not ready" in (error.details() or "")
        ready = served.stub.ModelReady(service_pb2.ModelReadyRequest(name="m", version="2"), timeout=10)
        assert not ready.ready
        server_ready = served.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
        assert server_ready == (served.http.get("/v2/health/ready").status_code == 200)


def test_control_is_permission_denied_while_off(served: Served) -> None:
    error = rpc_error(lambda: served.stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="m")))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--enable-model-control" in (error.details() or "")


def test_control_needs_the_bearer_token(repo: Path) -> None:
    with serving(repo, enable_model_control=True, admin_token=TOKEN) as served:
        unload = service_pb2.RepositoryModelUnloadRequest(model_name="m")
        for metadata in [(), (("authorization", "Bearer nope"),), (("authorization", TOKEN),)]:
            error = rpc_error(lambda m=metadata: served.stub.RepositoryModelUnload(unload, metadata=m, timeout=10))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        auth = (("authorization", f"Bearer {TOKEN}"),)
        served.stub.RepositoryModelUnload(unload, metadata=auth, timeout=10)
        assert served.http.get("/v2/models/m/ready").status_code == 404
        load = service_pb2.RepositoryModelLoadRequest(model_name="m")
        served.stub.RepositoryModelLoad(load, metadata=auth, timeout=30)
        assert served.stub.ModelReady(service_pb2.ModelReadyRequest(name="m"), timeout=10).ready
        load.parameters["config"].string_param = "{}"
        error = rpc_error(lambda: served.stub.RepositoryModelLoad(load, metadata=auth, timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_busy_grpc_port_stops_start_up_naming_it(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_app(
            Settings(models_dir=tmp_path, grpc_port=port, warmup=False), loader=JsonArtifactLoader(), grpc=True
        )
        with pytest.raises(RuntimeError, match=f"cannot listen for gRPC on 127.0.0.1:{port}"), TestClient(app):
            pass


def test_without_grpc_the_app_opens_no_grpc_port(tmp_path: Path) -> None:
    write_json_model(tmp_path, "m", 1)
    port = free_port()
    app = create_app(Settings(models_dir=tmp_path, grpc_port=port, warmup=False), loader=JsonArtifactLoader())
    with TestClient(app) as client, socket.socket() as probe:
        assert client.get("/v2/health/ready").status_code == 200
        assert probe.connect_ex(("127.0.0.1", port)) != 0
