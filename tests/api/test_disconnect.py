"""A client that leaves while its request waits in the queue: the request never runs and is counted as 499."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.api.conftest import start_server, stop_server
from tests.service.conftest import onnx_slow_doubler

BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()


def metric(client: httpx.Client, pattern: str) -> float:
    """The value of the first /metrics sample matching `pattern`, 0 when absent."""
    found = re.search(pattern + r" ([0-9.e+]+)", client.get("/metrics").text)
    return float(found.group(1)) if found else 0.0


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Poll an observable condition (bounded); fail naming it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_queued_request_whose_client_left_never_runs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    onnx_slow_doubler(repo / "slow" / "1" / "model.onnx", work=2048)  # each call takes a fraction of a second
    config = {"max_batch_size": 1, "max_concurrent_batches": 1}
    (repo / "slow" / "model.json").write_text(json.dumps(config))
    server = start_server(repo, tmp_path / "server.log", "--no-warmup", "--intra-op-threads", "1")
    try:
        with server.client() as client:
            first: list[int] = []
            running = threading.Thread(
                target=lambda: first.append(client.post("/v2/models/slow/infer", content=BODY).status_code)
            )
            running.start()
            wait_for(lambda: metric(client, r'tandem_inflight_batches\{[^}]*model="slow"[^}]*\}') == 1, "a batch")
            request = (
                f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(BODY)}\r\n\r\n"
            ).encode() + BODY
            with socket.create_connection(("127.0.0.1", server.port)) as gone:
                gone.sendall(request)
                wait_for(lambda: metric(client, r'tandem_queue_requests\{[^}]*model="slow"[^}]*\}') == 1, "queued")
            running.join(timeout=120)
            assert first == [200]
            cancelled = r'tandem_requests_total\{[^}]*code="499"[^}]*model="slow"[^}]*outcome="cancelled"[^}]*\}'
            wait_for(lambda: metric(client, cancelled) == 1, "the 499")
            [stats] = client.get("/v2/models/slow/versions/1/stats").json()["model_stats"]
            assert stats["inference_count"] == 1  # only the first request ever ran
            assert metric(client, r'tandem_queue_requests\{[^}]*model="slow"[^}]*\}') == 0
    finally:
        stop_server(server)
