"""Step-time overhead of pruning: PrunedModel vs the same dense model.

For each model, a dense `keras.Model` and a `prunemix.PrunedModel` (same
graph, `PolynomialDecay` to 90 %, masks recomputed every 100 steps, the
default) train on the same data. Rounds alternate dense/pruned (the order
flips every round) and each round times `fit` over `--steps` steps after a
warm-up; the median per-step ratio is printed. Also printed: bytes of
pruning state per pruned weight, the extra ops in the `predict` graph, and
the cost of one mask update (radix select, ours) against a full `tf.sort`
threshold (tfmot's method) on the same weights.

    python bench/overhead.py            # full run
    python bench/overhead.py --quick    # smoke run
    python bench/overhead.py --mirrored # the same under MirroredStrategy
    python bench/overhead.py --first-step  # first step, pruned vs dense: MobileNetV2,
                                           # GPT-2 (keras_hub, the `hub` extra)
    python bench/overhead.py --backend jax # the same models on JAX (the `jax` extra);
                                           # the one-update cost against `jnp.sort`
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

if "--backend" in sys.argv:  # before Keras is imported
    os.environ["KERAS_BACKEND"] = sys.argv[sys.argv.index("--backend") + 1]
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prunemix  # noqa: E402


def mlp():
    inputs = keras.Input((1024,))
    x = keras.layers.Dense(2048, activation="relu")(inputs)
    x = keras.layers.Dense(2048, activation="relu")(x)
    return inputs, keras.layers.Dense(10)(x)


def cnn32():
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    return inputs, keras.layers.Dense(10)(x)


def digits_cnn():
    from examples.prune_digits import cnn_graph

    return cnn_graph()


CASES = {
    "(a) MLP 1024-2048-2048-10, batch 256": (mlp, 256),
    "(b) CNN 32x32x3 (3 conv + dense), batch 256": (cnn32, 256),
    "(c) digits CNN, batch 64": (digits_cnn, 64),
}


class _OneDevice:
    """No `tf.distribute` strategy (JAX): `scope()` does nothing."""

    scope = staticmethod(contextlib.nullcontext)


def make_pair(graph_fn, strategy):
    with strategy.scope():
        dense = keras.Model(*graph_fn())
        schedule = prunemix.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000)
        pruned = prunemix.PrunedModel(*graph_fn(), pruning_schedule=schedule)
        pruned.set_weights(dense.get_weights() + [w.numpy() for w in pruned.pruner.weights])
        for model in (dense, pruned):
            model.compile(
                "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            )
    return dense, pruned


def time_fit(model, data, steps) -> tuple:
    """(wall, CPU) seconds per step. CPU time (all threads) is the steadier
    measure on a shared machine whose CPU quota throttles wall time."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def predict_ops(model, shape):
    if keras.backend.backend() != "tensorflow":
        return "n/a"
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((None, *shape), tf.float32)).graph
    return len(graph.get_operations())


def jax_mask_fns(pruner):
    """One mask update at step 1000 (the pruner's own, stateless, under
    `jax.jit`) and the full-sort threshold, on the same weights."""
    import jax
    import jax.numpy as jnp

    weights = [p.weight for p in pruner.pruned_weights]
    variables = [*weights, *pruner.variables]
    ours_jit = jax.jit(lambda values: [new for _, new in pruner.stateless_apply(
        list(zip(variables, values, strict=True)), True)[0]])

    def by_sort(values):
        out = []
        for w in values[:len(weights)]:
            flat = jnp.sort(jnp.abs(w).reshape(-1))
            k = jnp.round(0.9 * flat.size).astype("int32")
            out.append(jnp.abs(w) > flat[k - 1])
        return out

    pruner.pruning_step.assign(999)  # the next step, 1000, is due
    values = [v.value for v in variables]
    sort_jit = jax.jit(by_sort)
    return (lambda: jax.block_until_ready(ours_jit(values)),
            lambda: jax.block_until_ready(sort_jit(values)))


