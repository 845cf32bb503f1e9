"""A custom training loop with `tf.GradientTape`, outside `fit`.

The step is a `tf.function(jit_compile=True)`: forward pass, gradients,
optimizer update, then `model.apply_pruning()` — the same pruning work
`fit` does, as one call.

    python examples/gradient_tape_loop.py [--quick]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import prunemix  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    digits = load_digits()
    x, y = (digits.data / 16.0).astype("float32"), digits.target.astype("int32")
    steps = 20 if args.quick else 300

    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(128, activation="relu")(inputs)
    model = prunemix.PrunedModel(
        inputs, keras.layers.Dense(10)(hidden),
        pruning_schedule=prunemix.PolynomialDecay(0.0, 0.9, 0, steps * 2 // 3, frequency=10),
    )
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=True)
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
        return loss, model.apply_pruning()

    rng = np.random.default_rng(0)
    for step in range(1, steps + 1):
        batch = rng.integers(0, len(x), 64)
        loss, sparsity = train_step(x[batch], y[batch])
        if step % max(steps // 5, 1) == 0:
            print(f"step {step:4d}  loss {float(loss):.3f}  sparsity {float(sparsity):.3f}")
    accuracy = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    print(prunemix.sparsity_report(model))
    print(f"training-set accuracy {accuracy:.2%}")
    return model, accuracy


if __name__ == "__main__":
    main()
