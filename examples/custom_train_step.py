"""A research model with its own `train_step`: a contrastive loss.

The model overrides `train_step` (a SimCLR-style NT-Xent loss on two noisy
views of each digit) and calls `self.apply_pruning()` once after its
optimizer update. `fit` still compiles the whole step, pruning included.

    python examples/custom_train_step.py [--quick]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import prunemix  # noqa: E402


class Contrastive(prunemix.PrunedModel):
    def __init__(self, schedule, temperature=0.2, **kwargs):
        super().__init__(pruning_schedule=schedule, **kwargs)
        self.temperature = temperature
        self.encoder = keras.Sequential([
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(32),
        ])
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, x):
        return self.encoder(x)

    def view(self, x):
        return x + keras.random.normal(ops.shape(x), stddev=0.1)

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            a = ops.normalize(self(self.view(x), training=True), axis=-1)
            b = ops.normalize(self(self.view(x), training=True), axis=-1)
            logits = ops.matmul(a, ops.transpose(b)) / self.temperature
            labels = ops.arange(ops.shape(x)[0])
            loss = ops.mean(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            )
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights, strict=True))
        sparsity = self.apply_pruning()  # after the optimizer update
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result(), "sparsity": sparsity}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    x = (load_digits().data / 16.0).astype("float32")
    epochs = 1 if args.quick else 10
    steps = epochs * (len(x) // 128)
    schedule = prunemix.PolynomialDecay(0.0, 0.75, 0, max(steps // 2, 1), frequency=5)
    model = Contrastive(schedule)
    model.compile(keras.optimizers.Adam(1e-3))
    history = model.fit(x, batch_size=128, epochs=epochs, verbose=0)
    print(prunemix.sparsity_report(model))
    print(f"contrastive loss {history.history['loss'][0]:.3f} -> {history.history['loss'][-1]:.3f}")
    return model, history


if __name__ == "__main__":
    main()
