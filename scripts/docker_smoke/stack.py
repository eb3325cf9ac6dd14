"""Bring the compose stack up with Compose 1.29, check it as a user would meet it, and tear it down."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from scripts.docker_smoke.docker import COMPOSE, Result, docker, inspect, run, wait_for
from scripts.docker_smoke.probes import call
from scripts.docker_smoke.report import Report

HEALTHY_TIMEOUT_S = 300
WRITE_PROBE = """
import errno, sys
for path in sys.argv[1:]:
    try:
        open(path, "w").close()
    except OSError as exc:
        print(path, errno.errorcode.get(exc.errno, exc.errno))
    else:
        print(path, "writable")
"""


class Stack:
    """One compose project made from the generated file, run from the repository root."""

    def __init__(self, root: Path, file: Path, project: str) -> None:
        self.root = root
        self.file = file
        self.project = project
        # Unset MODELS_DIR: the stack must serve the image's examples on its own, as after a fresh clone.
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("MODELS_DIR", "COMPOSE_FILE", "COMPOSE_PROJECT_NAME")
        }

    def compose(self, *args: str, timeout: float = 300) -> Result:
        """`docker-compose -p PROJECT --project-directory ROOT -f FILE ARGS`."""
        base = [
            COMPOSE,
            "--ansi",
            "never",
            "-p",
            self.project,
            "--project-directory",
            str(self.root),
            "-f",
            str(self.file),
        ]
        return run([*base, *args], timeout=timeout, env=self.env)

    def container(self, service: str) -> str:
        """The container id of a service, or "" when it has none."""
        return self.compose("ps", "-q", service, timeout=60).out.strip()

    def up(self, report: Report) -> None:
        """Validate the file with Compose itself, then start the stack detached."""
        config = self.compose("config", "-q", timeout=60)
        report.require(
            "Compose 1.29 reads the generated CPU stack", config.ok, str(self.file) if config.ok else config.tail()
        )
        started = self.compose("up", "-d", "--no-build", timeout=600)
        report.require("docker-compose up -d", started.ok, started.tail(3) if not started.ok else "tandem, prometheus")

    def down(self, report: Report) -> None:
        """Remove the project's containers, network and volumes, and check that nothing is left."""
        result = self.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout=300)
        label = f"label=com.docker.compose.project={self.project}"
        left = (
            docker("ps", "-aq", "--filter", label).out.split()
            + docker("volume", "ls", "-q", "--filter", label).out.split()
        )
        report.check(
            "teardown: docker-compose down --volumes",
            result.ok and not left,
            f"{len(left)} objects left" if left else "nothing left",
        )


def _state(container: str) -> dict[str, Any]:
    return (inspect("container", container) or {}).get("State") or {}


def check_healthy(report: Report, stack: Stack) -> str:
    """tandem turns healthy through its compose HEALTHCHECK on /v2/health/ready; returns its container id."""
    container = stack.container("tandem")
    report.require("tandem container created", bool(container), container[:12] or "no container")
    test = ((inspect("container", container) or {}).get("Config") or {}).get("Healthcheck", {}).get("Test", [])
    started = time.monotonic()

    def settled() -> bool:
        return _state(container).get("Health", {}).get("Status") in ("healthy", "unhealthy") or not _state(
            container
        ).get("Running")

    wait_for(settled, HEALTHY_TIMEOUT_S)
    status = _state(container).get("Health", {}).get("Status", "none")
    probe = "/v2/health/ready" if any("/v2/health/ready" in part for part in test) else f"test {test}"
    report.require(
        "tandem healthy through its HEALTHCHECK",
        status == "healthy" and probe == "/v2/health/ready",
        f"{status} after {time.monotonic() - started:.0f} s, probing {probe}",
    )
    return container


def check_models_served(report: Report, container: str, port: int, project: str) -> None:
    """The unset-MODELS_DIR default mounts the named volume seeded with the image's examples, read-only."""
    mounts = (inspect("container", container) or {}).get("Mounts") or []
    models: dict[str, Any] = next((m for m in mounts if m.get("Destination") == "/models"), {})
    report.check(
        "default /models mount is the named volume seeded from the image",
        models.get("Type") == "volume" and models.get("Name") == f"{project}_models",
        f"{models.get('Type')} {models.get('Name') or models.get('Source')}",
    )
    status, text = call(port, "POST", "/v2/repository/index", "{}", {"Content-Type": "application/json"})
    entries = json.loads(text) if status == 200 else []
    ready = sorted(e["name"] for e in entries if e.get("state") == "READY")
    report.check("example models served (no MODELS_DIR)", {"digits_mlp", "digits_cnn"} <= set(ready), f"READY: {ready}")


def check_read_only(report: Report, container: str) -> None:
    """Root filesystem and model mount refuse writes even from uid 0 (EROFS, not a permission error)."""
    data = inspect("container", container) or {}
    rootfs_ro = (data.get("HostConfig") or {}).get("ReadonlyRootfs") is True
    models_rw = next((m.get("RW") for m in data.get("Mounts") or [] if m.get("Destination") == "/models"), None)
    probe = docker("exec", "-u", "0", container, "python", "-c", WRITE_PROBE, "/smoke-probe", "/models/smoke-probe")
    verdict = dict(line.split(" ", 1) for line in probe.out.splitlines() if " " in line)
    report.check(
        "root filesystem read-only",
        rootfs_ro and verdict.get("/smoke-probe") == "EROFS",
        f"ReadonlyRootfs={rootfs_ro}, write to / as uid 0: {verdict.get('/smoke-probe', probe.tail(2))}",
    )
    report.check(
        "model mount read-only",
        models_rw is False and verdict.get("/models/smoke-probe") == "EROFS",
        f"RW={models_rw}, write to /models as uid 0: {verdict.get('/models/smoke-probe', probe.tail(2))}",
    )


def check_sigterm(report: Report, container: str, grace_s: int) -> None:
    """docker stop sends SIGTERM; the server drains and the container exits 0 within the grace period."""
    signal_name = ((inspect("container", container) or {}).get("Config") or {}).get("StopSignal", "SIGTERM")
    started = time.monotonic()
    stopped = docker("stop", "--time", str(grace_s), container, timeout=grace_s + 60)
    took = time.monotonic() - started
    state = _state(container)
    logs = docker("logs", container, timeout=60)
    drained = "Application shutdown complete" in logs.out + logs.err
    report.check(
        "docker stop (SIGTERM) drains and exits 0",
        stopped.ok and state.get("ExitCode") == 0 and drained and not state.get("OOMKilled"),
        f"{signal_name}, exit code {state.get('ExitCode')} after {took:.1f} s (grace {grace_s} s), "
        f"{'lifespan shutdown completed' if drained else 'no shutdown line in the logs'}",
    )
