"""SIGTERM with gRPC calls in flight: health turns NOT_SERVING at once, new calls are refused, queued ones finish."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.e2e.test_server import DRAIN_S, make_repository, metric_samples, start, stop

pytestmark = pytest.mark.slow
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def infer_request(value: float) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="double")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.full((1, 4), value, np.float32).tobytes())
    return request


def rows_run(url: str) -> float:
    return sum(s.value for s in metric_samples(url, "tandem_inference_rows_total"))


def test_sigterm_drains_grpc_calls_and_reports_not_serving(tmp_path: Path) -> None:
    # A long batch delay keeps requests queued at the signal (a lone first one runs at once).
    repo = make_repository(tmp_path / "models", slow=True, max_batch_size=64, max_batch_delay_ms=3000)
    server = start(repo, tmp_path / "server.log")
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=DRAIN_S + 10)
            assert next(watch).status == SERVING
            rows_before = rows_run(server.url)
            in_flight = [stub.ModelInfer.future(infer_request(i), timeout=DRAIN_S + 10) for i in range(8)]
            deadline = time.monotonic() + 10
            # Every call is in the server (queued, or run in the first batch, which an idle model starts at once).
            while sum(s.value for s in metric_samples(server.url, "tandem_queue_requests")) < 8 - (
                rows_run(server.url) - rows_before
            ):
                assert time.monotonic() < deadline, "requests were not queued"
                time.sleep(0.02)
            assert sum(not call.done() for call in in_flight) >= 4, "calls finished before the signal"
            server.process.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == NOT_SERVING
            assert not stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(infer_request(99), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (refused.value.details() or "")
            for value, call in enumerate(in_flight):
                output = np.frombuffer(call.result().raw_output_contents[0], np.float32)
                assert output.tolist() == [2.0 * value] * 4
        assert server.process.wait(timeout=DRAIN_S + 5) == 0, server.output()
    finally:
        stop(server)
