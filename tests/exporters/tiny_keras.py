"""Tiny real Keras models for the exporter tests beyond the basic functional one, as <module>:<factory>."""

from __future__ import annotations

from typing import Any


def _keras_data() -> Any:
    import numpy as np

    return np.random.default_rng(0).normal(2.0, 3.0, (64, 4)).astype("float32")


def make_keras_sequential() -> Any:
    """Sequential model whose last layer is named: that name is the output name."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((4,), name="features"),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(5, name="scores"),
        ]
    )


def _keras_scorer() -> Any:
    import keras

    class Scorer(keras.Model):
        """Two dense layers, no declared inputs or output names."""

        def __init__(self) -> None:
            super().__init__()
            self.hidden = keras.layers.Dense(6, activation="relu")
            self.head = keras.layers.Dense(2)

        def call(self, pixels: Any) -> Any:
            return self.head(self.hidden(pixels))

    keras.utils.set_random_seed(0)
    return Scorer()


def make_keras_subclassed() -> Any:
    """Subclassed model built by one call on data: no declared inputs, shapes from the build."""
    import numpy as np

    model = _keras_scorer()
    model(np.zeros((2, 4), dtype="float32"))
    return model


def make_keras_unbuilt() -> Any:
    """The same subclassed model, never called: its input shapes are unknown."""
    return _keras_scorer()


def make_keras_lookup() -> Any:
    """IntegerLookup (a hash table) in front of a Dense layer."""
    import keras

    keras.utils.set_random_seed(0)
    ids = keras.Input((3,), name="ids", dtype="int64")
    lookup = keras.layers.IntegerLookup(vocabulary=[3, 5, 7, 9], output_mode="multi_hot")(ids)
    return keras.Model(ids, keras.layers.Dense(2, name="scores")(lookup))


def make_keras_preprocessing() -> Any:
    """Functional model with adapted preprocessing layers: Normalization, Rescaling and Discretization."""
    import keras

    keras.utils.set_random_seed(0)
    data = _keras_data()
    features = keras.Input((4,), name="features")
    normalization = keras.layers.Normalization()
    normalization.adapt(data)
    discretization = keras.layers.Discretization(num_bins=4, output_mode="one_hot")
    discretization.adapt(data)
    scaled = keras.layers.Rescaling(0.5, offset=1.0)(features)
    joined = keras.layers.Concatenate()([normalization(features), scaled, discretization(features[:, :1])])
    return keras.Model(features, keras.layers.Dense(3, name="scores")(joined))
