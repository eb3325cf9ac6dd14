"""Real processes for the live tests: `python -m service serve` (or any other command) on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
LOG_TAIL_CHARS = 4000


@dataclass
class ServerProcess:
    """A running `tandem serve` process, the repository it serves and where it listens (HTTP, gRPC) and logs."""

    process: subprocess.Popen[bytes]
    port: int
    repo: Path
    log: Path
    grpc_port: int = 0

    @property
    def grpc_target(self) -> str:
        """host:port of the gRPC services."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """The end of the server's log, for assertion messages."""
        return log_tail(self.log)

    def client(self, headers: dict[str, str] | None = None) -> httpx.Client:
        """An httpx client bound to this server."""
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else "(no log)"


def spawn(command: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `command` with stdout and stderr going to `log`."""
    with log.open("wb") as sink:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)


def wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, name: str, timeout_s: float) -> None:
    """Poll `url` until it answers 200; fail with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{log_tail(log)}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    pytest.fail(f"{name} not ready after {timeout_s:.0f} s:\n{log_tail(log)}")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    """SIGTERM, then SIGKILL if it does not leave within `timeout_s`; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def wait_loaded(process: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float) -> None:
    """Poll /v2/health/ready until start-up loading is over: 200, or a 503 that no longer says it is loading."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_tail(log)}")
            try:
                response = client.get(f"{url}/v2/health/ready")
                if response.status_code == 200 or "is not ready: loading" not in response.text:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    pytest.fail(f"server still loading after {timeout_s:.0f} s:\n{log_tail(log)}")


def server_command(repo: Path, port: int, *flags: str) -> list[str]:
    """`python -m service serve` on loopback; no shutdown grace unless the flags set one (tests stop it often)."""
    command = [sys.executable, "-m", "service", "serve", "--models", str(repo), "--port", str(port)]
    return [*command, "--host", "127.0.0.1", "--shutdown-grace-s", "0", *flags]


def server_env(**extra: str) -> dict[str, str]:
    """This environment without TANDEM_* variables, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith("TANDEM_")}
    return {**env, **extra}


def start_server(
    repo: Path,
    log: Path,
    *flags: str,
    timeout_s: float = 60,
    wait_path: str | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start the server on a free loopback port; wait until `wait_path` answers 200, or else until it has loaded."""
    port, grpc_port = free_port(), free_port()
    command = server_command(repo, port, "--grpc-port", str(grpc_port), *flags)
    process = spawn(command, log, ROOT, env if env is not None else server_env())
    server = ServerProcess(process, port, repo, log, grpc_port)
    try:
        if wait_path is None:
            wait_loaded(server.process, server.url, log, timeout_s)
        else:
            wait_ready(server.process, f"{server.url}{wait_path}", log, "server", timeout_s)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: ServerProcess, timeout_s: float = 30) -> int:
    """Stop the server (SIGTERM, then SIGKILL); its exit code."""
    return stop_process(server.process, timeout_s)
