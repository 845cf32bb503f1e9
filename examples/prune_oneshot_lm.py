"""One-shot pruning of a small causal LM, measured on text nobody here wrote.

A byte-level `GPT2CausalLM` (keras_hub, 2 layers, width 128) is trained for a
few minutes on the first 90 % of CPython's documentation text
(`pydoc_data.topics`, about 465 K characters, shipped with every Python).
Then, each time from the same dense weights and with the same 128
calibration windows, `prunemix.prune_oneshot` prunes every Dense and
EinsumDense kernel (attention and feed-forward; embeddings stay dense)
with magnitude, Wanda and SparseGPT, at 50 % unstructured and at 2:4.
The table gives the validation perplexity on the last 10 % of the text.
The last row is SparseGPT 2:4 followed by a short gradual fine-tune: the
one-shot masks seed a `PrunedModel` (the same task class) that trains on.

    python examples/prune_oneshot_lm.py            # the full run (a few minutes on 2 cores)
    python examples/prune_oneshot_lm.py --quick    # a smoke run for tests
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import prunemix  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pydoc_lm import byte_windows, compile_lm, dense_lm, perplexity  # noqa: E402

PATTERNS = {"50%": None, "2:4": prunemix.NMSparsity(2, 4)}


def input_norm_ratio(lm, calibration) -> float:
    """Largest / median input feature norm, the largest over the feed-forward
    input layers: how many outlier features Wanda has to work with."""
    norms = prunemix.oneshot.input_feature_norms(lm, calibration)
    return max(float(n.max() / np.median(n)) for path, n in norms.items()
               if "feedforward_intermediate" in path)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    args = parser.parse_args(argv)
    width, layers, train, epochs, calibration_size, tune_epochs = (
        (32, 1, 96, 1, 8, 1) if args.quick else (128, 2, 8192, 8, 128, 1))
    keras.utils.set_random_seed(0)
    data = byte_windows(train, seed=0)
    validation = byte_windows(64 if args.quick else 1024, seed=1, validation=True)
    calibration = {k: v[:calibration_size] for k, v in byte_windows(calibration_size, 2)[0].items()}
    no_embeddings = [prunemix.Rule("*embedding*", exclude=True)]

    start = time.perf_counter()
    dense = dense_lm(width, layers)
    compile_lm(dense, 2e-3)
    dense.fit(*data, batch_size=32, epochs=epochs, verbose=0)
    trained = time.perf_counter() - start
    weights = dense.get_weights()
    rows = [("dense", "", perplexity(dense, validation), 0.0, 0.0)]
    for label, pattern in PATTERNS.items():
        for method in prunemix.oneshot.METHODS:
            lm = dense_lm(width, layers)
            lm.set_weights(weights)
            compile_lm(lm, 1e-3)
            began = time.perf_counter()
            report = prunemix.prune_oneshot(lm, calibration, sparsity=0.5, method=method,
                                            pattern=pattern, policy=no_embeddings)
            rows.append((method, label, perplexity(lm, validation), report.sparsity,
                         time.perf_counter() - began))

    # SparseGPT 2:4, then a short gradual fine-tune that keeps 2:4.
    lm = dense_lm(width, layers)
    lm.set_weights(weights)
    steps = tune_epochs * math.ceil(train / 32)
    pruned = prunemix.prune_model(
        lm, prunemix.ConstantSparsity(0.5, begin_step=0, frequency=max(steps // 4, 1)),
        pruning_policy=[*no_embeddings, prunemix.Rule("*", pattern=PATTERNS["2:4"])])
    began = time.perf_counter()
    report = prunemix.prune_oneshot(pruned, calibration, method="sparsegpt",
                                    pattern=PATTERNS["2:4"], policy=no_embeddings)
    compile_lm(pruned, 5e-4)
    pruned.fit(*data, batch_size=32, epochs=tune_epochs, verbose=0)
    rows.append(("sparsegpt + fine-tune", "2:4", perplexity(pruned, validation),
                 float(pruned.pruner.sparsity), time.perf_counter() - began))

    ratio = input_norm_ratio(dense, calibration)
    print(f"byte-level GPT2CausalLM, {layers} layers, width {width}; dense trained "
          f"{trained:.0f} s; largest/median FFN input norm {ratio:.1f}x")
    print(f"{'method':<24} {'pattern':<8} {'val. perplexity':>15} {'increase':>9} "
          f"{'sparsity':>9} {'time':>7}")
    base = rows[0][2]
    for method, label, ppl, sparsity, seconds in rows:
        print(f"{method:<24} {label:<8} {ppl:>15.3f} {ppl - base:>+9.3f} {sparsity:>9.1%} "
              f"{seconds:>6.1f}s")
    return rows


if __name__ == "__main__":
    main()
