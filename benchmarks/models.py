"""The benchmark models (an MNIST-shaped MLP and CNN, random weights) and the repositories servers load."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED = 0
# Every server config the benchmark writes batches like this unless a scenario overrides it.
BATCHING: dict[str, Any] = {"max_batch_size": 64, "max_batch_delay_ms": 1}


@dataclass(frozen=True)
class BenchModel:
    """One benchmark model: its name, its input (name and per-row shape) and its output name."""

    name: str
    input_name: str
    row_shape: tuple[int, ...]
    output_name: str = "logits"

    @property
    def row_values(self) -> int:
        """Values in one row (one sample)."""
        count = 1
        for dim in self.row_shape:
            count *= dim
        return count


MLP = BenchModel("mnist_mlp", "pixels", (784,))
CNN = BenchModel("mnist_cnn", "image", (1, 28, 28))
MODELS = {model.name: model for model in (MLP, CNN)}


def _torch_module(model: BenchModel) -> Any:
    """MLP 784-256-10 (0.4 MFLOP per row); CNN: two 3x3 convs 1->16->32 on 28x28, pool, 6272-128-10 (9.1 MFLOP)."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    if model is MLP:
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 14 * 14, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def build_artifacts(store: Path) -> Path:
    """Export every benchmark model to `store/<name>/1/model.onnx` with the project's exporter; skip built ones."""
    from exporters.pipeline import Checks, export_model
    from exporters.spec import BATCH, InputSpec
    from exporters.torch_export import TorchSource
    from exporters.writer import Target

    for model in MODELS.values():
        if (store / model.name / "1" / "model.onnx").exists():
            continue
        spec = InputSpec(model.input_name, "FP32", (BATCH, *model.row_shape), low=0, high=1)
        source = TorchSource(_torch_module(model), [spec], [model.output_name])
        export_model(source, Target(store, model.name, "1", replace=True), Checks(max_batch_size=64))
    return store


def write_repository(store: Path, target: Path, overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    """A repository at `target` holding every built model, its model.json batching as BATCHING plus overrides."""
    if target.exists():
        shutil.rmtree(target)
    for model in MODELS.values():
        shutil.copytree(store / model.name, target / model.name)
        config_path = target / model.name / "model.json"
        config = json.loads(config_path.read_text())
        config.update(BATCHING)
        config.update((overrides or {}).get(model.name, {}))
        config_path.write_text(json.dumps(config, indent=2) + "\n")
    return target
