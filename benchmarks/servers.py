"""Servers under test and where they run: start one pinned (or not), wait until ready, always stop it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_PATH = "/v2/health/ready"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Setup:
    """Which CPUs the server and the load generator may use; None means unpinned."""

    name: str
    server_cpus: str | None
    client_cpus: str | None


def cpu_set(cpus: str | None) -> set[int]:
    """The CPUs of a taskset list like "0" or "0,1"; None: every CPU this process may use."""
    return {int(cpu) for cpu in cpus.split(",")} if cpus else set(os.sched_getaffinity(0))


def setups() -> dict[str, Setup]:
    """one-core: server on the first allowed CPU, wrk on the second; all-core: both unpinned."""
    cpus = sorted(os.sched_getaffinity(0))
    found = {"all-core": Setup("all-core", None, None)}
    if len(cpus) >= 2:
        found["one-core"] = Setup("one-core", str(cpus[0]), str(cpus[1]))
    return found


@dataclass(frozen=True)
class Running:
    """A started server: where it listens and its process id."""

    base: str
    pid: int


@dataclass(frozen=True)
class ServerSpec:
    """A server to measure: its label, what it is (tandem or naive), extra flags and model.json overrides."""

    name: str
    kind: str
    flags: tuple[str, ...] = ()
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)


TANDEM = ServerSpec("tandem", "tandem")
NAIVE = ServerSpec("naive", "naive")


def server_command(spec: ServerSpec, repository: Path, port: int) -> list[str]:
    """The command line that starts spec on 127.0.0.1:port; tandem gets one intra-op thread and the CPU device."""
    if spec.kind == "naive":
        return [sys.executable, "-m", "benchmarks.naive_server", str(repository), str(port), *spec.flags]
    serve = [sys.executable, "-m", "service", "serve", "--models", str(repository), "--host", "127.0.0.1"]
    serve += ["--port", str(port), "--grpc-port", "0", "--intra-op-threads", "1", "--device", "cpu"]
    serve += ["--log-level", "warning"]
    return [*serve, *spec.flags]


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running(
    spec: ServerSpec, setup: Setup, repository: Path, log: Path, source: Path | None = None
) -> Iterator[Running]:
    """Start the server (pinned to setup.server_cpus), yield it once ready, stop it on the way out.

    `source`: a checkout whose `service` package to run instead of this one (`python -m` imports from there).
    """
    port = free_port()
    cmd = server_command(spec, repository, port)
    if setup.server_cpus is not None:
        cmd = ["taskset", "-c", setup.server_cpus, *cmd]
    # only flags configure the server: a stray TANDEM_* variable would change (or stop) it
    env = {key: value for key, value in os.environ.items() if not key.startswith("TANDEM_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=source)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(proc, base, log)
            yield Running(base, proc.pid)
        finally:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before ready:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(base + READY_PATH, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S:.0f} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
