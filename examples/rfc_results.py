"""Regenerate the README's two result tables and the sparsity-vs-accuracy plot.

Reproduces, in kind, the Keras Pruning API RFC's results on data that ships
with packages: a vision table (the digits CNN, dense vs 50-95 % sparsity;
`prune_digits.py`) and a sequence table (an LSTM encoder-decoder reversing
digit sequences, dense vs 80/85/90 %, the RFC's GNMT sparsities;
`prune_seq2seq.py`). Writes the plot to `docs/sparsity_vs_accuracy.png`
when matplotlib is installed (`pip install prunemix[plot]`).

    python examples/rfc_results.py            # about 7 minutes on 2 cores
    python examples/rfc_results.py --quick    # a smoke run for tests
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from examples import prune_digits, prune_seq2seq  # noqa: E402

DEFAULT_PNG = os.path.join(os.path.dirname(__file__), "..", "docs", "sparsity_vs_accuracy.png")


def plot(vision: list, sequence: list, path: str) -> str | None:
    """Writes the plot; returns its path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install prunemix[plot]): no plot written")
        return None
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    for rows, label, marker in (
        # The curve is unstructured pruning; the rows pruned for speed and the
        # shrunk ones (channels removed) are not on it.
        ([row for row in vision if "speed" not in row[0] and "channels" not in row[0]],
         "digits CNN (test accuracy)", "o"),
        (sequence, "LSTM seq2seq, reverse (token accuracy)", "s"),
    ):
        sparsity = [100 * row[1] for row in rows]
        accuracy = [100 * row[2] for row in rows]
        axis.plot(sparsity, accuracy, marker=marker, label=label)
    axis.set_xlabel("sparsity of prunable weights (%)")
    axis.set_ylabel("accuracy (%)")
    axis.set_title("prunemix: accuracy vs sparsity")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    parser.add_argument("--png", default=DEFAULT_PNG, help="where to write the plot")
    parser.add_argument("--save", default="build", help="where prune_digits saves its files")
    args = parser.parse_args(argv)
    quick = ["--quick"] if args.quick else []
    print("## Vision: digits CNN\n")
    vision = prune_digits.main([*quick, "--save", args.save])
    print("\n## Sequence: LSTM encoder-decoder\n")
    sequence = prune_seq2seq.main(quick)
    png = plot(vision, sequence, args.png)
    if png:
        print(f"\nplot: {os.path.normpath(png)}")
    return {"vision": vision, "sequence": sequence, "png": png}


if __name__ == "__main__":
    main()
