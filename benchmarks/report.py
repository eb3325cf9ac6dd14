"""The results table: every level's numbers and its ratio to the naive server or the in-process ceiling.

Each ratio comes twice: from wall-clock throughput, and per CPU-second the server (or the ceiling's
thread) spent. On a quiet machine the two agree where the server is CPU-bound; on a shared one the
second still compares the work done per unit of CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from benchmarks.ceiling import Ceiling
from benchmarks.probe import ProbeResult
from benchmarks.scenarios import Level
from benchmarks.servers import TANDEM, ServerSpec
from benchmarks.wrk import WrkResult

HEADER = (
    f"{'setup':<9} {'server':<18} {'model':<10} {'workload':<13} {'c':>4} {'req/s':>8} {'rows/s':>9} "
    f"{'p50 ms':>7} {'p99 ms':>7} {'>=400':>6} {'sock.err':>8} {'srv cpu':>7} {'other':>5}  ratio"
)


@dataclass(frozen=True)
class Row:
    """One measured level."""

    setup: str
    server: ServerSpec
    level: Level
    result: WrkResult
    rows: int
    probe: ProbeResult | None = None
    other_cores: float = 0.0  # CPU other processes took from the server's CPUs meanwhile
    server_cpu_s: float = 0.0  # CPU seconds the server's processes used meanwhile

    @property
    def rows_per_s(self) -> float:
        """Rows served per second by successful requests."""
        return self.result.rps * self.rows

    @property
    def server_cores(self) -> float:
        """Cores' worth of CPU the server used."""
        return self.server_cpu_s / self.result.seconds if self.result.duration_us else 0.0

    @property
    def rows_per_cpu_s(self) -> float:
        """Rows served per CPU-second of the server."""
        return self.result.ok * self.rows / self.server_cpu_s if self.server_cpu_s > 0 else math.nan

    def same_level(self, other: Row) -> bool:
        """Same setup, model, workload and connections."""
        a, b = self.level, other.level
        return (self.setup, a.model, a.workload, a.connections) == (other.setup, b.model, b.workload, b.connections)


@dataclass(frozen=True)
class Ratio:
    """A ratio from wall-clock throughput and the same from work per CPU-second."""

    wall: float
    per_cpu: float


@dataclass(frozen=True)
class Target:
    """One acceptance target of the request-path work: a measured value against its goal."""

    label: str
    value: float
    goal: float
    at_least: bool
    per_cpu: float = math.nan

    @property
    def met(self) -> bool:
        """Whether the (wall-clock) value reaches the goal."""
        return self.value >= self.goal if self.at_least else self.value <= self.goal


def naive_ratio(row: Row, rows: list[Row]) -> Ratio | None:
    """This tandem row over the naive server at the same level, when both ran."""
    if row.server.kind != "tandem":
        return None
    for other in rows:
        if other.server.kind == "naive" and other.same_level(row) and other.result.rps > 0:
            return Ratio(row.result.rps / other.result.rps, row.rows_per_cpu_s / other.rows_per_cpu_s)
    return None


def variant_ratio(row: Row, rows: list[Row]) -> Ratio | None:
    """A tandem variant (e.g. `tandem workers2`) over plain tandem at the same level, when both ran."""
    if row.server.kind != "tandem" or row.server == TANDEM:
        return None
    for other in rows:
        if other.server == TANDEM and other.same_level(row) and other.result.rps > 0:
            return Ratio(row.result.rps / other.result.rps, row.rows_per_cpu_s / other.rows_per_cpu_s)
    return None


