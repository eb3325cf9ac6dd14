"""Real uvicorn processes serving tiny real ONNX models, one plain and one with model control on.

The plain server is shared by the whole session: model control is off, so no test can change which models it
serves; a test that counts there (metrics, statistics) compares the values before and after its own requests.
A server with model control on is started per module, over a repository of its own, so what one module
registers, loads, unloads, scales or pins never reaches another.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import server as live
from tests.api.models import mlp, write_repository
from tests.server import ROOT, stop_server
from tests.server import ServerProcess as Server

__all__ = ["ROOT", "Server", "start_server", "stop_server"]

TOKEN = "t0k"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY_BYTES = 65536


def start_server(repo: Path, log: Path, *flags: str) -> Server:
    """Start `python -m service serve` on a free port with a small body limit and wait until it is live."""
    return live.start_server(repo, log, "--max-body-bytes", str(MAX_BODY_BYTES), *flags, timeout_s=90)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """mlp (1, 2; labels stable=1, canary=2), pair, echo, fixed, broken and badconfig; control off."""
    root = tmp_path_factory.mktemp("plain")
    running = start_server(write_repository(root / "repo"), root / "server.log")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def control_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's own server: mlp (1, 2) and multi (1, 2), model control on behind the admin token.

    Within a module, a test that changes a model (multi's default, a scale) owns that model: no other test uses it.
    """
    root = tmp_path_factory.mktemp("control")
    repo = root / "repo"
    for name in ("mlp", "multi"):
        for version in (1, 2):
            mlp(repo / name / str(version) / "model.onnx", version)
        (repo / name / "model.json").write_text('{"version_policy": "all"}')
    running = start_server(repo, root / "server.log", "--enable-model-control", "--admin-token", TOKEN)
    yield running
    stop_server(running)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    """A client of the plain server."""
    with server.client() as http:
        yield http


@pytest.fixture
def admin(control_server: Server) -> Iterator[httpx.Client]:
    """A client of the control server that sends the admin token."""
    with control_server.client(headers=AUTH) as http:
        yield http
