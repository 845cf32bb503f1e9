"""Dense vs shrunk latency: half the channels removed by `prunemix.shrink`.

For each `keras.applications` model (random weights, `--size` inputs): the
channel masks of `ChannelGroups` are set at `--sparsity` directly (latency
does not depend on training), `prunemix.shrink` removes them, and the dense
and shrunk models are timed side by side on 1 thread: TensorFlow at batch 1
and `--batch`, LiteRT (default XNNPack delegate) at batch 1. Rounds
alternate the two models (order flipped every round); the median per-call
time is printed with the ratio dense / shrunk. The largest prediction
difference between the masked and the shrunk model (relative to the largest
logit) is printed too.

    python bench/shrink.py                  # MobileNetV2 and ResNet50 (several minutes)
    python bench/shrink.py --models Transformer   # heads and FFN units (Keras layers)
    python bench/shrink.py --models GPT2Backbone BertBackbone  # keras_hub's
    python bench/shrink.py --quick          # smoke run

`Transformer` is 6 blocks of Keras `MultiHeadAttention` (8 heads of 64) and
a feed-forward of 2048 over a 512-wide residual stream (post-LayerNorm),
sequence 128, float inputs: half its heads and half its feed-forward units
are removed (the residual width is tied to LayerNorm and stays).
`GPT2Backbone` and `BertBackbone` are keras_hub's GPT-2 and BERT at the same
size (vocabularies 50257 and 30522), with the same cut. keras_hub derives
the head width as `hidden_dim // num_heads`, so neither config can say "4
heads of 64": `shrink` rebuilds each Transformer layer from its parts (a
Keras `MultiHeadAttention` with 4 heads of 64, the same norms and dense
layers) in a functional model, with a warning that says so.
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
import tensorflow as tf  # noqa: E402

import prunemix  # noqa: E402


def transformer(blocks=6, width=512, heads=8, ffn=2048, sequence=128, classes=10):
    """A post-LayerNorm Transformer encoder of Keras layers, random weights."""
    x = inputs = keras.Input((sequence, width))
    for _ in range(blocks):
        attended = keras.layers.MultiHeadAttention(heads, width // heads)(x, x)
        x = keras.layers.LayerNormalization()(keras.layers.Add()([x, attended]))
        hidden = keras.layers.Dense(ffn, activation="gelu")(x)
        x = keras.layers.LayerNormalization()(
            keras.layers.Add()([x, keras.layers.Dense(width)(hidden)]))
    pooled = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(pooled), name="transformer")


def _application(cls):
    return lambda size: cls(input_shape=(size, size, 3), weights=None,
                            classifier_activation=None)


MODELS = {
    "MobileNetV2": _application(keras.applications.MobileNetV2),
    "ResNet50": _application(keras.applications.ResNet50),
    "MobileNet": _application(keras.applications.MobileNet),
    "EfficientNetB0": _application(keras.applications.EfficientNetB0),
    "DenseNet121": _application(keras.applications.DenseNet121),
    "Transformer": lambda size: transformer(),
    "GPT2Backbone": lambda size: hub_backbone("GPT2Backbone", 50257),
    "BertBackbone": lambda size: hub_backbone("BertBackbone", 30522),
}


def hub_backbone(name: str, vocabulary: int):
    """A keras_hub backbone at the Transformer's size (needs keras-hub)."""
    import keras_hub

    return getattr(keras_hub.models, name)(
        vocabulary_size=vocabulary, num_layers=6, num_heads=8, hidden_dim=512,
        intermediate_dim=2048, max_sequence_length=128)


def main_output(y):
    """A backbone's sequence output (BERT's outputs are a dict), or `y`."""
    return y["sequence_output"] if isinstance(y, dict) else y


def sample(model, batch: int, rng):
    """Inputs for `model`: token ids and a padding mask for a keras_hub
    backbone, else uniform floats (pixels 0-255 for images)."""
    if isinstance(model.input, dict):
        tokens = {"token_ids": rng.integers(0, 1000, (batch, 128)).astype("int32"),
                  "padding_mask": np.ones((batch, 128), "int32"),
                  "segment_ids": np.zeros((batch, 128), "int32")}
        return {k: tokens[k] for k in model.input}
    shape = tuple(model.inputs[0].shape[1:])
    return rng.random((batch, *shape)).astype("float32") * (255 if len(shape) == 3 else 1)


