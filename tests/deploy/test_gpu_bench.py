"""scripts/gpu_bench.py: says plainly that it measured nothing without a GPU, and its steps work on the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest

from service.repository import read_config
from tests.deploy.conftest import ROOT, nvidia_gpu_present

SCRIPT = ROOT / "scripts" / "gpu_bench.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )


def test_without_a_gpu_it_exits_0_saying_it_measured_nothing() -> None:
    if nvidia_gpu_present():
        pytest.skip("this host has a GPU: the script measures it")
    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "no GPU found: measured nothing (NVML sees no NVIDIA GPU on this host)"


def test_the_cnn_runs_at_every_batch_size_and_sums_to_one(tmp_path: Path) -> None:
    module = load_script()
    artifact = module.build_cnn(tmp_path / "model.onnx", 16)
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    for rows in (1, 3):
        (probabilities,) = session.run(None, {"image": module.images(rows, 16)})
        assert probabilities.shape == (rows, 10)
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_the_gpu_repository_asks_for_two_instances_and_holds_a_model_that_cannot_fit(tmp_path: Path) -> None:
    module = load_script()
    artifact = module.build_cnn(tmp_path / "model.onnx", 16)
    repo = tmp_path / "repo"
    module.write_repository(repo, artifact, True, 64)
    cnn = read_config(repo / "cnn")
    assert (cnn.device, cnn.devices, cnn.instances, cnn.gpu_memory_mb) == ("cuda", [0], 2, 4096)
    assert read_config(repo / "too_big").gpu_memory_mb == 10**8  # larger than any GPU


def test_the_binary_body_carries_the_same_pixels_as_the_json_body() -> None:
    bodies = load_script().request_bodies(16)
    binary, headers = bodies["binary V2"]
    header_length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(binary[:header_length])
    pixels = np.frombuffer(binary[header_length:], dtype="<f4")
    assert header["inputs"][0]["parameters"]["binary_data_size"] == pixels.nbytes == 3 * 16 * 16 * 4
    plain, plain_headers = bodies["JSON V2"]
    assert plain_headers == {}
    assert json.loads(plain)["inputs"][0]["data"] == pixels.astype(int).tolist()


@pytest.mark.slow
def test_the_cpu_rehearsal_runs_every_step_and_labels_its_numbers() -> None:
    result = run("--rehearse-on-cpu", "--seconds", "0.5", "--levels", "2")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "CPU rehearsal: these numbers are NOT GPU numbers" in out
    assert [line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  batch")] == [
        f"batch {n:>3}" for n in (1, 2, 4, 8)
    ]
    assert "server: cnn runs on cpu" in out
    for name in ("binary V2", "JSON V2"):
        assert f"server, {name}" in out
        assert "non-200 0  errors 0" in out.split(f"server, {name}")[1].splitlines()[0]
    assert "server, c=2: binary V2 / JSON = " in out
    assert "FAIL" not in out
