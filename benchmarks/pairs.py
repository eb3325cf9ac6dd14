"""Two tandem servers up at once and short wrk runs alternating between them: their ratio, pair by pair.

On a shared host one level drifts by a third within the hour and adjacent runs differ by 15%, so a comparison
of two builds or two flag sets is only as good as its pairing. Each pair measures A then B (odd pairs B then A)
for --seconds each, with MLP 784-value JSON; it prints each run's req/s and the server's CPU per request, then
the median of the paired ratios B/A, also split by which ran first.

    python -m benchmarks.pairs --b-flags '--workers 2'            # one process against two workers
    python -m benchmarks.pairs --a-source ../before --pairs 30    # another checkout's build against this one
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks import bodies, wrk
from benchmarks.cpu import tree_seconds
from benchmarks.models import CNN, MLP, build_artifacts, write_repository
from benchmarks.report import lower_median
from benchmarks.servers import Running, ServerSpec, Setup, running


@dataclass(frozen=True)
class Run:
    """One wrk run against one server: successful req/s and the server's CPU microseconds per request."""

    rps: float
    cpu_us: float


@dataclass(frozen=True)
class Pair:
    """A and B measured back to back; `b_first` when B ran first."""

    a: Run
    b: Run
    b_first: bool

    @property
    def ratio(self) -> float:
        """B's throughput over A's."""
        return self.b.rps / self.a.rps if self.a.rps else 0.0


def summarize(pairs: list[Pair]) -> str:
    """Medians of A, B and the paired ratio (each a measured value), and the ratio by which server ran first."""
    ratios = [p.ratio for p in pairs]
    lines = [
        f"A: {lower_median([p.a.rps for p in pairs]):,.0f} req/s, {lower_median([p.a.cpu_us for p in pairs]):.0f} us",
        f"B: {lower_median([p.b.rps for p in pairs]):,.0f} req/s, {lower_median([p.b.cpu_us for p in pairs]):.0f} us",
        f"B/A: median {lower_median(ratios):.3f} over {len(pairs)} pairs (from {min(ratios):.3f} to "
        f"{max(ratios):.3f}), B faster in {sum(r > 1 for r in ratios)}",
    ]
    for label, first in (("A ran first", False), ("B ran first", True)):
        some = [p.ratio for p in pairs if p.b_first == first]
        if some:
            lines.append(f"  {label}: median {lower_median(some):.3f} over {len(some)}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pairs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--a-source", type=Path, default=None, help="checkout to run as A (default: this one)")
    parser.add_argument("--b-source", type=Path, default=None, help="checkout to run as B (default: this one)")
    parser.add_argument("--a-flags", default="", help="extra `tandem serve` flags for A")
    parser.add_argument("--b-flags", default="", help="extra `tandem serve` flags for B")
    parser.add_argument("--pairs", type=int, default=10, help="pairs of runs (default 10)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per run (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--workload", choices=("v2-json", "tfs-json"), default="v2-json")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/results"), help="models and logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start A and B, measure the pairs, print every run and the summary."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.workdir = args.workdir.resolve()  # a server started in another checkout must find its repository
    wrk.ensure_wrk()
    model = MLP if args.model == "mlp" else CNN
    body = (bodies.v2_json if args.workload == "v2-json" else bodies.tfs_json)(model)
    body_file = body.write(args.workdir / "bodies", f"pairs-{model.name}-{args.workload}")
    store = build_artifacts(args.workdir / "models")
    unpinned = Setup("all-core", None, None)
    servers: dict[str, Running] = {}
    with contextlib.ExitStack() as stack:
        for name, source, flags in (("A", args.a_source, args.a_flags), ("B", args.b_source, args.b_flags)):
            repository = write_repository(store, args.workdir / "repos" / f"pairs-{name}")
            spec = ServerSpec(f"tandem {name}", "tandem", tuple(flags.split()))
            log = args.workdir / "logs" / f"pairs-{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            servers[name] = stack.enter_context(running(spec, unpinned, repository, log, source))
        for server in servers.values():  # warm both up
            wrk.run(server.base + body.path, body_file, body.headers, args.connections, 2, None)
        pairs: list[Pair] = []
        for index in range(args.pairs):
            b_first = index % 2 == 1
            runs: dict[str, Run] = {}
            for name in ("B", "A") if b_first else ("A", "B"):
                server = servers[name]
                before = tree_seconds(server.pid)
                result = wrk.run(server.base + body.path, body_file, body.headers, args.connections, args.seconds, None)
                used = tree_seconds(server.pid) - before
                if result.status_errors or result.socket_errors:
                    errors = f"{result.status_errors} error statuses, {result.socket_errors} socket errors"
                    print(f"warning: {name} had {errors}", flush=True)
                runs[name] = Run(result.rps, used / max(result.ok, 1) * 1e6)
            pairs.append(Pair(runs["A"], runs["B"], b_first))
            a, b = runs["A"], runs["B"]
            print(
                f"pair {index + 1}: A {a.rps:,.0f} req/s ({a.cpu_us:.0f} us)  B {b.rps:,.0f} req/s "
                f"({b.cpu_us:.0f} us)  B/A {pairs[-1].ratio:.3f}",
                flush=True,
            )
    print(summarize(pairs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
