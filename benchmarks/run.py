"""Throughput and latency of tandem on this machine, in one run.

Prints: in-process ONNX Runtime throughput (the ceiling), the server's req/s and p50/p99 at
concurrency 1, 16 and 64 with batching on, and the same with batching off (and, with --access-log, batching
on with the access log on, to measure its cost). The server is pinned to
one core and the load generator to another where the machine has two or more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.loadgen import Result, run, run_sync

MODEL = "digits_mlp"


def sample_body(models: Path) -> bytes:
    """One digits sample (64 raw pixel values) as a V2 JSON request."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 17, size=64).astype(float).tolist()
    return json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": pixels}]}).encode()


def ceiling(models: Path, seconds: float) -> list[str]:
    """In-process ONNX Runtime: single-row and 64-row calls, no HTTP, no JSON."""
    from service.runtimes import RuntimeOptions, load_runtime

    runtime = load_runtime(
        "onnx", models / MODEL / "1" / "model.onnx", RuntimeOptions(device="auto", intra_op_threads=1)
    )
    lines = []
    for rows in (1, 64):
        feeds = {"pixels": np.ones((rows, 64), dtype=np.float32)}
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            runtime.predict(feeds)
            calls += 1
        elapsed = time.perf_counter() - start
        lines.append(
            f"{'in-process onnxruntime':<28} rows={rows:<3} {calls / elapsed:>8.0f} calls/s  "
            f"{calls * rows / elapsed:>9.0f} rows/s  {elapsed / calls * 1e6:7.1f} us/call ({runtime.device})"
        )
    return lines


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def measure(models: Path, label: str, env_extra: dict[str, str], levels: list[int], seconds: float) -> list[Result]:
    """Start a server, drive each concurrency level, stop it."""
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (str(cpus[0]), cpus[1]) if len(cpus) > 1 else (None, None)
    port = free_port()
    proc = start_server(models, port, env_extra, server_cpu)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    try:
        body = sample_body(models)
        results = []
        for level in levels:
            result = run_sync(run("127.0.0.1", port, f"/v2/models/{MODEL}/infer", body, level, seconds))
            print(result.line(label), flush=True)
            results.append(result)
        return results
    finally:
        os.sched_setaffinity(0, set(cpus))
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    """Run the whole benchmark and print one table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--max-batch-size", type=int, default=64, help="rows per batch in the batching-on run")
    parser.add_argument("--access-log", action="store_true", help="also run batching on with the access log on")
    args = parser.parse_args()
    if not (args.models / MODEL / "1" / "model.onnx").exists():
        raise SystemExit(f"{MODEL} missing: build the examples first (make examples)")
    levels = [int(x) for x in args.levels.split(",")]
    print(f"tandem benchmark: {MODEL}, one JSON sample per request, {os.cpu_count()} CPUs visible", flush=True)
    for line in ceiling(args.models, args.seconds):
        print(line, flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        batched = repository_with(args.models, Path(workdir), args.max_batch_size)
        unbatched = repository_with(args.models, Path(workdir), 0)
        measure(batched, f"server, batching on ({args.max_batch_size})", {}, levels, args.seconds)
        measure(unbatched, "server, batching off", {}, levels, args.seconds)
        if args.access_log:  # JSON lines to the benchmark's stderr: what a container's log driver would read
            access = {"TANDEM_ACCESS_LOG": "true", "TANDEM_LOG_FORMAT": "json"}
            measure(batched, f"server, batching on ({args.max_batch_size}), access log", access, levels, args.seconds)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
