"""Build the real Dockerfile (both stages, the gpu extra included) and check the image it makes."""

from __future__ import annotations

import contextlib
import functools
import http.server
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from scripts.docker_smoke.docker import DOCKER, docker, inspect, legacy_build_env, run, run_build
from scripts.docker_smoke.report import Report

# The classic builder keys every RUN of a stage on all its build arguments, so TORCH_INDEX_URL, and
# with it this port, must stay the same from run to run for the layer cache to hit.
TORCH_INDEX_PORT = 28641
TORCH_PIN = re.compile(r'"torch==([0-9][0-9.]*)"')
# What the runtime stage must hold: the gpu extra's CUDA 13 (ONNX Runtime) and CUDA 12 (TensorFlow) wheels.
GPU_WHEELS = ("onnxruntime-gpu", "tensorflow", "nvidia-cuda-runtime", "nvidia-cudnn-cu13", "nvidia-cudnn-cu12")
# How the report names the Dockerfile's slow steps.
STEP_NAMES = (
    ("--requirement /wheels/requirements.txt", "runtime stage: gpu extra and its CUDA wheels"),
    ('".[export]"', "build stage: export extra, project wheel, example models"),
    ('"torch==', "build stage: torch CPU wheel"),
    ("COPY --from=build /models", "copy the example models"),
)
PROBE = """
import importlib.metadata as m, importlib.util as u, os
print("torch", "present" if u.find_spec("torch") else "absent")
for name in {wheels!r}:
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "missing")
print("models", ",".join(sorted(d for d in os.listdir("/models") if not d.startswith("."))))
print("uid", os.getuid())
"""


def torch_pin(dockerfile: Path) -> str:
    """The torch version the Dockerfile's build stage installs."""
    match = TORCH_PIN.search(dockerfile.read_text())
    if match is None:
        raise ValueError("the Dockerfile pins no torch==X")
    return match.group(1)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Requests are not worth a line each."""


@contextlib.contextmanager
def torch_index(report: Report, dockerfile: Path, workdir: Path) -> Iterator[str]:
    """Serve the CPU torch wheel the host's pip finds locally as a PEP 503 index on 127.0.0.1; yields its URL."""
    version = torch_pin(dockerfile)
    wheels = workdir / "torch-index" / "simple" / "torch"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = ["python3", "-m", "pip"] if run(["python3", "-m", "pip", "--version"], timeout=60).ok else ["pip3"]
    fetched = run(
        [*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
         "--abi", "cp311", "--platform", "manylinux_2_28_x86_64", "--dest", str(wheels), f"torch=={version}"],
        timeout=900,
    )  # fmt: skip
    found = sorted(p.name for p in wheels.glob(f"torch-{version}*.whl"))
    cpu = [name for name in found if "+cpu" in name]
    report.require(
        f"torch {version} CPU wheel for the build stage",
        fetched.ok and bool(cpu),
        cpu[0] if cpu else f"pip download gave {found or 'nothing'}: {fetched.tail(2)}",
    )
    for name in set(found) - set(cpu):
        (wheels / name).unlink()
    handler = functools.partial(_QuietHandler, directory=str(wheels.parent.parent))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", TORCH_INDEX_PORT), handler)
    except OSError:
        report.note(f"port {TORCH_INDEX_PORT} is taken: TORCH_INDEX_URL changes, so the build cache misses")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(workdir / "torch-index", ignore_errors=True)


def build(report: Report, root: Path, tag: str, torch_url: str, extra_ca: list[str], log_path: Path) -> float:
    """`docker build` of the real Dockerfile; returns the seconds it took."""
    args = [DOCKER, "build", "--network", "host", "--tag", tag, "--build-arg", f"TORCH_INDEX_URL={torch_url}"]
    if extra_ca:
        args += ["--build-arg", "EXTRA_CA_CERTS=" + "\n".join(extra_ca)]
    started = time.monotonic()
    with log_path.open("a") as log:
        status, steps = run_build([*args, str(root)], log, timeout=3600, env=legacy_build_env())
    took = time.monotonic() - started
    slowest = sorted(steps, key=lambda step: -step.seconds)[:3]
    shown = "; ".join(f"{_step_name(step.text)} {step.seconds / 60:.1f} min" for step in slowest)
    report.require(
        f"docker build {tag} (build + runtime stages, gpu extra)",
        status == 0,
        f"{took / 60:.1f} min (slowest: {shown})" if status == 0 else f"exit status {status}; see {log_path}",
    )
    return took


def _step_name(text: str) -> str:
    """`Step 16/23 : RUN ... pip install ...` shortened to what the step does."""
    number = text.split(" :", 1)[0].removeprefix("Step ")
    for marker, name in STEP_NAMES:
        if marker in text:
            return f"step {number} ({name})"
    return f"step {number}"


def check_image(report: Report, root: Path, tag: str) -> int:
    """The image's user, contents, gpu_check and size; returns the size in bytes."""
    data = inspect("image", tag) or {}
    config = data.get("Config") or {}
    probe = docker("run", "--rm", "--entrypoint", "python", tag, "-c", PROBE.format(wheels=GPU_WHEELS))
    facts = dict(line.split(" ", 1) for line in probe.out.splitlines() if " " in line)
    user = config.get("User", "")
    uid = facts.get("uid", "?")
    report.check(
        "image runs as non-root", user not in ("", "0", "root") and uid not in ("0", "?"), f"USER {user}, uid {uid}"
    )
    report.check(
        "torch absent from the runtime stage", facts.get("torch") == "absent", f"torch {facts.get('torch', '?')}"
    )
    versions = ", ".join(f"{name} {facts.get(name, '?')}" for name in GPU_WHEELS)
    report.check(
        "gpu extra with its CUDA wheels installed",
        all(facts.get(n, "missing") != "missing" for n in GPU_WHEELS),
        versions,
    )
    models = facts.get("models", "")
    report.check("example models baked into /models", {"digits_mlp", "digits_cnn"} <= set(models.split(",")), models)
    gpu = docker(
        "run", "--rm", "-i", "--entrypoint", "python", tag, "-", stdin=(root / "scripts" / "gpu_check.py").read_text()
    )
    said = "no GPU" in gpu.out
    lines = [ln.strip() for ln in gpu.out.splitlines() if "no GPU" in ln]
    report.check(
        "scripts/gpu_check.py inside the image reports no GPU cleanly",
        gpu.ok and said and "Traceback" not in gpu.out + gpu.err,
        f"exit {gpu.rc}: {lines[0] if lines else gpu.tail(3)}",
    )
    size = int(data.get("Size", 0))
    report.check("image size recorded", size > 0, f"{size / 1e9:.2f} GB ({size} bytes)")
    return size