def mask_update_ms(pruner, repeats=3):
    """Median ms of one mask update: ours vs a full-sort threshold."""
    if keras.backend.backend() == "jax":
        ours, by_sort = jax_mask_fns(pruner)
        return _median_ms(ours, by_sort, repeats, lambda out: out)
    ours = tf.function(lambda: pruner.update_masks(tf.constant(1000, tf.int64)))

    @tf.function
    def by_sort():
        out = []
        for p in pruner.pruned_weights:
            flat = tf.sort(tf.reshape(tf.abs(p.weight), [-1]))
            k = tf.cast(tf.round(0.9 * tf.cast(tf.size(flat), tf.float64)), tf.int32)
            out.append(tf.abs(p.weight) > tf.gather(flat, k - 1))
        return out

    return _median_ms(ours, by_sort, repeats,
                      lambda out: tf.nest.map_structure(lambda t: t.numpy(), out))


def _median_ms(ours, by_sort, repeats, fetch) -> dict:
    times = {"radix": [], "sort": []}
    for fn in (ours, by_sort):
        fn()  # compile
    for _ in range(repeats):
        for fn, name in ((ours, "radix"), (by_sort, "sort")):
            start = time.perf_counter()
            fetch(fn())
            times[name].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def run_case(name, graph_fn, batch_size, steps, rounds, strategy):
    dense, pruned = make_pair(graph_fn, strategy)
    shape = tuple(dense.input_shape[1:])
    rng = np.random.default_rng(0)
    x = rng.random((batch_size * 8, *shape)).astype("float32")
    y = rng.integers(0, 10, len(x))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).repeat().prefetch(2)
    for model in (dense, pruned):  # warm-up: trace, compile, first mask update
        time_fit(model, data, 3)
    wall, cpu, dense_times = [], [], []
    for r in range(rounds):
        order = (dense, pruned) if r % 2 == 0 else (pruned, dense)
        t = {id(m): time_fit(m, data, steps) for m in order}
        wall.append(t[id(pruned)][0] / t[id(dense)][0])
        cpu.append(t[id(pruned)][1] / t[id(dense)][1])
        dense_times.append(t[id(dense)][0])
    step_ms = statistics.median(dense_times) * 1000
    state_bytes = sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in pruned.pruner.weights
    )
    pruned_count = sum(int(np.prod(p.weight.shape)) for p in pruned.pruner.pruned_weights)
    update = mask_update_ms(pruned.pruner)
    print(f"\n{name}")
    print(f"  dense step: {step_ms:.1f} ms; pruned/dense ratio, median of {rounds} "
          f"interleaved rounds of {steps} steps: wall time {statistics.median(wall):.3f}, "
          f"CPU time {statistics.median(cpu):.3f}")
    print(f"    wall ratios: {' '.join(f'{r:.3f}' for r in wall)}")
    print(f"    CPU ratios:  {' '.join(f'{r:.3f}' for r in cpu)}")
    print(f"  pruning state: {state_bytes / pruned_count:.4f} bytes per pruned weight "
          f"({pruned_count} weights; {state_bytes - pruned_count} bytes besides the masks)")
    print(f"  predict graph ops: dense {predict_ops(dense, shape)}, "
          f"pruned {predict_ops(pruned, shape)}")
    print(f"  one mask update: radix select {update['radix']:.1f} ms, full sort "
          f"{update['sort']:.1f} ms ({update['sort'] / update['radix']:.1f}x)")
    return statistics.median(wall), statistics.median(cpu)


