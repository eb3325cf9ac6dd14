"""What the benchmark measures: scenarios expand into server starts, each with levels run back to back.

To add a scenario, write a function returning `Group`s and add it to SCENARIOS; to measure tandem with
other flags, pass `--variant NAME=FLAGS` (it joins every scenario tandem runs in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.models import CNN, MLP, BenchModel
from benchmarks.servers import NAIVE, TANDEM, ServerSpec


@dataclass(frozen=True)
class Level:
    """One measurement: a model answering one workload at one number of closed-loop connections."""

    scenario: str
    model: BenchModel
    workload: str
    connections: int
    seconds: int | None = None  # None: the run's --duration
    probe: bool = False  # also time single requests from a separate low-rate client meanwhile


@dataclass(frozen=True)
class Group:
    """One server start and the levels it answers before it is stopped."""

    server: ServerSpec
    levels: list[Level] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    """Knobs the command line sets for every scenario."""

    mlp_connections: tuple[int, ...] = (1, 16, 64)
    binary_connections: int = 8
    variants: tuple[ServerSpec, ...] = ()


def json_levels(options: Options) -> list[Group]:
    """One 784-value sample per JSON request: MLP at each level (V2 and TF Serving), CNN at 64; naive too."""
    levels = [Level("json", MLP, "v2-json", c) for c in options.mlp_connections]
    levels += [Level("json", MLP, "tfs-json", 64), Level("json", CNN, "v2-json", 64)]
    return [Group(server, levels) for server in (TANDEM, *options.variants, NAIVE)]


def binary_levels(options: Options) -> list[Group]:
    """64-row V2 binary requests to the MLP, against the in-process ceiling at batch 64 (naive speaks no binary)."""
    level = Level("binary", MLP, "v2-binary-64", options.binary_connections)
    return [Group(server, [level]) for server in (TANDEM, *options.variants)]


OVERLOAD_QUEUE = 32


def overload_levels(options: Options) -> list[Group]:
    """CNN with max_queue_size 32: 64 clients, then 256 for 15 s while a probe times single requests."""
    server = ServerSpec(
        f"tandem, queue {OVERLOAD_QUEUE}", "tandem", overrides={CNN.name: {"max_queue_size": OVERLOAD_QUEUE}}
    )
    levels = [Level("overload", CNN, "v2-json", 64), Level("overload", CNN, "v2-json", 256, seconds=15, probe=True)]
    return [Group(server, levels)]


SCENARIOS: dict[str, Callable[[Options], list[Group]]] = {
    "json": json_levels,
    "binary": binary_levels,
    "overload": overload_levels,
}
DEFAULT_SCENARIOS = ("json", "binary")


def plan(names: list[str], options: Options) -> list[Group]:
    """The groups of the named scenarios, one server start per distinct server, in first-seen order."""
    merged: dict[ServerSpec, Group] = {}
    for name in names:
        for group in SCENARIOS[name](options):
            merged.setdefault(group.server, Group(group.server)).levels.extend(group.levels)
    return list(merged.values())


def schedule(groups: list[Group], turn: int = 0) -> list[tuple[Level, list[Group]]]:
    """Level-major order: each level once, then every server that answers it, so their numbers lie seconds apart.

    Odd rounds (`turn`) take a level's servers in reverse order, so that neither always runs right after the other:
    on a shared host whichever goes second may meet what the first left behind (a throttled CPU, a busy neighbour).
    """
    order: dict[Level, list[Group]] = {}
    for group in groups:
        for level in group.levels:
            order.setdefault(level, []).append(group)
    return [(level, members[::-1] if turn % 2 else members) for level, members in order.items()]


def parse_variant(text: str) -> ServerSpec:
    """`NAME=FLAGS`, e.g. `access-log=--access-log`: tandem started with extra serve flags."""
    name, sep, flags = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--variant {text!r}: expected NAME=FLAGS, e.g. workers2=--workers 2")
    return ServerSpec(f"tandem {name.strip()}", "tandem", tuple(flags.split()))
