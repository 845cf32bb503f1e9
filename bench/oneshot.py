"""One-shot pruning at GPT-2-small size: time and peak memory.

Builds a keras_hub `GPT2CausalLM` of GPT-2 small's size (12 layers, width
768, 12 heads, FFN 3072, vocabulary 50257: 124M weights, random, nothing
downloaded) and prunes its 72 attention and feed-forward kernels (85M
weights) to 50 % with `prunemix.prune_oneshot`, from `--samples` calibration
sequences of `--length` random tokens. Prints the seconds per method and the
process's peak resident memory (each method in a fresh process, so the peaks
do not mix), next to the model's own size.

    python bench/oneshot.py                       # sparsegpt, wanda and magnitude
    python bench/oneshot.py --methods sparsegpt --samples 16 --length 128
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def child(method: str, samples: int, length: int, layers: int) -> None:
    import keras_hub  # the `hub` extra
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import prunemix

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50257, num_layers=layers, num_heads=12, hidden_dim=768,
        intermediate_dim=3072, max_sequence_length=1024)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    rng = np.random.default_rng(0)
    data = {"token_ids": rng.integers(0, 50257, (samples, length)),
            "padding_mask": np.ones((samples, length), bool)}
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    report = prunemix.prune_oneshot(lm, data, sparsity=0.5, method=method, batch_size=8)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    params = lm.count_params()
    print(f"RESULT {method} {seconds:.1f} {peak:.2f} {built:.2f} {params} {len(report)} "
          f"{report.size} {report.sparsity:.6f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=["sparsegpt", "wanda", "magnitude"])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12, help="fewer for a smoke run")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.samples, args.length, args.layers)
    results = {}
    for method in args.methods:
        out = subprocess.run(
            [sys.executable, __file__, "--child", method, "--samples", str(args.samples),
             "--length", str(args.length), "--layers", str(args.layers)],
            capture_output=True, text=True, check=True).stdout
        fields = out.split("RESULT")[-1].split()
        seconds, peak, built = (float(v) for v in fields[1:4])
        params, weights, size, sparsity = int(fields[4]), int(fields[5]), int(fields[6]), \
            float(fields[7])
        results[method] = {"seconds": seconds, "peak_gib": peak, "built_gib": built}
        print(f"{method:<10} {seconds:7.1f} s  peak RSS {peak:.2f} GiB (model built: "
              f"{built:.2f} GiB)  {weights} kernels, {size:,} weights at {sparsity:.2%} "
              f"of a {params:,}-weight model, {args.samples}x{args.length} calibration "
              "tokens", flush=True)
    return results


if __name__ == "__main__":
    main()
