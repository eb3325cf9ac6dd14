"""digits_mlp: a PyTorch MLP on raw digits pixels, exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from exporters import step
from exporters.examples.digits import LABELS, SEED, Split, check_accuracy
from exporters.pipeline import Checks, export_model
from exporters.spec import BATCH, InputSpec
from exporters.torch_export import TorchSource
from exporters.writer import Target

NAME = "digits_mlp"
EPOCHS = 200


class DigitsMLP(nn.Module):
    """Raw 0..16 pixels in, class probabilities out: scaling and softmax live inside the model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores, for the training loss."""
        return self.net(pixels / 16.0)  # type: ignore[no-any-return]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Probabilities over the ten digits."""
        return self.logits(pixels).softmax(dim=-1)


def train(split: Split) -> DigitsMLP:
    """Full-batch Adam with a fixed seed: deterministic, and a second or two on one core."""
    torch.manual_seed(SEED)
    model = DigitsMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    threads = torch.get_num_threads()
    # Layers this small gain nothing from threads, and OpenMP barriers stall when other work shares the cores.
    torch.set_num_threads(1)
    try:
        for _ in range(EPOCHS):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model.logits(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def build(models: Path, split: Split, replace: bool) -> float:
    """Train, check accuracy, then export, verify and write version 1; returns the held-out accuracy."""
    with step(f"{NAME}: training a PyTorch MLP"):
        model = train(split)
    pixels = InputSpec("pixels", "FP32", (BATCH, 64), low=0, high=16)
    source = TorchSource(model, [pixels], ["probabilities"])
    accuracy = check_accuracy(NAME, source.predict({"pixels": split.x_test})["probabilities"], split.y_test)
    checks = Checks(max_batch_size=32, sample={"pixels": split.x_test})
    export_model(source, Target(models, NAME, "1", replace=replace), checks, LABELS)
    return accuracy
