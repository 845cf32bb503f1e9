"""Custom importance from gradients: prune by |w * grad| (Taylor saliency).

`prunemix.Rule(score=...)` replaces the default score `|w|` with any tensor
shaped like the weight. Here a subclassed model keeps, for each kernel, a
running average of `|w * dL/dw|` (the first-order Taylor estimate of how
much the loss changes when the weight is removed; Molchanov et al. 2017),
updated in its own `train_step`, and the masks prune the lowest saliency.
It is compared with plain magnitude pruning at the same sparsity on
scikit-learn's digits.

    python examples/gradient_saliency.py [--quick]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import prunemix  # noqa: E402


class Classifier(prunemix.PrunedModel):
    """An MLP whose masks follow a saliency score when `saliency=True`."""

    def __init__(self, schedule, saliency=True, decay=0.9, **kwargs):
        policy = [prunemix.Rule("*", score=self.saliency_of)] if saliency else None
        super().__init__(pruning_schedule=schedule, pruning_policy=policy, **kwargs)
        self.use_saliency, self.decay = saliency, decay
        self.hidden = keras.layers.Dense(128, activation="relu")
        self.out = keras.layers.Dense(10)

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.out.build((None, 128))
        self.kernels = [self.hidden.kernel, self.out.kernel]
        self.saliencies = [
            self.add_weight(shape=k.shape, initializer="zeros", trainable=False,
                            name=f"saliency_{i}")
            for i, k in enumerate(self.kernels)
        ]

    def call(self, x):
        return self.out(self.hidden(x))

    def saliency_of(self, pruned_weight):
        """The score of one pruned weight: its running |w * grad|."""
        for kernel, saliency in zip(self.kernels, self.saliencies, strict=True):
            if kernel is pruned_weight.weight:
                return saliency
        raise KeyError(pruned_weight.path)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        grads = tape.gradient(loss, self.trainable_weights)
        if self.use_saliency:
            by_id = {id(w): g for w, g in zip(self.trainable_weights, grads, strict=True)}
            for kernel, saliency in zip(self.kernels, self.saliencies, strict=True):
                taylor = ops.abs(kernel * by_id[id(kernel)])
                saliency.assign(self.decay * saliency + (1 - self.decay) * taylor)
        self.optimizer.apply(grads, self.trainable_weights)
        sparsity = self.apply_pruning()
        return {"loss": loss, "sparsity": sparsity}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        (digits.data / 16.0).astype("float32"), digits.target, test_size=0.2,
        random_state=0, stratify=digits.target,
    )
    epochs = 2 if args.quick else 30
    steps = epochs * int(np.ceil(len(x_train) / 64))
    results = {}
    for saliency in (False, True):
        keras.utils.set_random_seed(0)
        begin, frequency = steps // 4, max(steps // 40, 1)
        end = begin + (steps // 2) // frequency * frequency  # an update lands on end_step
        schedule = prunemix.PolynomialDecay(0.0, 0.95, begin, end, frequency=frequency)
        model = Classifier(schedule, saliency=saliency)
        model.compile(keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
        accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
        name = "|w * grad| saliency" if saliency else "|w| magnitude"
        results[name] = (prunemix.sparsity_report(model).sparsity, accuracy)
    print("| score | sparsity | test accuracy |")
    print("|---|---|---|")
    for name, (sparsity, accuracy) in results.items():
        print(f"| {name} | {sparsity:.2%} | {accuracy:.2%} |")
    return results


if __name__ == "__main__":
    main()
