"""Real uvicorn processes serving tiny real ONNX models, one plain and one with model control on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.api.models import mlp, write_repository

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0k"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY_BYTES = 65536


@dataclass
class Server:
    """A running `tandem serve` process."""

    url: str
    port: int
    repo: Path
    log: Path
    process: subprocess.Popen[bytes]

    def client(self, headers: dict[str, str] | None = None) -> httpx.Client:
        """An httpx client bound to this server."""
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(repo: Path, log: Path, *flags: str) -> Server:
    """Start `python -m service serve` on a free port and wait until it is live."""
    port = _free_port()
    command = [sys.executable, "-m", "service", "serve", "--models", str(repo), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--max-body-bytes", str(MAX_BODY_BYTES), *flags]
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith("TANDEM_")}
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", port, repo, log, process)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/v2/health/live", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not come up:\n{log.read_text()[-4000:]}")


def stop_server(server: Server) -> None:
    """SIGTERM, then SIGKILL if it does not drain in time."""
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """mlp (1, 2; labels stable=1, canary=2), pair, echo, fixed, broken and badconfig; control off."""
    root = tmp_path_factory.mktemp("plain")
    running = start_server(write_repository(root / "repo"), root / "server.log")
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def control_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """mlp (1, 2) and multi (1, 2), with model control on behind the admin token."""
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