def first_step_model(name: str, pruned: bool):
    """A model for the first-step timing, compiled, and its data (x, y)."""
    rng = np.random.default_rng(0)
    schedule = prunemix.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000, frequency=1)
    if name == "MobileNetV2":
        dense = keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None,
                                               classes=10)
        x = rng.random((8, 96, 96, 3)).astype("float32")
        y = rng.integers(0, 10, 8)
        model = prunemix.prune_model(dense, schedule) if pruned else dense
        model.compile("adam", "sparse_categorical_crossentropy")
        return model, x, y
    import keras_hub  # the `hub` extra

    # GPT-2 small's 12 layers, at a third of its width and a small vocabulary.
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=1000, num_layers=12, num_heads=4, hidden_dim=256,
        intermediate_dim=1024, max_sequence_length=64)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    # The pruned model is the task itself, pruning (`prune_model` keeps the class).
    model = prunemix.prune_model(lm, schedule) if pruned else lm
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = {"token_ids": rng.integers(0, 1000, (8, 64)), "padding_mask": np.ones((8, 64), bool)}
    return model, x, rng.integers(0, 1000, (8, 64))


def first_step_child(name: str, kind: str) -> None:
    """Prints the seconds of the first `train_on_batch` (trace + compile +
    the first mask update) in this fresh process."""
    model, x, y = first_step_model(name, kind == "pruned")
    start = time.perf_counter()
    model.train_on_batch(x, y)
    print(f"FIRST_STEP {time.perf_counter() - start:.3f}")


def first_step_times(names, rounds: int) -> dict:
    """Median first-step seconds, dense and pruned, each in a fresh process,
    alternating (order flipped every round)."""
    import subprocess

    results = {}
    for name in names:
        times = {"dense": [], "pruned": []}
        for r in range(rounds):
            for kind in ("dense", "pruned")[:: 1 if r % 2 == 0 else -1]:
                out = subprocess.run(
                    [sys.executable, __file__, "--first-step-child", name, kind],
                    capture_output=True, text=True, check=True).stdout
                times[kind].append(float(out.split("FIRST_STEP")[-1]))
        results[name] = {k: statistics.median(v) for k, v in times.items()}
        d, p = results[name]["dense"], results[name]["pruned"]
        print(f"  first step (trace + compile + first mask update), {name}, median of "
              f"{rounds} fresh processes each: dense {d:.1f} s, pruned {p:.1f} s "
              f"({p / d:.2f}x)", flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description="pruned vs dense step time")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--case", choices=list("abc"), action="append")
    parser.add_argument("--first-step", nargs="*", metavar="MODEL",
                        choices=["MobileNetV2", "GPT2"],
                        help="time the first training step instead (fresh processes)")
    parser.add_argument("--first-step-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default="tensorflow",
                        help="the Keras backend (read before Keras is imported)")
    parser.add_argument(
        "--mirrored", action="store_true",
        help="train under MirroredStrategy on 2 logical CPUs (a fresh process)",
    )
    args = parser.parse_args(argv)
    if args.first_step_child:
        return first_step_child(*args.first_step_child)
    if args.first_step is not None:
        return first_step_times(args.first_step or ["MobileNetV2", "GPT2"],
                                1 if args.quick else args.rounds)
    strategy = tf.distribute.get_strategy()
    if keras.backend.backend() != "tensorflow":
        strategy = _OneDevice()
    if args.mirrored:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * 2,
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        print(f"under MirroredStrategy, {strategy.num_replicas_in_sync} replicas")
    steps, rounds = (4, 2) if args.quick else (args.steps, args.rounds)
    results = {}
    for name, (graph_fn, batch_size) in CASES.items():
        if args.case and name[1] not in args.case:
            continue
        if args.quick:
            batch_size = 8
        keras.utils.set_random_seed(0)
        results[name] = run_case(name, graph_fn, batch_size, steps, rounds, strategy)
    if keras.backend.backend() == "jax":
        import jax

        print(f"\nbackend: JAX {jax.__version__} ({jax.devices()[0].platform})", end="; ")
    else:
        print("\nbackend: TensorFlow", end="; ")
    print(f"TF {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPU cores, devices: "
          f"{[d.device_type for d in tf.config.list_physical_devices()]}")
    return results


if __name__ == "__main__":
    main()
