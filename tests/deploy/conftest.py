"""Fixtures for the deployment tests: the repository root, a tiny model repository, and a real server process."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.server import ROOT, start_server, stop_server

__all__ = ["MODEL", "ROOT", "Server", "nvidia_gpu_present", "write_tiny_model"]

MODEL = "tiny"
SERVER_START_TIMEOUT_S = 90.0


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root."""
    return ROOT


def write_tiny_model(models: Path) -> None:
    """models/tiny/1/model.onnx: y = x + x over float32 [N, 4], built with onnx.helper."""
    from onnx import TensorProto, helper, save_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], MODEL, [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (models / MODEL / "1").mkdir(parents=True)
    save_model(model, str(models / MODEL / "1" / "model.onnx"))


def nvidia_gpu_present() -> bool:
    """True when NVML sees at least one NVIDIA GPU."""
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return int(pynvml.nvmlDeviceGetCount()) > 0
    finally:
        pynvml.nvmlShutdown()


@dataclass(frozen=True)
class Server:
    """A tandem server process serving the tiny model on loopback."""

    url: str
    model: str

    def infer(self, client: httpx.Client, rows: int = 1) -> httpx.Response:
        """POST one V2 infer request of `rows` rows."""
        body = {
            "inputs": [
                {"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": [float(i) for i in range(rows * 4)]}
            ]
        }
        return client.post(f"{self.url}/v2/models/{self.model}/infer", json=body)


def _require_server_code() -> None:
    try:
        importlib.import_module("service.app")
        importlib.import_module("service.cli")
    except ImportError as exc:
        pytest.skip(f"the server is not importable yet (service.app / service.cli: {exc}); live checks skipped")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Start `python -m service serve` on a free loopback port; stop it (SIGTERM, then SIGKILL) afterwards."""
    _require_server_code()
    base = tmp_path_factory.mktemp("server")
    models = base / "models"
    write_tiny_model(models)
    running = start_server(models, base / "server.log", timeout_s=SERVER_START_TIMEOUT_S, wait_path="/v2/health/ready")
    try:
        yield Server(url=running.url, model=MODEL)
    finally:
        stop_server(running)
