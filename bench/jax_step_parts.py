"""Where the JAX train step's pruning overhead goes (the MLP of overhead.py).

Runs the pruned/dense CPU-time ratio of `fit` for one variant of the pruning
step, in this process (run each variant in a fresh one):

    python bench/jax_step_parts.py full          # what `fit` runs: the step, and
                                                 # the mask update as its own
                                                 # program at due steps
    python bench/jax_step_parts.py in-step       # the update inside the step,
                                                 # under a condition
    python bench/jax_step_parts.py trivial-cond  # in-step, with an update branch
                                                 # that computes nothing
    python bench/jax_step_parts.py mask-only     # only zero the pruned weights
    python bench/jax_step_parts.py skip          # no pruning at all in the step

Medians of 5 interleaved rounds of 3 epochs x 8 steps, batch 256.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"

import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prunemix  # noqa: E402
from bench.overhead import mlp as graph  # noqa: E402  (the same MLP)
from prunemix import _trainers  # noqa: E402


def mask_only(model, state, advance=True, masks="when_due"):
    trainable, non_trainable, *rest = state
    where = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    masks = {id(p.weight): where[id(p.mask)] for p in model.pruner.pruned_weights}
    trainable = [jnp.where(non_trainable[masks[id(v)]], x, 0) if id(v) in masks else x
                 for v, x in zip(model.trainable_variables, trainable, strict=True)]
    return (trainable, non_trainable, *rest), jnp.float32(0)


def main(variant: str) -> None:
    if variant == "skip":
        _trainers.stateless_pruning = lambda model, state, *args: (state, jnp.float32(0))
    elif variant == "mask-only":
        _trainers.stateless_pruning = mask_only
    elif variant == "trivial-cond":
        prunemix.Pruner._schedule_masks = lambda self, schedule, target: []
    elif variant not in ("full", "in-step"):
        raise SystemExit(f"unknown variant {variant!r}")
    dense = keras.Model(*graph())
    pruned = prunemix.PrunedModel(*graph(), pruning_schedule=prunemix.PolynomialDecay(
        0.0, 0.9, begin_step=0, end_step=1000))
    if variant in ("in-step", "trivial-cond"):
        # A train step of its own keeps the update inside the step.
        class InStep(type(pruned)):
            def train_step(self, *args, **kwargs):
                return super().train_step(*args, **kwargs)

        pruned.__class__ = InStep
    rng = np.random.default_rng(0)
    x = rng.random((256 * 8, 1024)).astype("float32")
    y = rng.integers(0, 10, len(x))
    for model in (dense, pruned):
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=256, epochs=1, verbose=0)  # compile
    times = {"dense": [], "pruned": []}
    for r in range(5):
        order = [("dense", dense), ("pruned", pruned)]
        for name, model in order if r % 2 == 0 else order[::-1]:
            start = time.process_time()
            model.fit(x, y, batch_size=256, epochs=3, verbose=0)
            times[name].append(time.process_time() - start)
    ratio = statistics.median(p / d for p, d in zip(times["pruned"], times["dense"], strict=True))
    print(f"{variant}: pruned/dense CPU time {ratio:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "full")
