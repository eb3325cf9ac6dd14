"""The digits data both examples train on: sklearn's bundled 8x8 images, raw 0..16 pixel values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exporters import ExportError

LABELS = [str(digit) for digit in range(10)]
MIN_ACCURACY = 0.90
SEED = 0


@dataclass(frozen=True)
class Split:
    """Train and held-out rows: pixels as float32 [n, 64] on the raw 0..16 scale, labels as int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_split() -> Split:
    """A fixed, stratified 75/25 split; the data ships with scikit-learn, nothing is downloaded."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return Split(x_train, y_train, x_test, y_test)


def check_accuracy(name: str, probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Print held-out accuracy and fail the build below MIN_ACCURACY."""
    accuracy = float(np.mean(probabilities.argmax(axis=1) == labels))
    print(f"{name}: held-out accuracy {accuracy:.3f} on {len(labels)} images", flush=True)
    if accuracy < MIN_ACCURACY:
        raise ExportError(f"{name}: held-out accuracy {accuracy:.3f} is below {MIN_ACCURACY:.2f}")
    return accuracy
