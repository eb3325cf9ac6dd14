"""`make bench`: tandem against a naive FastAPI + ONNX Runtime server and the in-process ceiling, in one run.

Builds the MNIST-shaped MLP and CNN, starts each server (pinned to one core, then unpinned), drives it
with wrk at each level back to back, and prints one table with the ratios. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from benchmarks import ceiling, wrk
from benchmarks.bodies import WORKLOADS, Body
from benchmarks.cpu import CpuWatch, wait_quiet
from benchmarks.models import CNN, MLP, BenchModel, build_artifacts, write_repository
from benchmarks.probe import Probe
from benchmarks.report import Row, format_row, median_rows, render
from benchmarks.scenarios import DEFAULT_SCENARIOS, SCENARIOS, Group, Level, Options, parse_variant, plan, schedule
from benchmarks.servers import Running, Setup, cpu_set, running, setups


class Disturbed(Protocol):
    """A measurement that knows how much CPU other processes took meanwhile."""

    @property
    def other_cores(self) -> float:
        """Cores' worth of CPU."""
        ...


T = TypeVar("T", bound=Disturbed)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; --quick shortens every duration for a smoke run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--duration", type=int, default=20, help="seconds measured per level (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of discarded load before each level")
    parser.add_argument("--quick", action="store_true", help="3 s per level, 1 s warm-up, 1 s per ceiling")
    parser.add_argument("--setups", default="one-core,all-core", help="one-core (pinned) and/or all-core")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS), help=f"of {', '.join(SCENARIOS)}")
    parser.add_argument("--mlp-connections", default="1,16,64", help="wrk connections for the MLP JSON levels")
    parser.add_argument("--binary-connections", type=int, default=8, help="wrk connections for 64-row binary")
    parser.add_argument("--variant", action="append", default=[], help="NAME=FLAGS: tandem with extra serve flags")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0, help="seconds per in-process measurement")
    parser.add_argument("--max-other", type=float, default=0.2, help="cores other processes may take (shared hosts)")
    parser.add_argument("--quiet-wait", type=float, default=20.0, help="seconds to wait for that before a level")
    parser.add_argument("--rounds", type=int, default=1, help="measure every level N times, servers in turn; median")
    parser.add_argument("--retries", type=int, default=1, help="remeasure a level disturbed beyond --max-other")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/results"), help="models, logs, results")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.ceiling_seconds = 3, 1, 1.0
    return args


def chosen_setups(text: str) -> list[Setup]:
    """The named setups, in order; one-core needs two CPUs."""
    available = setups()
    names = [name.strip() for name in text.split(",") if name.strip()]
    missing = [name for name in names if name not in available]
    if missing:
        raise SystemExit(f"setup(s) {missing} not available here; choose from {sorted(available)} (one-core: 2+ CPUs)")
    return [available[name] for name in names]


def write_bodies(directory: Path) -> dict[tuple[str, str], tuple[Body, Path]]:
    """Every (model, workload) body, written where wrk's Lua script reads it."""
    found = {}
    for model in (MLP, CNN):
        for workload, make in WORKLOADS.items():
            body = make(model)
            found[(model.name, workload)] = (body, body.write(directory, f"{model.name}-{workload}"))
    return found


