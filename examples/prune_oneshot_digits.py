"""One-shot pruning of the digits CNN: no fine-tuning, accuracy per method.

The CNN of `prune_digits.py` is trained dense on scikit-learn's digits (no
download). Then, each time from the same dense weights, with 256 training
images as calibration data and no training afterwards,
`prunemix.prune_oneshot` prunes every Conv2D and Dense kernel to 50, 75 and
90 % with magnitude, Wanda and SparseGPT, and at 2:4 (all but the first
conv, whose single input channel cannot hold groups of 4). The table gives
test accuracy and the sparsity reached over the pruned kernels.

    python examples/prune_oneshot_digits.py            # the full run (about a minute)
    python examples/prune_oneshot_digits.py --quick    # a smoke run for tests
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import prunemix  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prune_digits import accuracy, cnn_graph, compile_model, load_data  # noqa: E402

SETTINGS = (("50%", 0.5, None), ("75%", 0.75, None), ("90%", 0.9, None),
            ("2:4", 0.5, prunemix.NMSparsity(2, 4)))
# 2:4 runs along input channels: the first conv has one, so it stays dense there.
FIRST_DENSE = [prunemix.Rule("conv_in", exclude=True)]


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = load_data()
    dense = compile_model(keras.Model(*cnn_graph()), 1e-3)
    dense.fit(x_train, y_train, batch_size=32, epochs=2 if args.quick else 30, verbose=0)
    weights = dense.get_weights()
    calibration = x_train[:32 if args.quick else 256]
    rows = [("dense", "", accuracy(dense, x_test, y_test), 0.0)]
    for label, sparsity, pattern in SETTINGS:
        for method in prunemix.oneshot.METHODS:
            model = keras.Model(*cnn_graph())
            model.set_weights(weights)
            report = prunemix.prune_oneshot(model, calibration, sparsity=sparsity,
                                            method=method, pattern=pattern,
                                            policy=FIRST_DENSE if pattern else None)
            rows.append((method, label, accuracy(model, x_test, y_test), report.sparsity))
    print(f"{'method':<10} {'target':<6} {'test accuracy':>13} {'sparsity':>9}")
    for method, label, acc, reached in rows:
        print(f"{method:<10} {label:<6} {acc:>13.2%} {reached:>9.1%}")
    return rows


if __name__ == "__main__":
    main()
