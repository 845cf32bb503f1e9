"""LiteRT latency: dense vs pruned for speed (`latency_policy()`), side by side.

For each model, a dense `.tflite` and one pruned with
`prunemix.latency_policy()` (blocks of 4 consecutive inputs per output unit
in every Dense/EinsumDense kernel) at each `--sparsity`, plus, for contrast,
one pruned unstructured (`Magnitude`) at the first sparsity. Masks are set
from the (random) weights directly: latency does not depend on training.
LiteRT applies its XNNPack delegate to dense float ops by default; ops with
sparse weights stay on LiteRT's own kernels. Both are timed: `XNNPack on`
(what a user gets by default) and `off` (every op on LiteRT's built-in
kernels). Each configuration (batch, threads) runs rounds that alternate the
interpreters (order flipped every round); each round times `--calls`
invocations; the median per-call time is printed with the ratio dense /
pruned, and `tflite_report`'s verdict of which kernel ran.

    python bench/latency.py                 # full run (a few minutes)
    python bench/latency.py --quick         # smoke run
    python bench/latency.py --int8          # also dynamic-range int8 (blocks of 16)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import prunemix  # noqa: E402
from prunemix.litert import DENSIFIED, SPARSE_KERNEL  # noqa: E402


def mlp():
    inputs = keras.Input((784,))
    x = keras.layers.Dense(2048, activation="relu")(inputs)
    x = keras.layers.Dense(2048, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="mlp")


def transformer_block(seq=16, width=256, heads=4):
    """Attention projections (EinsumDense) and a feed-forward (EinsumDense)."""
    inputs = keras.Input((seq, width))
    attention = keras.layers.MultiHeadAttention(heads, width // heads)(inputs, inputs)
    x = keras.layers.LayerNormalization()(inputs + attention)
    h = keras.layers.EinsumDense("btd,df->btf", (seq, 4 * width), activation="relu")(x)
    y = keras.layers.EinsumDense("btf,fd->btd", (seq, width))(h)
    return keras.Model(inputs, keras.layers.LayerNormalization()(x + y), name="transformer")


def digits_cnn():
    from examples.prune_digits import cnn_graph

    inputs, outputs = cnn_graph()
    return keras.Model(inputs, outputs, name="digits_cnn")


MODELS = {"mlp": mlp, "transformer": transformer_block, "digits_cnn": digits_cnn}


def pruned_copy(dense, sparsity, policy):
    """A stripped copy of `dense` whose masks are set for `sparsity` at once."""
    copy = keras.models.clone_model(dense)
    copy.set_weights(dense.get_weights())
    pruned = prunemix.PrunedModel(
        copy.inputs, copy.outputs,
        pruning_schedule=prunemix.ConstantSparsity(sparsity, frequency=1),
        pruning_policy=policy,
    )
    pruned.pruner.update_masks(step=1)
    pruned.pruner.apply_masks()
    return prunemix.strip_pruning(pruned)


def time_calls(interpreter, x, calls):
    index = interpreter.get_input_details()[0]["index"]
    start = time.perf_counter()
    for _ in range(calls):
        interpreter.set_tensor(index, x)
        interpreter.invoke()
    return (time.perf_counter() - start) / calls


def interpreter_for(content, batch, threads, shape, xnnpack):
    # "on": what make_interpreter picks (off for sparse int8 weights, which XNNPack gets wrong).
    interpreter = prunemix.make_interpreter(content, num_threads=threads,
                                            xnnpack=None if xnnpack else False)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], (batch, *shape))
    interpreter.allocate_tensors()
    return interpreter


def kernels(report) -> str:
    sparse, densified = report.count_storage(SPARSE_KERNEL), report.count_storage(DENSIFIED)
    rest = len(report) - sparse - densified
    return f"{sparse} sparse kernel, {densified} densified, {rest} dense"


def compare(name, contents, batches, threads_list, rounds, calls, xnnpack):
    """Median ms per call for every content; rows of the table."""
    shape = tuple(contents["dense"][1])
    rows = []
    for batch in batches:
        for threads in threads_list:
            rng = np.random.default_rng(0)
            x = rng.random((batch, *shape), dtype=np.float32)
            interpreters = {k: interpreter_for(c, batch, threads, shape, xnnpack)
                            for k, (c, _) in contents.items()}
            for interpreter in interpreters.values():
                time_calls(interpreter, x, 2)  # warm-up
            times = {k: [] for k in interpreters}
            order = list(interpreters)
            for r in range(rounds):
                for k in order if r % 2 == 0 else order[::-1]:
                    times[k].append(time_calls(interpreters[k], x, calls))
            for k in order:
                if k.startswith("dense"):
                    continue
                dense = statistics.median(times["dense int8" if k.startswith("int8") else "dense"])
                pruned = statistics.median(times[k])
                rows.append((name, k, "on" if xnnpack else "off", batch, threads, dense * 1e3,
                             pruned * 1e3, dense / pruned))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--sparsity", nargs="*", type=float, default=[0.9, 0.95])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 64])
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--xnnpack", nargs="*", choices=["on", "off"], default=["on", "off"],
                        help="LiteRT's default XNNPack delegate (dense ops) on, off, or both")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls, args.sparsity = 3, 3, args.sparsity[:1]
    try:
        import ai_edge_litert  # noqa: F401

        runtime = "ai-edge-litert"
    except ImportError:
        runtime = "tf.lite.Interpreter (ai-edge-litert not installed)"
    print(f"runtime: {runtime}; medians of {args.rounds} interleaved rounds x {args.calls} calls")
    rows, verdicts = [], []
    for name in args.models:
        keras.utils.set_random_seed(0)
        dense = MODELS[name]()
        shape = dense.inputs[0].shape[1:]
        contents = {"dense": (prunemix.to_tflite(dense, sparse=False), shape)}
        variants = [(f"blocks {s:.0%}", s, prunemix.latency_policy(), None)
                    for s in args.sparsity]
        variants.append((f"unstructured {args.sparsity[0]:.0%}", args.sparsity[0],
                         [prunemix.Rule([keras.layers.Dense, keras.layers.EinsumDense]),
                          prunemix.Rule("*", exclude=True, required=False)], None))
        if args.int8:
            contents["dense int8"] = (prunemix.to_tflite(dense, sparse=False, quantize="int8"),
                                      shape)
            variants.append((f"int8 blocks16 {args.sparsity[0]:.0%}", args.sparsity[0],
                             prunemix.latency_policy(quantized=True), "int8"))
        for label, sparsity, policy, quantize in variants:
            content = prunemix.to_tflite(pruned_copy(dense, sparsity, policy), quantize=quantize)
            contents[label] = (content, shape)
            verdicts.append((name, label, kernels(prunemix.tflite_report(content)), len(content)))
        for xnnpack in args.xnnpack:
            rows += compare(name, contents, args.batches, args.threads, args.rounds, args.calls,
                            xnnpack == "on")
    print("\n| model | pruned | XNNPack | batch | threads | dense ms | pruned ms "
          "| dense / pruned |")
    print("|---|---|---|---|---|---|---|---|")
    for name, label, xnnpack, batch, threads, d, p, ratio in rows:
        print(f"| {name} | {label} | {xnnpack} | {batch} | {threads} | {d:.3f} | {p:.3f} "
              f"| {ratio:.2f}x |")
    print("\n| model | pruned | weights in the .tflite (tflite_report) | file bytes |")
    print("|---|---|---|---|")
    for name, label, verdict, size in verdicts:
        print(f"| {name} | {label} | {verdict} | {size} |")


if __name__ == "__main__":
    main()