def median_rows(rows: list[Row]) -> list[Row]:
    """One row per server and level, the measured round with the median throughput, in first-seen order.

    With --rounds, every level is measured several times, the servers in turn each round; the median round
    stands for the level, so a ratio between servers is not decided by one round the machine slowed.
    """
    rounds: dict[tuple[object, ...], list[Row]] = {}
    for row in rows:
        key = (row.setup, row.server, row.level)
        rounds.setdefault(key, []).append(row)
    return [sorted(found, key=lambda r: r.result.rps)[(len(found) - 1) // 2] for found in rounds.values()]


def paired_ratios(every_round: list[Row]) -> list[tuple[Row, list[float]]]:
    """For each tandem variant and level: its throughput over plain tandem's in the same round, round by round.

    The two ran one after the other within each round, so a slow spell of the machine that spans a round
    touches both: a ratio per round is steadier than a ratio of medians taken from different rounds.
    """
    seen: dict[tuple[str, ServerSpec, Level], list[Row]] = {}
    for row in every_round:
        seen.setdefault((row.setup, row.server, row.level), []).append(row)
    paired: list[tuple[Row, list[float]]] = []
    for (setup, server, level), found in seen.items():
        plain = seen.get((setup, TANDEM, level), [])
        if server.kind == "tandem" and server != TANDEM and len(plain) > 1:
            ratios = [a.result.rps / b.result.rps for a, b in zip(found, plain, strict=False) if b.result.rps > 0]
            paired.append((found[0], ratios))
    return paired


def lower_median(values: list[float]) -> float:
    """The middle value; of two middle ones the lower (a measured value, never an average)."""
    return sorted(values)[(len(values) - 1) // 2]


def ceiling_ratio(row: Row, ceilings: list[Ceiling]) -> Ratio | None:
    """Binary rows/s over the in-process ceiling at the same batch size in the same setup."""
    if not row.level.workload.startswith("v2-binary"):
        return None
    for ceiling in ceilings:
        if (ceiling.setup, ceiling.model, ceiling.rows) == (row.setup, row.level.model.name, row.rows):
            return Ratio(row.rows_per_s / ceiling.rows_per_s, row.rows_per_cpu_s / ceiling.rows_per_cpu_s)
    return None


def goodput_ratio(row: Row, rows: list[Row]) -> float | None:
    """For a probed overload level: its goodput over the same server's 64-client throughput."""
    if not row.level.probe:
        return None
    for other in rows:
        same_server = (other.setup, other.server, other.level.model) == (row.setup, row.server, row.level.model)
        if same_server and other.level.connections == 64 and other.result.rps > 0:
            return row.result.rps / other.result.rps
    return None


def ratio_text(row: Row, rows: list[Row], ceilings: list[Ceiling]) -> str:
    """The ratios that apply to a row, as text."""
    parts = []
    if ratio := naive_ratio(row, rows):
        parts.append(f"{ratio.wall:.2f}x naive (per cpu-s {ratio.per_cpu:.2f}x)")
    if ratio := variant_ratio(row, rows):
        parts.append(f"{ratio.wall:.2f}x tandem (per cpu-s {ratio.per_cpu:.2f}x)")
    if ratio := ceiling_ratio(row, ceilings):
        parts.append(f"{ratio.wall:.2f} of ceiling (per cpu-s {ratio.per_cpu:.2f})")
    if (goodput := goodput_ratio(row, rows)) is not None:
        parts.append(f"goodput {goodput:.2f} of c=64")
    return ", ".join(parts)


def format_row(row: Row, ratio: str) -> str:
    """One table line."""
    r = row.result
    return (
        f"{row.setup:<9} {row.server.name:<18} {row.level.model.name:<10} {row.level.workload:<13} "
        f"{row.level.connections:>4} {r.rps:>8.0f} {row.rows_per_s:>9.0f} {r.p50_us / 1000:>7.2f} "
        f"{r.p99_us / 1000:>7.2f} {r.status_errors:>6} {r.socket_errors:>8} {row.server_cores:>7.2f} "
        f"{row.other_cores:>5.2f}  {ratio}"
    )


def targets(rows: list[Row], ceilings: list[Ceiling]) -> list[Target]:
    """The acceptance targets of issue #15 that this run measured (one core, tandem itself)."""
    found: list[Target] = []

    def pick(model: str, workload: str, connections: int) -> Row | None:
        wanted = ("one-core", "tandem", "json", model, workload, connections)
        for row in rows:
            level = row.level
            key = (row.setup, row.server.name, level.scenario, level.model.name, level.workload, level.connections)
            if key == wanted:
                return row
        return None

    for label, (model, c), goal in (("MLP c=1", ("mnist_mlp", 1), 1.5), ("MLP c=64", ("mnist_mlp", 64), 2.6)):
        if (row := pick(model, "v2-json", c)) and (ratio := naive_ratio(row, rows)):
            found.append(Target(f"one-core {label} JSON, tandem / naive", ratio.wall, goal, True, ratio.per_cpu))
    if row := pick("mnist_mlp", "v2-json", 64):
        found.append(Target("one-core MLP c=64 JSON, tandem p99 ms", row.result.p99_us / 1000, 25.0, False))
    if (row := pick("mnist_cnn", "v2-json", 64)) and (ratio := naive_ratio(row, rows)):
        found.append(Target("one-core CNN c=64 JSON, tandem / naive", ratio.wall, 2.6, True, ratio.per_cpu))
    for row in rows:
        if (row.setup, row.server.name) == ("one-core", "tandem") and (ratio := ceiling_ratio(row, ceilings)):
            found.append(Target("one-core MLP 64-row binary, rows/s / ceiling", ratio.wall, 0.7, True, ratio.per_cpu))
    return found


def render(rows: list[Row], ceilings: list[Ceiling], every_round: list[Row] | None = None) -> str:
    """The whole report: ceilings, the table, probe lines, per-round variant ratios, then the targets."""
    lines = ["in-process ONNX Runtime, one intra-op thread (the ceiling):"]
    for c in ceilings:
        lines.append(
            f"  {c.setup:<9} {c.model:<10} batch {c.rows:<3} {c.rows_per_s:>9.0f} rows/s {c.us_per_call:>8.1f} us/call"
            f"  {c.rows_per_cpu_s:>9.0f} rows/cpu-s  other {c.other_cores:.2f}"
        )
    lines += ["", HEADER]
    lines += [format_row(row, ratio_text(row, rows, ceilings)) for row in rows]
    for row in rows:
        if row.probe is not None:
            lines.append(f"probe during {row.setup} {row.server.name} c={row.level.connections}: {row.probe.summary()}")
    for row, ratios in paired_ratios(every_round or []):
        level = row.level
        rounds = " ".join(f"{r:.2f}" for r in ratios)
        lines.append(
            f"{row.server.name} / tandem, {row.setup} {level.model.name} {level.workload} c={level.connections},"
            f" round by round: {rounds}; median {lower_median(ratios):.2f}x"
        )
    found = targets(rows, ceilings)
    if found:
        lines += ["", f"{'target':<48} {'measured':>9} {'per cpu-s':>9} {'goal':>7}  met"]
        for target in found:
            goal = f"{'>=' if target.at_least else '<='}{target.goal:g}"
            per_cpu = "" if math.isnan(target.per_cpu) else f"{target.per_cpu:.2f}"
            met = "yes" if target.met else "NO"
            lines.append(f"{target.label:<48} {target.value:>9.2f} {per_cpu:>9} {goal:>7}  {met}")
    return "\n".join(lines)
