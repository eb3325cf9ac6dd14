"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending one request at a time.

Written on raw asyncio streams so that one client core can drive more requests per second than the
server under test answers; general-purpose HTTP clients spend more time per request than tandem does.
scripts/gpu_bench.py drives the server with it on a GPU host (many cores); `make bench` uses wrk, which
needs a fraction of the CPU this does.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Result:
    """What one load run measured."""

    concurrency: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    status: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    @property
    def ok(self) -> int:
        """Requests answered 200."""
        return self.status.get(200, 0)

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")

    def line(self, label: str) -> str:
        """One printable row."""
        return (
            f"{label:<28} c={self.concurrency:<3} {self.rps:>8.0f} req/s  p50 {self.percentile_ms(50):6.2f} ms  "
            f"p99 {self.percentile_ms(99):6.2f} ms  non-200 {sum(self.status.values()) - self.ok}  errors {self.errors}"
        )


def build_request(host: str, port: int, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> bytes:
    """One raw POST request; a JSON body unless `headers` name another Content-Type."""
    fields = {"Content-Type": "application/json", **(headers or {})}
    extra = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _client(host: str, port: int, request: bytes, stop_at: float, result: Result, warmup_until: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (now := time.perf_counter()) < stop_at:
            writer.write(request)
            status = await _read_response(reader)
            done = time.perf_counter()
            if now >= warmup_until:
                result.latencies_s.append(done - now)
                result.status[status] = result.status.get(status, 0) + 1
    except (OSError, asyncio.IncompleteReadError):
        result.errors += 1
    finally:
        writer.close()


async def run(
    host: str,
    port: int,
    path: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    warmup_s: float = 2.0,
    headers: Mapping[str, str] | None = None,
) -> Result:
    """Drive `concurrency` connections for warmup_s + seconds; only the measured window counts."""
    request = build_request(host, port, path, body, headers)
    start = time.perf_counter()
    result = Result(concurrency, seconds)
    warmup_until = start + warmup_s
    stop_at = warmup_until + seconds
    await asyncio.gather(*(_client(host, port, request, stop_at, result, warmup_until) for _ in range(concurrency)))
    return result


def run_sync(coro: Coroutine[Any, Any, Result]) -> Result:
    """Run on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    """CLI: python -m benchmarks.loadgen --port 8000 --path /v2/models/digits_mlp/infer --body-file req.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with open(args.body_file, "rb") as handle:
        body = handle.read()
    result = run_sync(run(args.host, args.port, args.path, body, args.concurrency, args.seconds))
    print(result.line(args.path))


if __name__ == "__main__":
    main()