def shrunk_pair(name: str, size: int, sparsity: float):
    """`(dense, masked, shrunk)` for one model with random weights."""
    dense = MODELS[name](size)
    masked = prunemix.prune_model(
        dense, prunemix.ConstantSparsity(sparsity, 0, frequency=1),
        pruning_policy=[prunemix.Rule("*", pattern=prunemix.ChannelGroups())],
    )
    masked.pruner.update_masks(1)
    masked.pruner.apply_masks()
    return dense, masked, prunemix.shrink(masked)


def interleaved(calls: dict, rounds: int, repeat: int) -> dict:
    """Median seconds per call of each zero-argument function, rounds interleaved."""
    times = {k: [] for k in calls}
    for fn in calls.values():
        fn()  # warm up (trace, allocate)
    for r in range(rounds):
        for name in list(calls)[:: 1 if r % 2 == 0 else -1]:
            begin = time.perf_counter()
            for _ in range(repeat):
                calls[name]()
            times[name].append((time.perf_counter() - begin) / repeat)
    return {k: statistics.median(v) for k, v in times.items()}


def tf_calls(models: dict, x) -> dict:
    functions = {k: tf.function(m) for k, m in models.items()}
    return {k: (lambda f=f: main_output(f(x, training=False)).numpy())
            for k, f in functions.items()}


def litert_calls(models: dict, x) -> dict:
    calls = {}
    for name, model in models.items():
        interpreter = prunemix.make_interpreter(prunemix.to_tflite(model, sparse=False),
                                                num_threads=1)
        index = interpreter.get_input_details()[0]["index"]
        # Several named inputs go through the signature runner; one, by index.
        runner = interpreter.get_signature_runner() if isinstance(x, dict) else None

        def run(interpreter=interpreter, index=index, runner=runner):
            if runner is not None:
                runner(**x)
            else:
                interpreter.set_tensor(index, x)
                interpreter.invoke()

        calls[name] = run
    return calls


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["MobileNetV2", "ResNet50"],
                        choices=sorted(MODELS))
    parser.add_argument("--size", type=int, default=128, help="input height and width")
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of channels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.size, args.batch, args.rounds = args.models[:1], 32, 2, 1
    rows = []
    print(f"1 thread, {args.size}x{args.size} images, {args.sparsity:.0%} of channels, "
          f"median of {args.rounds} interleaved rounds")
    print("| model | params dense | shrunk | ratio | without the 1000-class head | max rel. diff "
          f"| TF b1 | TF b{args.batch} | LiteRT b1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name in args.models:
        dense, masked, small = shrunk_pair(name, args.size, args.sparsity)
        x1, xb = sample(dense, 1, rng), sample(dense, args.batch, rng)
        want = main_output(masked.predict(xb, verbose=0))
        got = main_output(small.predict(xb, verbose=0))
        diff = float(np.abs(got - want).max() / np.abs(want).max())
        pair = {"dense": dense, "shrunk": small}
        result = {"params": (dense.count_params(), small.count_params()), "diff": diff}
        for label, calls, repeat in (
            ("TF b1", tf_calls(pair, x1), 20 if not args.quick else 1),
            (f"TF b{args.batch}", tf_calls(pair, xb), 2 if not args.quick else 1),
            ("LiteRT b1", litert_calls(pair, x1), 20 if not args.quick else 1),
        ):
            t = interleaved(calls, args.rounds, repeat)
            result[label] = (t["dense"], t["shrunk"])
        rows.append((name, result))
        cells = [
            f"{d * 1e3:.1f} / {s * 1e3:.1f} ms = {d / s:.2f}x"
            for d, s in (result["TF b1"], result[f"TF b{args.batch}"], result["LiteRT b1"])
        ]
        p_dense, p_small = result["params"]
        head = dense.layers[-1].count_params(), small.layers[-1].count_params()
        body = (p_small - head[1]) / (p_dense - head[0])
        result["body"] = body
        print(f"| {name} | {p_dense:,} | {p_small:,} | {p_small / p_dense:.2f}x | {body:.2f}x "
              f"| {diff:.1e} | "
              + " | ".join(cells) + " |", flush=True)
    return rows


if __name__ == "__main__":
    # 1 thread for TF too (before TensorFlow starts its runtime).
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    main()
