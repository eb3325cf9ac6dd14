from __future__ import annotations

import asyncio
from typing import Any

import pytest

from benchmarks import bodies
from benchmarks.front import WORKLOADS, measure, request, scope_of
from benchmarks.models import MLP


class Recorder:
    """An ASGI app that reads the whole body, answers `status`, and keeps what it was given."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.scopes: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        message = await receive()
        self.bodies.append(message["body"])
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def test_the_scope_is_what_uvicorn_passes_for_the_body() -> None:
    body = bodies.v2_binary(MLP, rows=2)
    scope = scope_of(body)
    assert (scope["method"], scope["path"], scope["raw_path"]) == ("POST", body.path, body.path.encode())
    headers = dict(scope["headers"])
    assert headers[b"content-length"] == str(len(body.content)).encode()
    assert headers[b"inference-header-content-length"] == body.headers[bodies.BINARY_HEADER].encode()


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_a_request_delivers_the_body_and_returns_the_status(workload: str) -> None:
    app, body = Recorder(201), WORKLOADS[workload](MLP)
    assert asyncio.run(request(app, body)) == 201
    assert app.bodies == [body.content]
    assert app.scopes[0]["path"] == body.path


@pytest.mark.parametrize("concurrency", [1, 8])
def test_measure_sends_every_request_and_gives_cpu_time_per_request(concurrency: int) -> None:
    app = Recorder()
    us = asyncio.run(measure(app, bodies.tfs_json(MLP), concurrency, 64))
    assert len(app.bodies) == 64
    assert us > 0


def test_measure_stops_on_a_failed_request() -> None:
    with pytest.raises(SystemExit, match="statuses \\[503\\]"):
        asyncio.run(measure(Recorder(503), bodies.v2_json(MLP), 4, 8))
