"""Request bodies the benchmark POSTs: what users send, one MNIST-shaped sample or 64 rows of them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.models import BenchModel

BINARY_HEADER = "Inference-Header-Content-Length"
DECIMALS = 6  # a client's float32 pixel values printed by json: ~9 bytes each, ~7.4 KB for 784 of them


@dataclass(frozen=True)
class Body:
    """One request as wrk sends it: path, body bytes and the headers beyond Content-Length."""

    workload: str
    path: str
    content: bytes
    rows: int
    headers: dict[str, str] = field(default_factory=dict)

    def write(self, directory: Path, stem: str) -> Path:
        """Write the body to `directory/stem.body` for wrk's Lua script to read."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{stem}.body"
        path.write_bytes(self.content)
        return path


def pixels(model: BenchModel, rows: int, seed: int = 0) -> np.ndarray:
    """Random pixel values in [0, 1) shaped [rows, *row_shape], rounded as a JSON client would send them."""
    values = np.random.default_rng(seed).random((rows, *model.row_shape), dtype=np.float64)
    return np.round(values, DECIMALS).astype(np.float32)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _decimals(array: np.ndarray) -> list[Any]:
    # float32 -> float64 prints 0.1234560027...; round back to what the client had
    return np.round(array.astype(np.float64), DECIMALS).tolist()  # type: ignore[no-any-return]


def v2_json(model: BenchModel, rows: int = 1) -> Body:
    """KServe V2 JSON: one FP32 input, flat data, shape [rows, *row_shape]."""
    data = pixels(model, rows)
    tensor = {
        "name": model.input_name,
        "shape": [rows, *model.row_shape],
        "datatype": "FP32",
        "data": _decimals(data.ravel()),
    }
    content = _json({"inputs": [tensor]})
    return Body("v2-json", f"/v2/models/{model.name}/infer", content, rows, {"Content-Type": "application/json"})


def tfs_json(model: BenchModel, rows: int = 1) -> Body:
    """TF Serving row format: {"instances": [...]}, each instance nested as the row shape."""
    content = _json({"instances": _decimals(pixels(model, rows))})
    return Body("tfs-json", f"/v1/models/{model.name}:predict", content, rows, {"Content-Type": "application/json"})


def v2_binary(model: BenchModel, rows: int = 64) -> Body:
    """V2 binary tensor extension: JSON header, then the raw little-endian FP32 rows; binary output asked for."""
    raw = pixels(model, rows).astype("<f4").tobytes()
    header = _json(
        {
            "inputs": [
                {
                    "name": model.input_name,
                    "shape": [rows, *model.row_shape],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    headers = {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))}
    return Body(f"v2-binary-{rows}", f"/v2/models/{model.name}/infer", header + raw, rows, headers)


WORKLOADS = {"v2-json": v2_json, "tfs-json": tfs_json, "v2-binary-64": v2_binary}