class Bench:
    """One run: the settings, the bodies, and everything measured so far."""

    def __init__(self, args: argparse.Namespace, store: Path) -> None:
        self.args = args
        self.store = store
        self.bodies = write_bodies(args.workdir / "bodies")
        self.rows: list[Row] = []  # one per server and level: the median round
        self.every_round: list[Row] = []
        self.ceilings: list[ceiling.Ceiling] = []

    def measure_ceilings(self, setup: Setup) -> None:
        """In-process session.run at batch 1 and 64 for each model, on the server's CPUs."""
        for model in (MLP, CNN):
            artifact = self.store / model.name / "1" / "model.onnx"
            for rows in (1, 64):
                measure = functools.partial(self.one_ceiling, setup, model, artifact, rows)
                found = self.quietly(setup, os.getpid(), measure)
                self.ceilings.append(found)
                print(f"ceiling {setup.name} {model.name} batch {rows}: {found.rows_per_s:.0f} rows/s", flush=True)

    def one_ceiling(self, setup: Setup, model: BenchModel, artifact: Path, rows: int) -> ceiling.Ceiling:
        """One timed in-process measurement and the CPU others took meanwhile."""
        with CpuWatch(cpu_set(setup.server_cpus), os.getpid(), False) as watch:
            found = ceiling.measure(setup.name, model, artifact, rows, self.args.ceiling_seconds, setup.server_cpus)
        return dataclasses.replace(found, other_cores=watch.other_cores)

    def quietly(self, setup: Setup, pid: int, measure: Callable[[], T]) -> T:
        """Measure; on a busy shared machine wait for quiet first and retry, keeping the least disturbed result."""
        server_cpus = cpu_set(setup.server_cpus)
        shared = pid != os.getpid() and not server_cpus.isdisjoint(cpu_set(setup.client_cpus))
        best: T | None = None
        for attempt in range(1 + max(0, self.args.retries)):
            if self.args.quiet_wait > 0:
                wait_quiet(server_cpus, pid, shared, self.args.max_other, self.args.quiet_wait)
            found = measure()
            if best is None or found.other_cores < best.other_cores:
                best = found
            if found.other_cores <= self.args.max_other:
                return found
            if attempt < self.args.retries:
                print(f"  other processes took {found.other_cores:.2f} cores meanwhile: measuring again", flush=True)
        assert best is not None
        return best

    def measure_setup(self, setup: Setup, groups: list[Group]) -> None:
        """Start every server, measure level by level (all servers at a level back to back), then the ceilings."""
        with contextlib.ExitStack() as stack:
            servers = [stack.enter_context(self.start(setup, group)) for group in groups]
            stack.enter_context(ceiling.pinned(setup.client_cpus))
            rows: list[Row] = []
            rounds = max(1, self.args.rounds)
            for turn in range(rounds):
                if rounds > 1:
                    print(f"round {turn + 1} of {rounds}", flush=True)
                for level, members in schedule(groups, turn):
                    for group in members:
                        rows.append(self.measure_level(setup, group, level, servers[groups.index(group)]))
                        print(format_row(rows[-1], ""), flush=True)
            self.measure_ceilings(setup)  # the servers are idle now
        self.every_round += rows
        rows = median_rows(rows)
        rows.sort(key=lambda row: next(i for i, g in enumerate(groups) if g.server == row.server))
        self.rows += rows

    def start(self, setup: Setup, group: Group) -> contextlib.AbstractContextManager[Running]:
        """The group's server on a repository of its own, logging beside the results."""
        slug = group.server.name.replace(" ", "_").replace(",", "")
        repository = write_repository(self.store, self.args.workdir / "repos" / slug, group.server.overrides)
        log = self.args.workdir / "logs" / f"{setup.name}-{slug}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        return running(group.server, setup, repository, log)

    def measure_level(self, setup: Setup, group: Group, level: Level, server: Running) -> Row:
        """One level, remeasured when other processes disturbed it."""
        return self.quietly(setup, server.pid, functools.partial(self.measure_once, setup, group, level, server))

    def measure_once(self, setup: Setup, group: Group, level: Level, server: Running) -> Row:
        """Warm up, then one measured wrk run (with the probe alongside when the level asks for it)."""
        body, path = self.bodies[(level.model.name, level.workload)]
        url = server.base + body.path
        if self.args.warmup > 0:
            wrk.run(url, path, body.headers, level.connections, self.args.warmup, setup.client_cpus)
        seconds = self.args.duration if self.args.quick or not level.seconds else level.seconds
        server_cpus = cpu_set(setup.server_cpus)
        shared = not server_cpus.isdisjoint(cpu_set(setup.client_cpus))
        with contextlib.ExitStack() as stack:
            watch = stack.enter_context(CpuWatch(server_cpus, server.pid, shared))
            probe = stack.enter_context(Probe(server.base, body)) if level.probe else None
            result = wrk.run(url, path, body.headers, level.connections, seconds, setup.client_cpus)
        probed = probe.result if probe else None
        return Row(setup.name, group.server, level, result, body.rows, probed, watch.other_cores, watch.server_seconds)

    def save(self, command: str) -> Path:
        """Write every number of the run as JSON beside the logs."""
        record: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": command,
            "cpus": os.cpu_count(),
            "ceilings": [
                dataclasses.asdict(c) | {"rows_per_s": c.rows_per_s, "rows_per_cpu_s": c.rows_per_cpu_s}
                for c in self.ceilings
            ],
            "levels": [_row_record(row) for row in self.rows],
            "rounds": [_row_record(row) for row in self.every_round] if self.args.rounds > 1 else [],
        }
        path: Path = self.args.workdir / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        return path


def _row_record(row: Row) -> dict[str, Any]:
    level = row.level
    return {
        "setup": row.setup,
        "server": row.server.name,
        "scenario": level.scenario,
        "model": level.model.name,
        "workload": level.workload,
        "connections": level.connections,
        "rps": row.result.rps,
        "rows_per_s": row.rows_per_s,
        "other_cores": row.other_cores,
        "server_cpu_s": row.server_cpu_s,
        "rows_per_cpu_s": row.rows_per_cpu_s,
        "wrk": dataclasses.asdict(row.result),
        "probe": row.probe.latencies if row.probe else None,
    }


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through `running`, which stops the server


def main(argv: list[str] | None = None) -> int:
    """Run every setup and scenario asked for and print the table."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    try:
        options = Options(
            mlp_connections=tuple(int(c) for c in args.mlp_connections.split(",")),
            binary_connections=args.binary_connections,
            variants=tuple(parse_variant(text) for text in args.variant),
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    chosen = chosen_setups(args.setups)
    groups = plan(names, options)
    wrk.ensure_wrk()
    args.workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, build_artifacts(args.workdir / "artifacts"))
    levels = sum(len(group.levels) for group in groups) * len(chosen)
    print(f"{levels} levels, about {levels * (args.duration + args.warmup) / 60:.0f} min of load", flush=True)
    for setup in chosen:
        bench.measure_setup(setup, groups)
    print()
    print(render(bench.rows, bench.ceilings, bench.every_round))
    print(f"\nresults: {bench.save(' '.join(['python -m benchmarks.run', *(argv or sys.argv[1:])]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
