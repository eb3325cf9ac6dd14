"""The benchmark's plan and ratios: which servers run which levels, and how rows compare."""

from __future__ import annotations

import math

import pytest

from benchmarks.ceiling import Ceiling
from benchmarks.models import CNN, MLP
from benchmarks.report import Row, median_rows, paired_ratios, render, targets
from benchmarks.scenarios import Level, Options, parse_variant, plan, schedule
from benchmarks.servers import NAIVE, TANDEM, ServerSpec
from benchmarks.wrk import WrkResult


def result(rps: float, p99_ms: float = 5.0, errors: int = 0) -> WrkResult:
    """A 10 s wrk summary answering rps successful requests per second."""
    requests = int(rps * 10) + errors
    return WrkResult(10_000_000, requests, 0, errors, 0, 0, 0, 0, 1000.0, 9000, 1000, 2000, int(p99_ms * 1000), 8000)


def test_plan_starts_each_server_once_with_its_levels_in_order() -> None:
    groups = plan(["json", "binary"], Options(variants=(parse_variant("log=--access-log --x 2"),)))
    assert [g.server.name for g in groups] == ["tandem", "tandem log", "naive"]
    tandem = [(lv.model.name, lv.workload, lv.connections) for lv in groups[0].levels]
    assert tandem == [
        ("mnist_mlp", "v2-json", 1),
        ("mnist_mlp", "v2-json", 16),
        ("mnist_mlp", "v2-json", 64),
        ("mnist_mlp", "tfs-json", 64),
        ("mnist_cnn", "v2-json", 64),
        ("mnist_mlp", "v2-binary-64", 8),
    ]
    assert groups[1].server.flags == ("--access-log", "--x", "2")
    assert all(lv.workload != "v2-binary-64" for lv in groups[2].levels)


def test_schedule_runs_every_server_at_a_level_before_the_next_level() -> None:
    groups = plan(["json", "binary"], Options(mlp_connections=(1, 64)))
    order = [(lv.model.name, lv.workload, lv.connections, [g.server.name for g in gs]) for lv, gs in schedule(groups)]
    assert order == [
        ("mnist_mlp", "v2-json", 1, ["tandem", "naive"]),
        ("mnist_mlp", "v2-json", 64, ["tandem", "naive"]),
        ("mnist_mlp", "tfs-json", 64, ["tandem", "naive"]),
        ("mnist_cnn", "v2-json", 64, ["tandem", "naive"]),
        ("mnist_mlp", "v2-binary-64", 8, ["tandem"]),
    ]


def test_odd_rounds_take_a_levels_servers_in_reverse_order() -> None:
    groups = plan(["json"], Options(mlp_connections=(64,)))
    for turn in range(4):
        expected = ["tandem", "naive"] if turn % 2 == 0 else ["naive", "tandem"]
        assert all([g.server.name for g in members] == expected for _level, members in schedule(groups, turn))


def test_overload_runs_its_own_server_with_a_short_queue() -> None:
    (group,) = plan(["overload"], Options())
    assert group.server.overrides == {"mnist_cnn": {"max_queue_size": 32}}
    assert [(lv.connections, lv.seconds, lv.probe) for lv in group.levels] == [(64, None, False), (256, 15, True)]


def test_parse_variant_needs_a_name() -> None:
    with pytest.raises(ValueError, match="NAME=FLAGS"):
        parse_variant("--workers 2")


def test_targets_compare_tandem_with_naive_and_binary_with_the_ceiling() -> None:
    def row(server: ServerSpec, level: Level, res: WrkResult, rows: int = 1, cpu_s: float = 10.0) -> Row:
        return Row("one-core", server, level, res, rows, server_cpu_s=cpu_s)

    mlp1, mlp64 = Level("json", MLP, "v2-json", 1), Level("json", MLP, "v2-json", 64)
    cnn64, binary = Level("json", CNN, "v2-json", 64), Level("binary", MLP, "v2-binary-64", 8)
    rows = [
        row(TANDEM, mlp1, result(3000), cpu_s=5.0),  # half a core: twice the requests per cpu-s
        row(TANDEM, mlp64, result(7000, p99_ms=30)),
        row(TANDEM, cnn64, result(3600)),
        row(TANDEM, binary, result(1000), rows=64),
        row(NAIVE, mlp1, result(2000)),
        row(NAIVE, mlp64, result(2500)),
        row(NAIVE, cnn64, result(1200)),
    ]
    # 1000 calls of 64 rows in 0.16 s wall, 0.128 s of CPU: 400k rows/s, 500k rows/cpu-s
    ceilings = [Ceiling("one-core", "mnist_mlp", 64, 1000, 0.16, 0.128)]
    found = {
        t.label: (round(t.value, 2), None if math.isnan(t.per_cpu) else round(t.per_cpu, 2), t.met)
        for t in targets(rows, ceilings)
    }
    assert found == {
        "one-core MLP c=1 JSON, tandem / naive": (1.5, 3.0, True),
        "one-core MLP c=64 JSON, tandem / naive": (2.8, 2.8, True),
        "one-core MLP c=64 JSON, tandem p99 ms": (30.0, None, False),
        "one-core CNN c=64 JSON, tandem / naive": (3.0, 3.0, True),
        "one-core MLP 64-row binary, rows/s / ceiling": (0.16, 0.13, False),
    }
    table = render(rows, ceilings)
    assert "1.50x naive (per cpu-s 3.00x)" in table
    assert "0.16 of ceiling (per cpu-s 0.13)" in table


def test_rounds_reduce_to_the_median_round_and_a_variant_compares_with_plain_tandem() -> None:
    workers2 = parse_variant("workers2=--workers 2")
    level = Level("json", MLP, "v2-json", 64)
    measured = [(TANDEM, 3000), (workers2, 5100), (TANDEM, 2400), (workers2, 4000), (TANDEM, 2700), (workers2, 4500)]
    rows = [Row("all-core", server, level, result(rps), 1, server_cpu_s=10.0) for server, rps in measured]
    kept = median_rows(rows)
    assert [(row.server.name, row.result.rps) for row in kept] == [("tandem", 2700), ("tandem workers2", 4500)]
    assert "1.67x tandem (per cpu-s 1.67x)" in render(kept, [])
    # an even number of rounds keeps the lower of the two middle ones: a real round, never an average
    assert median_rows(rows[:4])[1].result.rps == 4000
    # round by round, each variant measurement over plain tandem's of the same round: 1.70, 1.67, 1.67
    [(row, ratios)] = paired_ratios(rows)
    assert row.server == workers2
    assert [round(r, 2) for r in ratios] == [1.7, 1.67, 1.67]
    assert "round by round: 1.70 1.67 1.67; median 1.67x" in render(kept, [], rows)
    assert "round by round" not in render(kept, [], rows[:2])  # one round: nothing to pair beyond the table
