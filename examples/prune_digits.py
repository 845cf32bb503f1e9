"""Prune a small CNN on scikit-learn's digits (no download) and print a table.

Trains the CNN dense, then, starting from the dense weights each time,
fine-tunes a `prunemix.PrunedModel` with `PolynomialDecay` to 50, 75, 87.5,
90 and 95 % sparsity. For each: sparsity reached, test accuracy, and the
gzipped size of the stripped weights against the dense model's.

    python examples/prune_digits.py            # the full run (< 3 min on 2 cores)
    python examples/prune_digits.py --quick    # a smoke run for tests

The 90 % model is saved with its masks to `build/digits_pruned_90.keras`
(`python -m prunemix report build/digits_pruned_90.keras`), and converted to
LiteRT with the converter's sparse encoding; the second table compares
file sizes with the dense model.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import prunemix  # noqa: E402
from prunemix.litert import SPARSE_KERNEL  # noqa: E402

SPARSITIES = (0.5, 0.75, 0.875, 0.9, 0.95)
CHANNELS = (0.5, 0.75)  # fractions of channels removed


def load_data(seed: int = 0):
    """Digits as 8x8x1 float images in [0, 1], split 80/20 (stratified)."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(
        x, digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )


def cnn_graph():
    """Inputs and outputs of the CNN (functional API)."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_in")(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return inputs, outputs


def compile_model(model, learning_rate: float):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def prune_from(dense, x_train, y_train, sparsity, epochs, batch_size, policy=None):
    """Fine-tune a pruned copy of `dense` up to `sparsity`; return the PrunedModel.

    `policy`: optional `prunemix.Rule`s (which layers, which pattern).
    """
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    schedule = prunemix.PolynomialDecay(
        0.0, sparsity, begin_step=0, end_step=int(steps * 0.7), frequency=max(steps // 40, 1)
    )
    model = prunemix.PrunedModel(
        *cnn_graph(), pruning_schedule=schedule, pruning_policy=policy, name="digits_cnn"
    )
    for src, dst in zip(dense.layers, model.layers, strict=True):
        dst.set_weights(src.get_weights())
    compile_model(model, 5e-4)
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0)
    return model


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    parser.add_argument(
        "--save", metavar="DIR", default="build",
        help="write the 90%% pruned model (with its masks) and the LiteRT files here",
    )
    args = parser.parse_args(argv)
    dense_epochs, prune_epochs = (2, 2) if args.quick else (30, 20)
    sparsities = SPARSITIES[-2:] if args.quick else SPARSITIES
    os.makedirs(args.save, exist_ok=True)
    batch_size = 64

    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = load_data()
    start = time.perf_counter()
    dense = compile_model(keras.Model(*cnn_graph()), 1e-3)
    dense.fit(x_train, y_train, batch_size=batch_size, epochs=dense_epochs, verbose=0)
    dense_size = prunemix.compressed_size(dense)
    rows = [("dense", 0.0, accuracy(dense, x_test, y_test), dense_size)]
    shipped, lite = {}, {"dense": prunemix.to_tflite(dense, sparse=False)}
    runs = [(s, f"{s:.1%}", None) for s in sparsities]
    # Pruned for speed: the Dense kernels in LiteRT's sparse-kernel blocks.
    runs.append((0.9, "90.0% for speed", prunemix.latency_policy()))
    # Whole channels, removed by `shrink`: a smaller dense model.
    channels = [prunemix.Rule("*", pattern=prunemix.ChannelGroups())]
    for sparsity in CHANNELS[:1] if args.quick else CHANNELS:
        runs.append((sparsity, f"{sparsity:.0%} of channels, shrunk", channels))
    for sparsity, label, policy in runs:
        pruned = prune_from(dense, x_train, y_train, sparsity, prune_epochs, batch_size, policy)
        stripped = prunemix.strip_pruning(pruned)
        if policy is channels:
            stripped = prunemix.shrink(pruned)
            lite[label] = prunemix.to_tflite(stripped, sparse=False)
        if sparsity == 0.9:
            lite[label] = prunemix.to_tflite(stripped)
            if policy is None:
                shipped = ship(dense, pruned, x_test, args.save)
        reached = (1 - stripped.count_params() / dense.count_params() if policy is channels
                   else prunemix.sparsity_report(stripped).sparsity)
        rows.append(
            (
                label,
                reached,
                accuracy(stripped, x_test, y_test),
                prunemix.compressed_size(stripped),
            )
        )

    print(f"digits CNN: {len(x_train)} train / {len(x_test)} test images, "
          f"{dense.count_params()} weights")
    print("| target | sparsity reached | test accuracy | gzipped weights | vs dense |")
    print("|---|---|---|---|---|")
    for name, reached, acc, size in rows:
        print(f"| {name} | {reached:.2%} | {acc:.2%} | {size / 1024:.1f} KiB "
              f"| {dense_size / size:.2f}x smaller |")
    print("(shrunk rows: weights removed, as a fraction of the dense model's)")
    if shipped:
        print()
        print("| 90% model, file | dense | pruned | smaller |")
        print("|---|---|---|---|")
        for name, (dense_bytes, pruned_bytes) in shipped.items():
            print(f"| {name} | {dense_bytes / 1024:.1f} KiB | {pruned_bytes / 1024:.1f} KiB "
                  f"| {dense_bytes / pruned_bytes:.2f}x |")
    print()
    print("| LiteRT, batch 1, 1 thread | weights run by sparse kernels | median latency "
          "| vs dense |")
    print("|---|---|---|---|")
    latency = litert_latency(lite, x_test[:1], rounds=3 if args.quick else 15)
    for name, content in lite.items():
        report = prunemix.tflite_report(content)
        print(f"| {name} | {report.count_storage(SPARSE_KERNEL)} of {len(report)} "
              f"| {latency[name] * 1e6:.1f} us | {latency['dense'] / latency[name]:.2f}x |")
    print(f"total time: {time.perf_counter() - start:.0f} s")
    return rows


def litert_latency(contents: dict, x, rounds: int, calls: int = 200) -> dict:
    """Median seconds per call of each `.tflite`, rounds interleaved (1 thread)."""
    interpreters = {k: prunemix.make_interpreter(c, num_threads=1) for k, c in contents.items()}
    times = {k: [] for k in contents}
    for r in range(rounds):
        for name in list(contents)[:: 1 if r % 2 == 0 else -1]:
            interpreter = interpreters[name]
            index = interpreter.get_input_details()[0]["index"]
            begin = time.perf_counter()
            for _ in range(calls):
                interpreter.set_tensor(index, x)
                interpreter.invoke()
            times[name].append((time.perf_counter() - begin) / calls)
    return {k: float(np.median(v)) for k, v in times.items()}


def ship(dense, pruned, x_test, directory: str) -> dict:
    """Saves the pruned model and LiteRT files; returns sizes (dense, pruned).

    The LiteRT model runs in TensorFlow's interpreter and must agree with
    Keras to 1e-4 on the test images.
    """
    pruned.save(os.path.join(directory, "digits_pruned_90.keras"))
    stripped = prunemix.strip_pruning(pruned)
    dense_lite = prunemix.to_tflite(dense, sparse=False)
    sparse_lite = prunemix.to_tflite(stripped)
    for name, content in (("dense", dense_lite), ("pruned_90", sparse_lite)):
        with open(os.path.join(directory, f"digits_{name}.tflite"), "wb") as f:
            f.write(content)
    with warnings.catch_warnings():  # tf.lite.Interpreter's move to ai_edge_litert
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=sparse_lite)
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    outputs = runner(**{name: x_test[:64]})
    (lite,) = outputs.values()
    expected = stripped.predict(x_test[:64], verbose=0)
    if not np.allclose(lite, expected, atol=1e-4):
        raise AssertionError(f"LiteRT differs from Keras by {np.abs(lite - expected).max()}")
    return {
        "weights, gzip": (prunemix.compressed_size(dense), prunemix.compressed_size(stripped)),
        "LiteRT .tflite (sparse encoding)": (len(dense_lite), len(sparse_lite)),
        "LiteRT .tflite, gzip": (len(gzip.compress(dense_lite)), len(gzip.compress(sparse_lite))),
    }


if __name__ == "__main__":
    main()
