"""Tiny real models for the exporter tests, importable as tests.exporters.tiny_models:<factory>."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

TINY_CONSTANT = 3  # not a factory


class Scored(NamedTuple):
    """A named-tuple result: its fields name the outputs."""

    scores: torch.Tensor
    mask_count: torch.Tensor


class TwoInOut(nn.Module):
    """Two inputs of different dtypes, two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(6, 4)
        self.counts = nn.Linear(3, 4)

    def forward(self, features: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.features(features) + self.counts(counts.float())
        return hidden.softmax(-1), hidden.sum(-1, keepdim=True)


class Sequence(nn.Module):
    """Token ids of any length -> class scores: a dynamic dim besides the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        scores: torch.Tensor = self.head(self.embed(tokens).mean(1))
        return scores


class MaskedBag(nn.Module):
    """Token ids and a mask that must share their sequence length."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        summed = (self.embed(ids) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        probabilities: torch.Tensor = self.head(summed).softmax(-1)
        return probabilities


class Eigen(nn.Module):
    """Uses an op (aten.linalg_eig) that the ONNX exporter cannot translate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: torch.Tensor = torch.linalg.eigvals(x.reshape(-1, 2, 2))
        return values.real


class RowLoop(nn.Module):
    """Loops over rows in Python, which ties the batch dim to the traced size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([row * 2 for row in x])


class AlwaysDropout(nn.Module):
    """Dropout forced on even in eval mode, so the export cannot match the model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(x, 0.5, training=True)


def make_two_io() -> nn.Module:
    """Two inputs (FP32 features, INT64 counts), two outputs."""
    torch.manual_seed(0)
    return TwoInOut()


def make_sequence() -> nn.Module:
    """Embedding bag over a dynamic sequence dim."""
    torch.manual_seed(0)
    return Sequence()


def make_masked_bag() -> nn.Module:
    """Two inputs with one shared dynamic dim."""
    torch.manual_seed(0)
    return MaskedBag()


def make_eigen() -> nn.Module:
    """A model the exporter cannot handle."""
    return Eigen()


def make_row_loop() -> nn.Module:
    """A model whose export fixes the batch dim."""
    return RowLoop()


def make_dropout() -> nn.Module:
    """A model whose export differs from the eager model."""
    return AlwaysDropout()


def make_broken() -> nn.Module:
    """A factory that fails."""
    raise RuntimeError("no such checkpoint")


def make_keras_two_inputs() -> Any:
    """Keras functional model: features [-1, 4] and a sequence [-1, -1, 3] -> scores and value."""
    import keras

    keras.utils.set_random_seed(0)
    features = keras.Input(shape=(4,), name="features")
    sequence = keras.Input(shape=(None, 3), name="sequence")
    pooled = keras.layers.GlobalAveragePooling1D()(sequence)
    hidden = keras.layers.Concatenate()([keras.layers.Dense(5, activation="relu")(features), pooled])
    scores = keras.layers.Dense(2, activation="softmax", name="scores")(hidden)
    value = keras.layers.Dense(1, name="value")(hidden)
    return keras.Model([features, sequence], [scores, value])


class DictScores(nn.Module):
    """Takes one dict of inputs (features and a boolean mask), returns a named tuple of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, batch: dict[str, torch.Tensor]) -> Scored:
        scores = self.linear(batch["features"]).masked_fill(~batch["mask"][:, :3], 0.0)
        return Scored(scores, batch["mask"].float().sum(1, keepdim=True))


class KeywordScores(nn.Module):
    """forward(**inputs): keyword-only inputs, a dict of outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.linear(inputs["features"]) * inputs["scale"]}


class MaskedMean(nn.Module):
    """One dict input (values and a boolean mask sharing a length), a dict of outputs: for a .pt2 program."""

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        kept = batch["values"] * batch["mask"]
        count = batch["mask"].sum(1, keepdim=True).clamp(min=1)
        return {"mean": kept.sum(1, keepdim=True) / count, "count": count.float()}


class Encoder(nn.Module):
    """encoder.layers.0.attn uses an op the ONNX exporter cannot translate: the failure names that module."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleDict({"attn": Eigen(), "norm": nn.LayerNorm(2)})])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layers[0]
        out: torch.Tensor = layer["norm"](layer["attn"](x))
        return out


class Nested(nn.Module):
    """A model whose untranslatable op sits deep inside."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(x)
        return out


class SmallCNN(nn.Module):
    """Conv, batch norm, pooling and a softmax head on 8x8 images: the fp16 export test."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        probabilities: torch.Tensor = self.head(self.features(image).flatten(1)).softmax(-1)
        return probabilities


def make_nested_eigen() -> nn.Module:
    """Untranslatable op at encoder.layers.0.attn."""
    return Nested()


def make_small_cnn() -> nn.Module:
    """A small CNN for reduced-precision export."""
    torch.manual_seed(0)
    return SmallCNN()


def make_dict_scores() -> nn.Module:
    """Dict input with a boolean mask, named-tuple output."""
    torch.manual_seed(0)
    return DictScores()


def make_keyword_scores() -> nn.Module:
    """forward(**inputs)."""
    torch.manual_seed(0)
    return KeywordScores()
