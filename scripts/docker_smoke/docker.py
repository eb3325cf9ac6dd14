"""The docker and docker-compose command lines, and the dockerd this run starts when none is running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# Debian's docker.io CLI matches its daemon; another docker CLI earlier on PATH may be newer.
DOCKER = os.environ.get("SMOKE_DOCKER", "/usr/bin/docker")
COMPOSE = os.environ.get("SMOKE_COMPOSE", "/usr/bin/docker-compose")
POLL_S = 1.0


@dataclass(frozen=True)
class Step:
    """One `Step N/M : INSTRUCTION` of a classic-builder build and the seconds until the next one began."""

    text: str
    seconds: float


@dataclass(frozen=True)
class Result:
    """A finished command: exit status and its output."""

    rc: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.rc == 0

    def tail(self, lines: int = 5) -> str:
        """The last lines of stderr (or stdout), on one line, for a check's detail."""
        text = (self.err.strip() or self.out.strip()).splitlines()
        return " | ".join(text[-lines:])


def run(args: list[str], *, timeout: float, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
    """Run a command to completion; a timeout is reported as exit status 124."""
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        return Result(124, _text(exc.stdout), f"timed out after {timeout:.0f} s: {' '.join(args[:4])}")
    return Result(done.returncode, done.stdout, done.stderr)


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def run_logged(args: list[str], log: IO[str], *, timeout: float, env: dict[str, str] | None = None) -> int:
    """Run a long command with its output appended to log; returns the exit status (124 on timeout)."""
    log.write(f"$ {' '.join(args)}\n")
    log.flush()
    try:
        return subprocess.run(
            args, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, env=env, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        return 124


def run_build(args: list[str], log: IO[str], *, timeout: float, env: dict[str, str]) -> tuple[int, list[Step]]:
    """Run a classic-builder `docker build` with its output appended to log; (status, each Step's duration)."""
    log.write(f"$ {' '.join(args[:4])} ...\n")
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
    )
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    starts: list[tuple[str, float]] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if line.startswith("Step "):
                starts.append((line.strip(), time.monotonic()))
        status = process.wait()
    finally:
        timer.cancel()
    ends = [start for _, start in starts[1:]] + [time.monotonic()]
    steps = [Step(text, end - start) for (text, start), end in zip(starts, ends, strict=True)]
    return (124 if status == -signal.SIGKILL else status), steps


def docker(*args: str, timeout: float = 120, stdin: str | None = None) -> Result:
    """`docker ARGS`."""
    return run([DOCKER, *args], timeout=timeout, stdin=stdin)


def inspect(kind: str, name: str) -> dict[str, Any] | None:
    """`docker KIND inspect NAME` as data, or None when there is no such object."""
    result = docker(kind, "inspect", name)
    if not result.ok:
        return None
    data = json.loads(result.out)
    return data[0] if data else None


def legacy_build_env() -> dict[str, str]:
    """The environment for `docker build` with the classic builder (BuildKit would pull its frontend image)."""
    return {**os.environ, "DOCKER_BUILDKIT": "0"}


def wait_for(predicate: Any, timeout_s: float) -> bool:
    """Poll predicate() until it is true or timeout_s passes; returns its last verdict."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def daemon_answers() -> bool:
    """True when a docker daemon answers on the default socket."""
    return docker("info", "--format", "{{.ServerVersion}}", timeout=20).ok


class Dockerd:
    """A dockerd started by this run (only when none was running); stop() ends that one process."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90) -> str:
        """Start dockerd and wait until it answers; returns a line for the report."""
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.process = process
        answered = wait_for(lambda: process.poll() is not None or daemon_answers(), timeout_s)
        if process.poll() is not None:
            raise RuntimeError(f"dockerd exited with status {process.returncode}; see {self.log_path}")
        if not answered:
            raise RuntimeError(f"dockerd did not answer within {timeout_s:.0f} s; see {self.log_path}")
        return f"started dockerd (pid {self.process.pid}, log {self.log_path})"

    def stop(self, timeout_s: float = 60) -> tuple[bool, str]:
        """SIGTERM the dockerd this run started and wait for it to exit; (clean, a line for the report)."""
        if self.process is None:
            return True, "not started by this run; left running"
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait(timeout=30)
            return False, f"dockerd (pid {self.process.pid}) ignored SIGTERM for {timeout_s:.0f} s; killed ({status})"
        return status == 0, f"stopped the dockerd this run started (pid {self.process.pid}, exit status {status})"
