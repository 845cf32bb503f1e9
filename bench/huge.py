"""Mask-update cost on huge weights, next to one optimizer step on them.

For an Embedding of 1,000,000 x 64 (64M weights) and a 4096 x 4096 Dense
kernel (16.7M), each in a `PrunedModel` at 90 % sparsity, prints the median
time of: one mask update (prunemix's radix select), one full `tf.sort` of the
magnitudes (tfmot's way to find the threshold), and one Adam step on the same
weight with a dense gradient. Rounds are interleaved; times are medians. Also
prints the process's peak resident memory.

    python bench/huge.py [--rounds 5]
    python bench/huge.py --gpt2     # every prunable weight of a 124M GPT-2 backbone

With `--gpt2`, the update covers all 74 pruned weights of a GPT-2-small-sized
keras_hub backbone, the sort one `tf.sort` per weight, and the Adam step all
of them.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prunemix  # noqa: E402


def embedding_model(rows, dim):
    inputs = keras.Input((4,), dtype="int32")
    outputs = keras.layers.Embedding(rows, dim)(inputs)
    return inputs, outputs


def dense_model(units):
    inputs = keras.Input((units,))
    return inputs, keras.layers.Dense(units, use_bias=False)(inputs)


def gpt2_small():
    """A keras_hub GPT-2 backbone of GPT-2 small's size (124M weights, random)."""
    import keras_hub  # the `hub` extra

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
        intermediate_dim=3072, max_sequence_length=1024)
    return backbone.inputs, backbone.outputs


def measure(name, graph, rounds):
    model = prunemix.PrunedModel(*graph, pruning_schedule=prunemix.ConstantSparsity(0.9))
    pruner = model.pruner
    weights = [p.weight for p in pruner.pruned_weights]
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(weights)
    gradients = [tf.random.normal(w.shape, stddev=1e-3) for w in weights]

    update = tf.function(lambda: pruner.update_masks(tf.constant(1, tf.int64)))
    sort = tf.function(lambda: [tf.sort(tf.reshape(tf.abs(w.value), [-1]))[-1] for w in weights])
    adam = tf.function(lambda: optimizer.apply_gradients(zip(gradients, weights, strict=True)))
    fns = {"mask update (radix select)": update, "full sort": sort, "Adam step": adam}
    for fn in fns.values():
        fn()  # trace and compile
    times = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, fn())
            times[key].append(time.perf_counter() - start)
    median = {key: statistics.median(v) * 1000 for key, v in times.items()}
    size = sum(p.mask.numpy().size for p in pruner.pruned_weights)
    pruned = sum(int((~p.mask.numpy()).sum()) for p in pruner.pruned_weights)
    shape = " x ".join(map(str, weights[0].shape)) if len(weights) == 1 else \
        f"{len(weights)} weights"
    print(f"\n{name}: {shape} = {size:,} weights, {pruned / size:.2%} pruned")
    for key, ms in median.items():
        print(f"  {key:28s} {ms:9.1f} ms")
    ratio = median["mask update (radix select)"] / median["Adam step"]
    print(f"  mask update / Adam step: {ratio:.2f}; full sort / mask update: "
          f"{median['full sort'] / median['mask update (radix select)']:.1f}x")
    return ratio


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--gpt2", action="store_true",
                        help="only a GPT-2-small-sized keras_hub backbone (the `hub` extra)")
    args = parser.parse_args(argv)
    if args.gpt2:
        results = {"GPT-2 small": measure("GPT-2 small backbone (keras_hub, random)",
                                          gpt2_small(), args.rounds)}
    else:
        results = {
            "Embedding": measure("Embedding", embedding_model(args.rows, 64), args.rounds),
            "Dense": measure("Dense kernel", dense_model(4096), args.rounds),
        }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"\npeak resident memory: {peak:.2f} GiB; TF {tf.__version__}, "
          f"{os.cpu_count()} CPU cores")
    return results


if __name__ == "__main__":
    main()
