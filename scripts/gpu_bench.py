"""The GPU run, in one command and under ten minutes: ONNX Runtime CUDA throughput of a CNN at batch 1..256, the
server answering binary V2 and JSON for the same CNN (with the ratio), and scripts/gpu_check.py.

    make gpu-bench        # or: .venv/bin/python scripts/gpu_bench.py

Where NVML sees no NVIDIA GPU it prints "no GPU found: measured nothing" and exits 0. --rehearse-on-cpu runs every
step on the CPU at small sizes, to show the script works on a host without a GPU: those numbers are not GPU numbers.
Exit status: 0 when the run finished or there is no GPU; 1 when a GPU is present but unusable or a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL, INPUT, OUTPUT = "cnn", "image", "probabilities"
CUDA = "CUDAExecutionProvider"


def build_cnn(path: Path, size: int) -> Path:
    """A small image CNN (four 3x3 convolutions, global pooling, a dense layer, softmax) with fixed random weights."""
    from onnx import TensorProto, helper, numpy_helper, save_model

    rng = np.random.default_rng(0)

    def weight(name: str, shape: list[int]) -> Any:
        scale = np.sqrt(2.0 / np.prod(shape[1:]))
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes, weights, previous = [], [], INPUT
    for i, (cin, cout, stride) in enumerate([(3, 32, 1), (32, 64, 2), (64, 128, 2), (128, 128, 2)]):
        weights += [weight(f"w{i}", [cout, cin, 3, 3]), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        conv = helper.make_node(
            "Conv", [previous, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1] * 4, strides=[stride] * 2
        )
        nodes += [conv, helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        previous = f"r{i}"
    weights += [weight("wf", [10, 128]), numpy_helper.from_array(np.zeros(10, np.float32), "bf")]
    nodes += [
        helper.make_node("GlobalAveragePool", [previous], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], [OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 10])],
        initializer=weights,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def images(rows: int, size: int) -> np.ndarray:
    """Pixel values 0..255 as float32 [rows, 3, size, size]."""
    return np.random.default_rng(1).integers(0, 256, (rows, 3, size, size)).astype(np.float32)


def timed(call: Any, seconds: float) -> tuple[int, float]:
    """Call repeatedly for about `seconds` after three warm-up calls; (calls, elapsed seconds)."""
    for _ in range(3):
        call()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        call()
        calls += 1
    return calls, elapsed


def ceiling(artifact: Path, size: int, batches: list[int], seconds: float, on_gpu: bool) -> None:
    """In-process ONNX Runtime per batch size: the project's runtime (numpy in and out), and on a GPU also IO binding
    with the batch already on the device (the compute-only ceiling)."""
    import onnxruntime as ort

    from service.runtimes import RuntimeOptions, load_runtime
    from service.runtimes.onnx import session_providers

    options = RuntimeOptions(device="cuda" if on_gpu else "cpu", allow_cpu_fallback=not on_gpu)
    runtime = load_runtime("onnx", artifact, options)
    raw = ort.InferenceSession(str(artifact), providers=session_providers(options, on_gpu)) if on_gpu else None
    print(f"ceiling: in-process ONNX Runtime on {runtime.device}, {size}x{size} images", flush=True)
    for rows in batches:
        x = images(rows, size)
        calls, elapsed = timed(lambda x=x: runtime.predict({INPUT: x}), seconds)
        line = f"  batch {rows:>3}: {calls * rows / elapsed:>9.0f} images/s  {elapsed / calls * 1000:8.3f} ms/call"
        if raw is not None:
            binding = raw.io_binding()
            binding.bind_ortvalue_input(INPUT, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            binding.bind_output(OUTPUT, "cuda", 0)
            calls, elapsed = timed(lambda b=binding: raw.run_with_iobinding(b), seconds)
            line += f"   on-device IO: {calls * rows / elapsed:>9.0f} images/s"
        print(line, flush=True)
    runtime.close()


def request_bodies(size: int) -> dict[str, tuple[bytes, dict[str, str]]]:
    """One image per request: V2 binary (JSON header + raw float32) and V2 JSON (the same pixels as numbers)."""
    x = images(1, size)
    tensor = {"name": INPUT, "shape": list(x.shape), "datatype": "FP32"}
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
        }
    ).encode()
    binary_headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    plain = json.dumps({"inputs": [{**tensor, "data": x.astype(int).ravel().tolist()}]}).encode()
    return {"binary V2": (header + x.tobytes(), binary_headers), "JSON V2": (plain, {})}


def write_repository(repo: Path, artifact: Path, on_gpu: bool, max_batch: int) -> None:
    """The CNN with two instances and a 4 GiB budget on cuda:0, and on a GPU a model whose budget cannot fit."""
    config: dict[str, Any] = {"max_batch_size": max_batch, "max_batch_delay_ms": 2}
    if on_gpu:
        config.update(device="cuda", devices=[0], instances=2, gpu_memory_mb=4096)
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "1" / "model.onnx").write_bytes(artifact.read_bytes())
    (repo / MODEL / "model.json").write_text(json.dumps(config))
    if on_gpu:
        (repo / "too_big" / "1").mkdir(parents=True)
        (repo / "too_big" / "1" / "model.onnx").write_bytes(artifact.read_bytes())
        (repo / "too_big" / "model.json").write_text(json.dumps({"device": "cuda", "gpu_memory_mb": 10**8}))


def get(url: str, post: bytes | None = None) -> tuple[int, bytes]:
    """GET (or POST `post`) on loopback; (status, body), status 0 when nothing answers."""
    request = urllib.request.Request(url, data=post, method="GET" if post is None else "POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback, our own server)
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


def start_server(repo: Path, port: int, on_gpu: bool, timeout_s: float) -> subprocess.Popen[bytes]:
    """`tandem serve` on loopback; returns once the CNN is ready (the server stays not-ready: too_big fails)."""
    device = ["--device", "cuda", "--no-allow-cpu-fallback"] if on_gpu else ["--device", "cpu"]
    command = [sys.executable, "-m", "service", "serve", "--models", str(repo), "--port", str(port), *device]
    server = subprocess.Popen([*command, "--log-level", "warning"], cwd=ROOT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        if get(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready")[0] == 200:
            return server
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the server did not serve {MODEL} within {timeout_s:.0f} s (exit {server.poll()})")


def check_placement(port: int, on_gpu: bool) -> list[str]:
    """What the server says about where the CNN runs and why too_big was refused; problems as lines."""
    base = f"http://127.0.0.1:{port}"
    device = json.loads(get(f"{base}/v2/models/{MODEL}")[1])["parameters"]["device"]
    print(f"server: {MODEL} runs on {device}", flush=True)
    if not on_gpu:
        return []
    problems = [] if device == "cuda:0" else [f"{MODEL} runs on {device}, not cuda:0"]
    index = {entry["name"]: entry for entry in json.loads(get(f"{base}/v2/repository/index", b"{}")[1])}
    print(f"server: too_big is {index['too_big']['state']}: {index['too_big'].get('reason')}", flush=True)
    if "which has" not in index["too_big"].get("reason", ""):
        problems.append("too_big was not refused for its budget")
    budgets = [line for line in get(f"{base}/metrics")[1].decode().splitlines() if "gpu_memory_budget" in line]
    print("server: " + "; ".join(line for line in budgets if not line.startswith("#")), flush=True)
    return problems


def serve_and_load(args: argparse.Namespace, artifact: Path, on_gpu: bool) -> list[str]:
    """Start the server on the CNN, drive binary V2 and JSON at each level, print req/s and the ratio."""
    from benchmarks.loadgen import run, run_sync
    from benchmarks.servers import free_port

    port, problems = free_port(), []
    with tempfile.TemporaryDirectory() as tmp:
        write_repository(Path(tmp), artifact, on_gpu, args.max_batch_size)
        server = start_server(Path(tmp), port, on_gpu, timeout_s=180)
        try:
            problems += check_placement(port, on_gpu)
            path, bodies = f"/v2/models/{MODEL}/infer", request_bodies(args.image_size)
            for level in args.levels:
                rps = {}
                for name, (body, headers) in bodies.items():
                    result = run_sync(run("127.0.0.1", port, path, body, level, args.seconds, args.warmup_s, headers))
                    print(result.line(f"server, {name}"), flush=True)
                    rps[name] = result.rps
                    if result.errors or result.ok != sum(result.status.values()) or not result.ok:
                        problems.append(f"{name} at c={level}: {result.status}, {result.errors} connection errors")
                ratio = rps["binary V2"] / rps["JSON V2"] if rps["JSON V2"] else float("nan")
                print(f"server, c={level}: binary V2 / JSON = {ratio:.2f}x", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    return problems


def gpu_check() -> list[str]:
    """Run scripts/gpu_check.py and show what it says; its failure is a problem of the run."""
    command = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--require-gpu"]
    try:
        check = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    except subprocess.TimeoutExpired:
        return ["gpu_check.py did not finish in 240 s"]
    print("gpu_check.py:\n" + check.stdout.rstrip(), flush=True)
    return [] if check.returncode == 0 else [f"gpu_check.py exited {check.returncode}"]


def gpu_names() -> list[str]:
    """The NVIDIA GPUs NVML reports, as "cuda:N name, X GiB"; empty on a host without any."""
    from service.runtimes.placement import gpu_inventory

    return [f"cuda:{g.index} {g.name}, {g.total_bytes / 2**30:.1f} GiB" for g in gpu_inventory()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rehearse-on-cpu", action="store_true", help="run every step on the CPU at small sizes")
    parser.add_argument("--image-size", type=int, help="image side in pixels (default 64; rehearsal 16)")
    parser.add_argument("--seconds", type=float, help="measured seconds per point (default 5; rehearsal 1)")
    parser.add_argument("--levels", help="server concurrency levels (default 1,16,64; rehearsal 1)")
    args = parser.parse_args(argv)
    small = args.rehearse_on_cpu
    args.image_size = args.image_size or (16 if small else 64)
    args.seconds = args.seconds or (1.0 if small else 5.0)
    args.levels = [int(v) for v in (args.levels or ("1" if small else "1,16,64")).split(",")]
    args.batches = [2**i for i in range(4 if small else 9)]  # 1..8 or 1..256
    args.max_batch_size = 8 if small else 64
    args.warmup_s = 0.5 if small else 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the steps in order; see the module docstring for the exit status."""
    args = parse(argv)
    sys.path.insert(0, str(ROOT))  # benchmarks/ is not an installed package
    started = time.monotonic()
    gpus = gpu_names()
    if not gpus and not args.rehearse_on_cpu:
        print("no GPU found: measured nothing (NVML sees no NVIDIA GPU on this host)")
        return 0
    on_gpu = bool(gpus) and not args.rehearse_on_cpu
    print(f"GPUs: {gpus or 'none'}" + ("" if on_gpu else "; CPU rehearsal: these numbers are NOT GPU numbers"))
    import onnxruntime as ort

    if on_gpu and CUDA not in ort.get_available_providers():
        print(f"FAIL: a GPU is present but ONNX Runtime has no CUDA provider ({ort.get_available_providers()})")
        return 1
    problems: list[str] = []
    if on_gpu:
        problems += gpu_check()
    with tempfile.TemporaryDirectory() as tmp:
        artifact = build_cnn(Path(tmp) / "model.onnx", args.image_size)
        try:
            ceiling(artifact, args.image_size, args.batches, min(args.seconds, 1.0), on_gpu)
            problems += serve_and_load(args, artifact, on_gpu)
        except Exception as exc:  # report and fail; the run must end with a verdict
            problems.append(f"{type(exc).__name__}: {exc}")
    print(f"done in {time.monotonic() - started:.0f} s" + "".join(f"\nFAIL: {p}" for p in problems))
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
