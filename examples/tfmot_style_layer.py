"""A layer written for tfmot, used unchanged.

tfmot's `PrunableLayer` protocol is one method, `get_prunable_weights()`.
A layer that implements it (here a low-rank dense layer that prunes both
factors) is prunable in prunemix as it is: no wrapper, no mixin.

    python examples/tfmot_style_layer.py [--quick]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from keras import ops  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import prunemix  # noqa: E402


class LowRankDense(keras.layers.Layer):
    """y = x @ (u @ v) + b, as one might have written it for tfmot."""

    def __init__(self, units, rank, **kwargs):
        super().__init__(**kwargs)
        self.units, self.rank = units, rank

    def build(self, input_shape):
        self.u = self.add_weight(shape=(input_shape[-1], self.rank), name="u")
        self.v = self.add_weight(shape=(self.rank, self.units), name="v")
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="b")

    def call(self, x):
        return ops.matmul(ops.matmul(x, self.u), self.v) + self.b

    def get_prunable_weights(self):  # tfmot's protocol
        return [self.u, self.v]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    digits = load_digits()
    x, y = (digits.data / 16.0).astype("float32"), digits.target
    epochs = 1 if args.quick else 10

    inputs = keras.Input((64,))
    hidden = keras.layers.Activation("relu")(LowRankDense(128, rank=16)(inputs))
    model = prunemix.PrunedModel(
        inputs, keras.layers.Dense(10)(hidden),
        pruning_schedule=prunemix.ConstantSparsity(0.5, begin_step=0, frequency=20),
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    report = prunemix.sparsity_report(model)
    print(report)
    print(f"training accuracy {history.history['accuracy'][-1]:.2%}")
    return model, report


if __name__ == "__main__":
    main()
