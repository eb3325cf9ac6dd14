"""Overload on a real server: a full model is refused from the request head, and the refused connection is held.

Eight closed-loop clients per dialect drive a slow model that takes one request at a time (one queued, one
running), so most requests find it full. Every wait ends on a response or the process, never on a sleep.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.lifecycle import ClosedLoop, wait_for
from tests.e2e.test_server import make_repository, metric_samples
from tests.server import ServerProcess, start_server, stop_server

pytestmark = pytest.mark.slow
CLIENTS = 8
REQUESTS = 20  # per client
DRAIN_S = 30


@dataclass
class Seen:
    """What one client saw: (status, Retry-After, X-Request-Id, body) per response, and a transport error if any."""

    answers: list[tuple[int, str | None, str | None, Any]] = field(default_factory=list)
    lost: str = ""


def start(tmp_path: Path, *flags: str) -> ServerProcess:
    config = {"max_batch_size": 1, "max_queue_size": 1, "max_concurrent_batches": 1}
    repo = make_repository(tmp_path / "models", slow=True, **config)
    base = ("--device", "cpu", "--drain-timeout-s", str(DRAIN_S))
    return start_server(repo, tmp_path / "server.log", *base, *flags, wait_path="/v2/health/ready")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start(tmp_path)
    try:
        yield running
    finally:
        stop_server(running)


def drive(server: ServerProcess, path: str, body: object, seen: Seen) -> None:
    """REQUESTS requests, one after another, on one keep-alive connection."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for _ in range(REQUESTS):
            try:
                response = client.post(path, json=body)
            except httpx.TransportError as exc:
                seen.lost = repr(exc)
                return
            headers = response.headers
            seen.answers.append(
                (response.status_code, headers.get("retry-after"), headers.get("x-request-id"), response.json())
            )


def count(server: ServerProcess, name: str, **labels: str) -> float:
    samples = metric_samples(server.url, name)
    return float(sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())))


def test_a_flood_is_refused_from_the_head_and_every_request_is_answered(server: ServerProcess) -> None:
    v2 = ("/v2/models/double/infer", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]})
    torchserve = ("/predictions/double", [1.0, 1.0, 1.0, 1.0])
    clients = [(dialect, Seen()) for dialect in ("v2", "torchserve") for _ in range(CLIENTS)]
    threads = [
        threading.Thread(target=drive, args=(server, *(v2 if dialect == "v2" else torchserve), seen))
        for dialect, seen in clients
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a client never finished"

    assert [seen.lost for _, seen in clients if seen.lost] == [], "a request was sent and never answered"
    for dialect, seen in clients:
        assert len(seen.answers) == REQUESTS
        for status, retry_after, request_id, body in seen.answers:
            assert request_id
            if status == 200:
                data = body["outputs"][0]["data"] if dialect == "v2" else body
                assert data == [2.0] * 4
                continue
            assert status == 503, body
            assert retry_after is not None
            assert int(retry_after) >= 1
            if dialect == "v2":
                assert "queue is full" in body["error"]
            else:
                assert body["code"] == 503
                assert body["type"] == "ServiceUnavailableException"
                assert "queue is full" in body["message"]

    # Refusals happened, the head answered some of them and held those connections, and every answer counted.
    for dialect in ("v2", "torchserve"):
        refused = sum(status == 503 for d, seen in clients if d == dialect for status, *_ in seen.answers)
        served = sum(status == 200 for d, seen in clients if d == dialect for status, *_ in seen.answers)
        assert refused > 0
        assert served > 0
        assert count(server, "tandem_requests_total", dialect=dialect, code="503", outcome="queue_full") == refused
        assert count(server, "tandem_requests_total", dialect=dialect, code="200") == served
    assert count(server, "tandem_held_connections_total", model="double") > 0
    assert "Traceback" not in server.output()


def test_sigterm_during_a_flood_answers_every_held_connection(tmp_path: Path) -> None:
    server = start(tmp_path)
    try:
        load = ClosedLoop(server, CLIENTS * 2)
        wait_for(
            "connections held back", lambda: count(server, "tandem_held_connections_total", model="double") > 0, server
        )
        server.process.send_signal(signal.SIGTERM)  # no grace (the test helper's default): draining at once
        load.join()
        code = server.process.wait(timeout=DRAIN_S + 60)
    finally:
        stop_server(server)
    assert [o.ended for o in load.outcomes if o.ended != "refused"] == [], "requests were sent and never answered"
    assert {status for o in load.outcomes for status, _, _ in o.responses} <= {200, 503}
    assert code == 0, server.output()
