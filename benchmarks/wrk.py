"""wrk, the native load generator: install it when missing, run it with post.lua, parse what it prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).with_name("post.lua")
MARKER = "WRK_RESULT "


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured; latencies cover every response, whatever its status."""

    duration_us: int
    requests: int
    bytes: int
    status_errors: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    mean_us: float
    max_us: int
    p50_us: int
    p90_us: int
    p99_us: int
    p999_us: int

    @property
    def seconds(self) -> float:
        """Length of the measured window."""
        return self.duration_us / 1e6

    @property
    def ok(self) -> int:
        """Responses with a status below 400."""
        return self.requests - self.status_errors

    @property
    def rps(self) -> float:
        """Successful responses per second."""
        return self.ok / self.seconds if self.duration_us else 0.0

    @property
    def socket_errors(self) -> int:
        """Connect, read and write errors and timeouts together."""
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts


def parse(output: str) -> WrkResult:
    """The WRK_RESULT line post.lua's done() hook prints; ValueError when wrk printed none."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            values = json.loads(line[len(MARKER) :])
            return WrkResult(**values)
    raise ValueError(f"no {MARKER.strip()} line in wrk's output: {output.strip()[-500:]!r}")


def command(
    url: str, body_file: Path, headers: dict[str, str], connections: int, seconds: int, cpus: str | None
) -> list[str]:
    """The wrk command line: one thread per client CPU (at most one per connection), pinned when cpus is given."""
    client_cpus = len(cpus.split(",")) if cpus else (os.cpu_count() or 1)
    threads = max(1, min(connections, client_cpus))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA_SCRIPT)]
    cmd += [url, "--", str(body_file), *(f"{name}:{value}" for name, value in headers.items())]
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def run(
    url: str, body_file: Path, headers: dict[str, str], connections: int, seconds: int, cpus: str | None
) -> WrkResult:
    """Run wrk once against url and return its summary."""
    cmd = command(url, body_file, headers, connections, seconds, cpus)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return parse(done.stdout)


def ensure_wrk() -> None:
    """Install wrk from the distribution's packages when it is missing (needs root and apt-get)."""
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit("wrk is not installed: install it (Debian/Ubuntu: apt-get install wrk) and rerun")
    print("installing wrk with apt-get...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, stdout=subprocess.DEVNULL)
    if not shutil.which("wrk"):
        raise SystemExit("apt-get ran but wrk is still not on PATH")
