"""Custom layers made prunable by the mixin and by the decorator.

`GatedDense` mixes in `prunemix.PrunableMixin` and lists its prunable weights
in `prunable_weights`; `Rescale` is a third-party-style layer made prunable
with `@prunemix.prunable("scale")` without touching its body. A subclassed
`PrunedModel` uses both on scikit-learn's digits; biases stay dense.

    python examples/custom_layers.py [--quick]
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


@keras.saving.register_keras_serializable(package="examples")
class GatedDense(prunemix.PrunableMixin, keras.layers.Layer):
    """A gated linear unit; `kernel` and `gate` are pruned, `bias` is not."""

    prunable_weights = ("kernel", "gate")

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.gate = self.add_weight(shape=(input_shape[-1], self.units), name="gate")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, x):
        return ops.matmul(x, self.kernel) * ops.sigmoid(ops.matmul(x, self.gate)) + self.bias

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="examples")
@prunemix.prunable("scale")
class Rescale(keras.layers.Layer):
    """A per-feature scale and shift; only `scale` is declared prunable."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")
        self.shift = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="shift")

    def call(self, x):
        return x * self.scale + self.shift


class DigitsNet(prunemix.PrunedModel):
    def __init__(self, sparsity=0.8, end_step=100, **kwargs):
        super().__init__(
            pruning_schedule=prunemix.PolynomialDecay(0.0, sparsity, 0, end_step, frequency=10),
            **kwargs,
        )
        self.rescale = Rescale()
        self.gated = GatedDense(64)
        self.head = keras.layers.Dense(10)

    def call(self, x):
        return self.head(keras.activations.relu(self.gated(self.rescale(x))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    digits = load_digits()
    x, y = (digits.data / 16.0).astype("float32"), digits.target
    epochs = 1 if args.quick else 10
    steps = epochs * -(-len(x) // 64)
    model = DigitsNet(end_step=max(steps // 2, 1))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    report = prunemix.sparsity_report(model)
    print(report)
    print(f"training accuracy {history.history['accuracy'][-1]:.2%}")
    return model, report


if __name__ == "__main__":
    main()
