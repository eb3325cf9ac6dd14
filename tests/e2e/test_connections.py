"""Request heads on a real server: bounded (414, 431), timed (408), idle keep-alive connections closed.

Each test waits on the socket: the server's answer or its closing the connection, never a sleep.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.e2e.test_server import make_repository
from tests.server import ServerProcess, start_server, stop_server

pytestmark = pytest.mark.slow
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n"


def serve(tmp_path_factory: pytest.TempPathFactory, *flags: str) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("connections")
    running = start_server(make_repository(root / "models"), root / "server.log", "--device", "cpu", *flags)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The default head timeout (a stalled machine never turns a complete head into a 408); short keep-alive."""
    yield from serve(tmp_path_factory, "--keep-alive-timeout-s", "1")


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A one-second head timeout, for the tests that never complete a head."""
    yield from serve(tmp_path_factory, "--header-timeout-s", "1")


def exchange(server: ServerProcess, *parts: bytes) -> bytes:
    """Send the parts, then read until the server closes the connection; what came back."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        try:
            for part in parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):  # refused before everything was sent
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def status_and_error(answer: bytes) -> tuple[int, str, bytes]:
    """The status code, the JSON error message, and the raw head of an answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"], head.lower()


def test_a_one_megabyte_header_is_refused_431_and_the_connection_closed(server: ServerProcess) -> None:
    answer = exchange(server, LIVE + b"X-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n")
    status, error, head = status_and_error(answer)
    assert (status, error) == (431, "request head exceeds max_header_bytes=32768")
    assert b"connection: close" in head


def test_one_header_line_over_the_limit_is_refused_431(server: ServerProcess) -> None:
    answer = exchange(server, LIVE + b"X-Long: " + b"a" * 20_000 + b"\r\n\r\n")
    assert status_and_error(answer)[:2] == (431, "header 'X-Long' exceeds max_header_line_bytes=16384")


def test_a_request_target_over_the_limit_is_refused_414(server: ServerProcess) -> None:
    answer = exchange(server, b"GET /v2/health/live?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_and_error(answer)[:2] == (414, "request target exceeds max_request_line_bytes=8192")


def test_heads_just_under_the_limits_are_served(server: ServerProcess) -> None:
    target = b"/v2/health/live?q=" + b"a" * (8192 - 20)
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(20))  # ~20 KiB in all
    answer = exchange(server, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_a_head_that_trickles_in_too_slowly_gets_408(impatient: ServerProcess) -> None:
    answer = exchange(impatient, LIVE + b"X-Slow: 1\r\n")  # never finished: the server must not wait for ever
    assert status_and_error(answer)[:2] == (408, "request head not received within header_timeout_s=1")


def test_a_connection_that_sends_nothing_is_closed(impatient: ServerProcess) -> None:
    assert exchange(impatient) == b""


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(server: ServerProcess) -> None:
    answer = exchange(server, LIVE + b"\r\n")  # keep-alive: only the server's idle timeout ends this exchange
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b'{"live":true}')


def test_a_body_sent_with_its_head_does_not_count_as_head(server: ServerProcess) -> None:
    body = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}' + b" " * 200_000
    head = b"POST /v2/models/double/infer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    answer = exchange(server, head + b"Content-Length: %d\r\n\r\n" % len(body) + body)  # one write: head and body
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b'"data":[2.0,4.0,6.0,8.0]' in answer


def test_a_body_in_pieces_and_the_next_request_on_the_connection_each_get_their_own_answer(
    server: ServerProcess,
) -> None:
    def infer(data: list[float], *extra: bytes) -> tuple[bytes, bytes]:
        tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": data}
        body = json.dumps({"inputs": [tensor]}).encode() + b" " * 200_000  # past uvicorn's 64 KiB read pause
        head = b"POST /v2/models/double/infer HTTP/1.1\r\nHost: t\r\n" + b"".join(extra)
        return head + b"Content-Length: %d\r\n\r\n" % len(body), body

    head, body = infer([1, 2, 3, 4])
    last_head, last_body = infer([5, 6, 7, 8], b"Connection: close\r\n")
    pieces = [head, body[:70_000], body[70_000:140_000], body[140_000:], last_head + last_body]
    answer = exchange(server, *pieces)
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer[:300]
    first, second = answer.index(b'"data":[2.0,4.0,6.0,8.0]'), answer.index(b'"data":[10.0,12.0,14.0,16.0]')
    assert first < second
