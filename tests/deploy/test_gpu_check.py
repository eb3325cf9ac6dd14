"""scripts/gpu_check.py runs cleanly on this host and reports what it finds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.conftest import ROOT, nvidia_gpu_present

SCRIPT = ROOT / "scripts" / "gpu_check.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=180, cwd=ROOT, check=False
    )


def test_embedded_model_matches_onnx_helper(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    module = load_script()
    built = module.tiny_onnx_model(tmp_path).read_bytes()
    assert built == bytes.fromhex(module.TINY_MODEL_HEX), "regenerate TINY_MODEL_HEX from tiny_onnx_model()"


@pytest.mark.slow
def test_reports_providers_and_exits_by_the_rules() -> None:
    result = run()
    out = result.stdout
    assert "available providers:" in out, out + result.stderr
    assert "session providers:" in out, out + result.stderr
    assert "tiny model output correct" in out, out
    if nvidia_gpu_present():
        assert result.returncode in (0, 1)
        assert ("OK:" in out) == (result.returncode == 0), out
    else:
        assert result.returncode == 0, out + result.stderr
        assert "no GPU" in out
        assert "session providers: ['CPUExecutionProvider']" in out


@pytest.mark.slow
def test_require_gpu_fails_without_one() -> None:
    if nvidia_gpu_present():
        pytest.skip("a GPU is present; --require-gpu is checked by the test above")
    result = run("--require-gpu")
    assert result.returncode == 1
    assert "no GPU" in result.stdout
