"""KServe V2 over gRPC against the HTTP binary path: the official tritonclient, 64-row requests, one server, one run.

Starts one `tandem serve` over a copy of the example `digits_mlp` with `max_batch_size` = `--rows` (pinned to
one CPU where there are two or more, the clients to another), then alternates the protocols for `--rounds`
rounds: `--concurrency` closed-loop tasks on tritonclient.grpc.aio and on tritonclient.http.aio (binary
tensor data in and out), each sending `--rows` digits rows per request for `--seconds` after a one-second
warm-up. Prints rows/s, latency and the server's CPU use per window, then the gRPC/HTTP ratio of the summed
rows/s. With `--raw-http`, a third protocol sends the same binary request over plain keep-alive HTTP/1.1
connections (no client library): what the server's HTTP path gives when the client costs next to nothing.

    python -m benchmarks.grpc_binary --models models [--raw-http]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.servers import free_port

MODEL, INPUT, OUTPUT = "digits_mlp", "pixels", "probabilities"


@dataclass
class Window:
    """One protocol's measured window."""

    protocol: str
    seconds: float
    rows: int = 0
    latencies_s: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0

    def line(self) -> str:
        """One printable line."""
        ms = np.percentile(self.latencies_s, [50, 99]) * 1000 if self.latencies_s else [0.0, 0.0]
        return (
            f"{self.protocol:<5} {self.rows / self.seconds:>10.0f} rows/s  {len(self.latencies_s) / self.seconds:>7.0f}"
            f" req/s  p50 {ms[0]:6.2f} ms  p99 {ms[1]:6.2f} ms  server CPU {self.server_cpu_s / self.seconds:4.0%}"
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Call = Callable[[], Awaitable[Any]]


async def drive(protocol: str, connect: Callable[[], Awaitable[Call]], args: argparse.Namespace, pid: int) -> Window:
    """`concurrency` tasks, each with its connect()ed call, in a closed loop: a second of warm-up, then the window."""
    window = Window(protocol, args.seconds)
    start = time.perf_counter() + 1.0
    end = start + args.seconds

    async def worker() -> None:
        call = await connect()
        while (now := time.perf_counter()) < end:
            await call()
            if now >= start:
                window.latencies_s.append(time.perf_counter() - now)
                window.rows += args.rows

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        before = cpu_seconds(pid)
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        window.server_cpu_s = cpu_seconds(pid) - before

    await asyncio.gather(sample_cpu(), *(worker() for _ in range(args.concurrency)))
    return window


async def grpc_call(target: str, batch: np.ndarray) -> tuple[Callable[[], Awaitable[Any]], Any]:
    """One tritonclient.grpc.aio client and its infer call (binary: raw_input_contents / raw_output_contents)."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(target)
    tensor = grpcclient.InferInput(INPUT, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    outputs = [grpcclient.InferRequestedOutput(OUTPUT)]

    async def call() -> Any:
        return await client.infer(MODEL, [tensor], outputs=outputs)

    return call, client


async def http_call(target: str, batch: np.ndarray) -> tuple[Callable[[], Awaitable[Any]], Any]:
    """One tritonclient.http.aio client and its infer call with binary tensor data in and out."""
    import tritonclient.http.aio as httpclient

    client = httpclient.InferenceServerClient(target, conn_limit=256)
    tensor = httpclient.InferInput(INPUT, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    outputs = [httpclient.InferRequestedOutput(OUTPUT, binary_data=True)]

    async def call() -> Any:
        return await client.infer(MODEL, [tensor], outputs=outputs)

    return call, client


def raw_http_request(port: int, batch: np.ndarray) -> bytes:
    """One V2 binary infer request as raw HTTP/1.1 bytes: JSON header, then the tensor, binary output asked."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT,
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + batch.tobytes()
    head = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def raw_http_connect(port: int, request: bytes) -> Callable[[], Awaitable[Call]]:
    """A connection per worker; each call writes the request and reads one whole 200 response."""

    async def connect() -> Call:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def call() -> None:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if head[9:12] != b"200":
                raise RuntimeError(f"raw HTTP request failed: {head[:200]!r}")
            length = next(int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:")
            await reader.readexactly(length)

        return call

    return connect


async def compare(args: argparse.Namespace, http_port: int, grpc_port: int, pid: int) -> None:
    """Check both answers agree, then alternate the protocols and print every window and the ratio."""
    batch = np.random.default_rng(0).integers(0, 17, size=(args.rows, 64)).astype(np.float32)
    grpc_infer, grpc_client = await grpc_call(f"127.0.0.1:{grpc_port}", batch)
    http_infer, http_client = await http_call(f"127.0.0.1:{http_port}", batch)
    try:
        np.testing.assert_array_equal((await grpc_infer()).as_numpy(OUTPUT), (await http_infer()).as_numpy(OUTPUT))
        protocols: list[tuple[str, Callable[[], Awaitable[Call]]]] = [
            ("http", _shared(http_infer)),
            ("grpc", _shared(grpc_infer)),
        ]
        if args.raw_http:
            protocols.append(("raw", raw_http_connect(http_port, raw_http_request(http_port, batch))))
        totals = {name: 0.0 for name, _ in protocols}
        for _ in range(args.rounds):
            for protocol, connect in protocols:
                window = await drive(protocol, connect, args, pid)
                print(window.line(), flush=True)
                totals[protocol] += window.rows / window.seconds
        print(f"gRPC / HTTP rows/s (tritonclient both): {totals['grpc'] / totals['http']:.2f}", flush=True)
        if args.raw_http:
            print(f"gRPC / raw HTTP rows/s: {totals['grpc'] / totals['raw']:.2f}", flush=True)
    finally:
        await grpc_client.close()
        await http_client.close()


def _shared(call: Call) -> Callable[[], Awaitable[Call]]:
    """Every worker uses one client (a gRPC channel multiplexes; aiohttp pools connections)."""

    async def connect() -> Call:
        return call

    return connect


def start_server(models: Path, port: int, env_extra: dict[str, str], cpu: str | None) -> subprocess.Popen[bytes]:
    """`tandem serve` in its own process, optionally pinned to one CPU; returns once ready."""
    env = {**os.environ, "TANDEM_LOG_LEVEL": "warning", **env_extra}
    cmd = [sys.executable, "-m", "service", "serve", "--models", str(models), "--port", str(port)]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise SystemExit("server did not become ready in 120 s")


def repository_with(models: Path, workdir: Path, max_batch_size: int | None) -> Path:
    """A one-model repository copy whose model.json sets max_batch_size (None: as exported)."""
    from service.repository import read_config

    target = workdir / f"batch{max_batch_size}" / MODEL
    shutil.copytree(models / MODEL, target)
    config = read_config(target)
    if max_batch_size is not None:
        config.max_batch_size = max_batch_size
    (target / "model.json").write_text(config.model_dump_json(exclude_none=True, indent=2))
    return target.parent


def main() -> None:
    """Start the server, run the comparison, stop the server."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--raw-http", action="store_true", help="also measure plain HTTP/1.1 without a client library")
    args = parser.parse_args()
    if not (args.models / MODEL / "1" / "model.onnx").exists():
        raise SystemExit(f"{MODEL} missing: build the examples first (make examples)")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (str(cpus[0]), cpus[1]) if len(cpus) > 1 else (None, None)
    http_port, grpc_port = free_port(), free_port()
    workdir = tempfile.TemporaryDirectory()
    repo = repository_with(args.models, Path(workdir.name), args.rows)
    proc = start_server(repo, http_port, {"TANDEM_GRPC_PORT": str(grpc_port)}, server_cpu)
    print(
        f"tandem gRPC vs HTTP: {MODEL}, {args.rows} rows per request, binary tensors, concurrency "
        f"{args.concurrency}, {args.seconds:g} s per window, {os.cpu_count()} CPUs visible",
        flush=True,
    )
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    try:
        asyncio.run(compare(args, http_port, grpc_port, proc.pid))
    finally:
        os.sched_setaffinity(0, set(cpus))
        proc.terminate()
        proc.wait(timeout=60)
        workdir.cleanup()


if __name__ == "__main__":
    main()
