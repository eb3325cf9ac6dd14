from __future__ import annotations

from benchmarks.pairs import Pair, Run, parse_args, summarize


def pair(a: float, b: float, b_first: bool = False) -> Pair:
    return Pair(Run(a, 250.0), Run(b, 240.0), b_first)


def test_ratio_is_b_over_a_and_zero_when_a_served_nothing() -> None:
    assert pair(4000, 6000).ratio == 1.5
    assert pair(0, 6000).ratio == 0.0


def test_summary_gives_measured_medians_and_the_ratio_by_which_ran_first() -> None:
    pairs = [pair(4000, 6000), pair(4000, 7000, True), pair(5000, 6000), pair(4000, 6800, True)]
    text = summarize(pairs)
    assert "A: 4,000 req/s, 250 us" in text
    assert "B: 6,000 req/s, 240 us" in text
    assert "B/A: median 1.500 over 4 pairs (from 1.200 to 1.750), B faster in 4" in text
    assert "A ran first: median 1.200 over 2" in text
    assert "B ran first: median 1.700 over 2" in text


def test_flags_and_sources_are_per_server() -> None:
    args = parse_args(["--a-source", "../before", "--b-flags", "--workers 2", "--pairs", "4"])
    assert str(args.a_source) == "../before"
    assert args.b_source is None
    assert args.a_flags == ""
    assert args.b_flags == "--workers 2"
    assert args.pairs == 4
