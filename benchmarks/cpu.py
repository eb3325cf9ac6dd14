"""How much CPU other processes took from the benchmark's CPUs while a level ran: a shared machine shows here."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def busy_ticks(cpus: set[int], stat: str | None = None) -> int:
    """user + nice + system + steal ticks of the given CPUs since boot (irq time is the kernel's, not a task's)."""
    text = stat if stat is not None else (PROC / "stat").read_text()
    total = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, steal = int(fields[0]), int(fields[1]), int(fields[2]), int(fields[7])
            total += user + nice + system + steal
    return total


def tree_seconds(root: int) -> float:
    """CPU seconds (user + system, all threads) of a process and every live descendant."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        parents[int(entry.name)] = int(rest[1])
        times[int(entry.name)] = int(rest[11]) + int(rest[12])
    tree, changed = {root}, True
    while changed:
        grown = tree | {pid for pid, parent in parents.items() if parent in tree}
        changed, tree = grown != tree, grown
    return sum(times.get(pid, 0) for pid in tree) / TICKS


def _own_seconds() -> float:
    self_usage, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_usage.ru_utime + self_usage.ru_stime + children.ru_utime + children.ru_stime


class CpuWatch:
    """Over a block: the server's CPU seconds, and the cores' worth others used on `cpus` (not wrk, not us)."""

    def __init__(self, cpus: set[int], server_pid: int, client_shares_cpus: bool) -> None:
        self._cpus = cpus
        self._server = server_pid
        self._client = client_shares_cpus
        self.other_cores = 0.0
        self.server_seconds = 0.0

    def __enter__(self) -> CpuWatch:
        self._start = (time.monotonic(), busy_ticks(self._cpus), tree_seconds(self._server), _own_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, ticks, server, own = self._start
        elapsed = time.monotonic() - wall
        self.server_seconds = tree_seconds(self._server) - server
        used = (busy_ticks(self._cpus) - ticks) / TICKS - self.server_seconds
        if self._client:  # wrk (a waited child) and this process ran on the same CPUs
            used -= _own_seconds() - own
        self.other_cores = max(0.0, used / elapsed) if elapsed > 0 else 0.0


def wait_quiet(cpus: set[int], server_pid: int, shared: bool, max_other: float, timeout_s: float) -> float:
    """Sample 1 s windows until other processes use at most max_other cores of cpus, or timeout_s passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        with CpuWatch(cpus, server_pid, shared) as watch:
            time.sleep(1.0)
        if watch.other_cores <= max_other or time.monotonic() >= deadline:
            return watch.other_cores
