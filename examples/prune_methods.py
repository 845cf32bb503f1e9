"""Compare pruning methods on scikit-learn's digits at matched sparsity.

One dense CNN is trained, then each method fine-tunes a copy of it with the
same `PolynomialDecay` schedule: per-layer magnitude, one global magnitude
threshold, 2:4 (N:M along input channels), 1x4 blocks, and whole output
units by L2 norm. The first conv (1 input channel, so no 2:4 groups) and the
10-way output layer stay dense for every method, through one
`prunemix.Rule` policy, so all methods prune exactly the same weights.

    python examples/prune_methods.py            # full run (about 2 min on 2 cores)
    python examples/prune_methods.py --quick    # a smoke run for tests
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import prunemix  # noqa: E402
from examples.prune_digits import accuracy, cnn_graph, compile_model, load_data, prune_from  # noqa: E402

METHODS = {
    "per-layer magnitude": prunemix.Magnitude(),
    "global magnitude": prunemix.GlobalMagnitude(),
    "2:4 (N:M)": prunemix.NMSparsity(2, 4),
    "block 1x4": prunemix.BlockSparsity((1, 4)),
    "structured (units, L2)": prunemix.StructuredSparsity("output", "l2"),
}


def policy(pattern) -> list:
    """Keep the first and last layers dense; prune the rest with `pattern`."""
    return [
        prunemix.Rule(["conv_in", "logits"], exclude=True),
        prunemix.Rule("*", pattern=pattern),
    ]


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = parser.parse_args(argv)
    dense_epochs, prune_epochs = (2, 2) if args.quick else (30, 20)
    sparsities = (0.5,) if args.quick else (0.5, 0.9)
    batch_size = 64

    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = load_data()
    dense = compile_model(keras.Model(*cnn_graph()), 1e-3)
    dense.fit(x_train, y_train, batch_size=batch_size, epochs=dense_epochs, verbose=0)
    rows = [("dense", "-", 0.0, accuracy(dense, x_test, y_test), "-")]
    for sparsity in sparsities:
        for name, pattern in METHODS.items():
            if isinstance(pattern, prunemix.NMSparsity) and sparsity != 0.5:
                continue  # 2:4 is 50% by construction
            keras.utils.set_random_seed(0)
            stripped = prunemix.strip_pruning(prune_from(
                dense, x_train, y_train, sparsity, prune_epochs, batch_size, policy(pattern)
            ))
            report = prunemix.sparsity_report(stripped)
            pruned = [r for r in report if r.layer not in ("conv_in", "logits")]
            reached = sum(r.zeros for r in pruned) / sum(r.size for r in pruned)
            layers = " / ".join(f"{r.sparsity:.1%}" for r in pruned)
            rows.append((name, f"{sparsity:.0%}", reached, accuracy(stripped, x_test, y_test),
                         layers))

    print("| method | target | sparsity of pruned layers | conv / dense | test accuracy |")
    print("|---|---|---|---|---|")
    for name, target, reached, acc, layers in rows:
        print(f"| {name} | {target} | {reached:.2%} | {layers} | {acc:.2%} |")
    return rows


if __name__ == "__main__":
    main()
