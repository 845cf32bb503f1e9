"""Prune on several machines under MultiWorkerMirroredStrategy: `fit`, or a custom loop.

`--fit` runs `PrunedModel.fit` and `evaluate`. Keras 3's own `fit` fails under
`tf.distribute.MultiWorkerMirroredStrategy` on TF 2.21 (keras-team/keras#20585:
"Attempt to convert a value (PerReplica...)"); `PrunedModel` works around it.
Without `--fit`, `make_train_step` below is a custom loop with `strategy.run`,
reusable as is: forward, gradients, optimizer update, then
`model.apply_pruning()` inside the same `strategy.run` step. Either way the
pruning update leaves the replicas once per step (`merge_call`), so every
worker computes the same masks from the same all-reduced weights, with no
extra communication.

Run one process per machine with `TF_CONFIG` set, e.g. on two hosts:

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}' \\
        python examples/multi_worker.py --out worker0.npz
    # same on host1 with "index": 1

Without `TF_CONFIG` it runs as a single worker.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import prunemix  # noqa: E402


def make_train_step(strategy, model, optimizer, loss_fn, global_batch_size):
    """A compiled distributed train step that prunes.

    Args:
        strategy: a `tf.distribute` strategy (any: Mirrored, MultiWorker...).
        model: a `prunemix.PrunedModel` created in `strategy.scope()`.
        optimizer: a Keras optimizer created in `strategy.scope()`.
        loss_fn: a Keras loss with `reduction=None` (per-example losses).
        global_batch_size: examples per step over all replicas.

    Returns:
        A `tf.function` taking a distributed iterator, running one step and
        returning the overall sparsity.
    """

    def step(x, y):
        with tf.GradientTape() as tape:
            per_example = loss_fn(y, model(x, training=True))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return model.apply_pruning()

    @tf.function
    def train_step(iterator):
        x, y = next(iterator)
        sparsity = strategy.run(step, args=(x, y))
        return strategy.experimental_local_results(sparsity)[0]

    return train_step


def make_data(size=256, features=16, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, features)).astype("float32")
    y = (x[:, :classes].argmax(axis=1)).astype("int32")
    return x, y


def distributed_dataset(strategy, x, y, global_batch_size):
    """Each input pipeline takes every n-th example, so the union of one
    step's per-replica batches is the same global batch as on one worker."""

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(global_batch_size)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        return ds.batch(per_replica, drop_remainder=True).repeat()

    return strategy.distribute_datasets_from_function(dataset_fn)


def train(strategy, steps=20, global_batch_size=32, seed=0):
    """Trains a small PrunedModel to 80 % sparsity; returns the model."""
    x, y = make_data()
    with strategy.scope():
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((x.shape[1],))
        hidden = keras.layers.Dense(32, activation="relu")(inputs)
        outputs = keras.layers.Dense(4)(hidden)
        model = prunemix.PrunedModel(
            inputs, outputs,
            pruning_schedule=prunemix.PolynomialDecay(0.0, 0.8, 0, steps // 2, frequency=2),
        )
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    train_step = make_train_step(strategy, model, optimizer, loss_fn, global_batch_size)
    iterator = iter(distributed_dataset(strategy, x, y, global_batch_size))
    for _ in range(steps):
        sparsity = train_step(iterator)
    print(f"worker done: step {int(model.pruner.pruning_step.numpy())}, "
          f"sparsity {float(sparsity):.4f}")
    return model


def train_with_fit(strategy, steps=20, global_batch_size=32, seed=0):
    """The same run through `model.fit`, then `evaluate` on the data once."""
    x, y = make_data()
    with strategy.scope():
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((x.shape[1],))
        outputs = keras.layers.Dense(4)(keras.layers.Dense(32, activation="relu")(inputs))
        model = prunemix.PrunedModel(
            inputs, outputs,
            pruning_schedule=prunemix.PolynomialDecay(0.0, 0.8, 0, steps // 2, frequency=2),
        )
        model.compile(
            keras.optimizers.SGD(0.1),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch_size)
    model.fit(data.repeat(), steps_per_epoch=steps, epochs=1, verbose=0)
    model.evaluation = model.evaluate(data, verbose=0, return_dict=True)
    print(f"worker done: step {int(model.pruner.pruning_step.numpy())}, {model.evaluation}")
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", help="write masks and weights to this .npz file")
    parser.add_argument("--fit", action="store_true", help="use model.fit instead")
    args = parser.parse_args(argv)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    model = (train_with_fit if args.fit else train)(strategy, steps=args.steps)
    if args.out:
        arrays = {}
        for i, p in enumerate(model.pruner.pruned_weights):
            arrays[f"mask{i}"] = p.mask.numpy()
            arrays[f"weight{i}"] = p.weight.numpy()
        arrays["step"] = np.array(int(model.pruner.pruning_step.numpy()))
        if hasattr(model, "evaluation"):
            arrays["loss"] = np.array(model.evaluation["loss"])
        np.savez(args.out, **arrays)
    return model


if __name__ == "__main__":
    main()
