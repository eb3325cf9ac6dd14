"""SIGTERM on a real server: ready 503 and a grace period that still serves, then stop accepting, drain, exit 0.

Every wait ends on something the test observes (a response, a log line, a socket, the process exiting), never on
a sleep that assumes a fast machine: these tests must pass on a busy 2-core CI machine.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.lifecycle import ClosedLoop, get, wait_for, wait_for_log
from tests.e2e.test_server import infer_json, make_repository, metric_samples
from tests.server import ServerProcess, start_server, stop_server
from tests.service.conftest import onnx_slow_doubler

pytestmark = pytest.mark.slow
CLIENTS = 32
LONG_GRACE_S = 300  # the tests end such a grace with a second signal, once they have seen what they came for
DRAIN_S = 10
GRACE_200S = 64  # responses served in the grace period (ready already 503) before the test ends it
REFUSED = 0  # a client whose connection was refused: it sent nothing


def start(tmp_path: Path, *flags: str) -> ServerProcess:
    repo = make_repository(tmp_path / "models", max_batch_size=32, max_batch_delay_ms=1)
    base = ("--device", "cpu", "--drain-timeout-s", str(DRAIN_S))
    return start_server(repo, tmp_path / "server.log", *base, *flags, wait_path="/v2/health/ready")


def exit_code(server: ServerProcess) -> int:
    """Wait for the process to leave on its own (bounded by the drain and a margin)."""
    try:
        return server.process.wait(timeout=DRAIN_S + 60)
    except Exception:
        pytest.fail(f"server did not exit after the drain:\n{server.output()}")


def test_sigterm_under_32_closed_loop_clients_loses_no_request(tmp_path: Path) -> None:
    server = start(tmp_path, "--shutdown-grace-s", str(LONG_GRACE_S))
    try:
        load = ClosedLoop(server, CLIENTS)
        wait_for("every client served", lambda: all(o.responses for o in load.outcomes), server)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        wait_for("ready to turn 503", lambda: get(server, "/v2/health/ready").status_code == 503, server)
        load.marked.set()
        # The grace period: not ready, yet still accepting and serving, keep-alive intact.
        assert get(server, "/v2/health/live").status_code == 200
        assert get(server, "/v2/health/ready").json() == {"error": "server is not ready: shutting down"}
        wait_for("requests served in the grace", lambda: load.count(close=False, after_mark=True) >= GRACE_200S)
        wait_for("every client served in the grace", lambda: all(o.responses[-1][2] for o in load.outcomes))
        server.process.send_signal(signal.SIGTERM)  # a second SIGTERM ends the grace
        load.join()
        code = exit_code(server)
        elapsed = time.monotonic() - signalled
    finally:
        stop_server(server)
    outcomes = load.outcomes
    assert [o.ended for o in outcomes if o.ended != "refused"] == [], "requests were sent and never answered"
    assert {status for o in outcomes for status, _, _ in o.responses} == {200}
    # Each client's last response told it to close; only then was its next connection refused.
    assert all(o.responses and o.responses[-1][1] == "close" for o in outcomes)
    assert load.count(close=True) == CLIENTS
    assert code == 0, server.output()
    assert elapsed < LONG_GRACE_S  # the second signal skipped the rest of the grace
    log = server.output()
    assert "grace period skipped" in log
    assert "Traceback" not in log


def test_the_grace_period_ends_by_itself_then_the_server_exits_zero(tmp_path: Path) -> None:
    grace_s = 1.5
    server = start(tmp_path, "--shutdown-grace-s", str(grace_s))
    try:
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = exit_code(server)
        elapsed = time.monotonic() - signalled
    finally:
        stop_server(server)
    assert code == 0, server.output()
    assert elapsed >= grace_s  # it kept serving for the whole grace
    log = server.output()
    assert log.index("still accepting and serving for 1.5 s") < log.index("no longer accepting connections")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/v2/health/live", timeout=5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_skips_the_grace_and_a_second_signal_too(tmp_path: Path, sig: signal.Signals) -> None:
    server = start(tmp_path, "--shutdown-grace-s", str(LONG_GRACE_S))
    try:
        signalled = time.monotonic()
        server.process.send_signal(sig)
        if sig == signal.SIGTERM:
            wait_for_log(server, "still accepting and serving")
            server.process.send_signal(signal.SIGTERM)
        code = exit_code(server)
    finally:
        stop_server(server)
    assert code == 0, server.output()
    assert time.monotonic() - signalled < LONG_GRACE_S


def test_an_idle_keep_alive_connection_gets_its_next_request_answered_with_connection_close(tmp_path: Path) -> None:
    server = start(tmp_path, "--keep-alive-timeout-s", "600")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            first = infer_json(client, 1.0)
            assert first.status_code == 200
            assert first.headers.get("connection") != "close"
            server.process.send_signal(signal.SIGTERM)  # no grace (the test helper's default): draining at once
            wait_for_log(server, "no longer accepting connections")
            with pytest.raises(httpx.ConnectError):  # the listener is closed ...
                httpx.get(f"{server.url}/v2/health/live", timeout=5)
            last = infer_json(client, 2.0)  # ... yet the idle keep-alive connection is still answered
            assert last.status_code == 200
            assert last.json()["outputs"][0]["data"] == [4.0] * 4
            assert last.headers["connection"] == "close"
        code = exit_code(server)
    finally:
        stop_server(server)
    assert code == 0, server.output()


def test_a_request_head_that_arrives_during_the_drain_is_answered(tmp_path: Path) -> None:
    server = start(tmp_path, "--keep-alive-timeout-s", "600", "--header-timeout-s", "600")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n")  # half a request head
            wait_for("the server to hold the connection", lambda: get(server, "/v2/health/live").status_code == 200)
            server.process.send_signal(signal.SIGTERM)
            wait_for_log(server, "no longer accepting connections")
            sock.sendall(b"\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        code = exit_code(server)
    finally:
        stop_server(server)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b"connection: close" in answer.lower()
    assert code == 0, server.output()


def test_a_signal_during_the_drain_answers_what_is_left_with_503_and_exits_zero(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    onnx_slow_doubler(repo / "slow" / "1" / "model.onnx", work=2048)  # most of a second per call
    (repo / "slow" / "model.json").write_text(json.dumps({"max_batch_size": 0}))  # one request per call: a queue
    flags = ("--device", "cpu", "--drain-timeout-s", str(LONG_GRACE_S))
    server = start_server(repo, tmp_path / "server.log", *flags, wait_path="/v2/health/ready")
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]}

    def one(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=LONG_GRACE_S) as client:
            try:
                return client.post("/v2/models/slow/infer", json=body).status_code
            except httpx.ConnectError:  # connected only after the listener closed: nothing was sent
                return REFUSED

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            calls = [pool.submit(one, i) for i in range(12)]
            wait_for("a queue", lambda: queued(server) >= 6, server)
            server.process.send_signal(signal.SIGTERM)
            wait_for_log(server, "no longer accepting connections")
            server.process.send_signal(signal.SIGTERM)  # during the drain: stop waiting for the queue
            codes = [call.result(timeout=LONG_GRACE_S) for call in calls]
        code = exit_code(server)
    finally:
        stop_server(server)
    assert set(codes) <= {200, 503, REFUSED}, codes  # every request that was sent got an answer
    assert 503 in codes  # the queue was not worked through
    assert code == 0, server.output()
    assert "during the drain: failing what is left" in server.output()


def queued(server: ServerProcess) -> float:
    """Requests waiting in batchers now (the tandem_queue_requests gauge)."""
    return sum(s.value for s in metric_samples(server.url, "tandem_queue_requests"))
