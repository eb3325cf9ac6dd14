"""digits_cnn: a Keras CNN on raw digits images, exported to a SavedModel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporters import step
from exporters.examples.digits import LABELS, SEED, Split, check_accuracy
from exporters.keras_export import KerasSource, prepare_tensorflow
from exporters.pipeline import Checks, export_model
from exporters.writer import Target

NAME = "digits_cnn"
EPOCHS = 12


def make_model() -> Any:
    """Raw 0..16 pixels in [8, 8, 1], probabilities out: rescaling and softmax live inside the model."""
    import keras

    image = keras.Input(shape=(8, 8, 1), name="image")
    x = keras.layers.Rescaling(1 / 16)(image)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    probabilities = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(image, probabilities, name=NAME)


def train(split: Split) -> Any:
    """A few epochs of Adam with fixed seeds; a few seconds on two cores."""
    prepare_tensorflow()
    import keras

    keras.utils.set_random_seed(SEED)
    model = make_model()
    model.compile(optimizer=keras.optimizers.Adam(0.005), loss="sparse_categorical_crossentropy")
    model.fit(split.x_train.reshape(-1, 8, 8, 1), split.y_train, epochs=EPOCHS, batch_size=32, verbose=0)
    return model


def build(models: Path, split: Split, replace: bool) -> float:
    """Train, check accuracy, then export, verify and write version 1; returns the held-out accuracy."""
    with step(f"{NAME}: training a Keras CNN"):
        model = train(split)
    images = split.x_test.reshape(-1, 8, 8, 1)
    source = KerasSource(model, [], [])
    accuracy = check_accuracy(NAME, source.predict({"image": images})["probabilities"], split.y_test)
    checks = Checks(max_batch_size=32, sample={"image": images})
    export_model(source, Target(models, NAME, "1", replace=replace), checks, LABELS)
    return accuracy
