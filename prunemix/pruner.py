"""The pruner: mask state for every prunable weight of a model, and the math.

`PrunedModel` owns one; research code with its own loop can use one directly.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from prunemix import _keras_compat, patterns, policy, schedules
from prunemix.prunable import prunable_weights_of

__all__ = ["Pruner", "PrunedWeight"]


class PrunedWeight:
    """One pruned weight: its layer, variable, bool mask, path, and how it is pruned.

    How: `schedule`, `pattern`, `score` (None: `|w|`) and sparsity `bounds`.
    """

    __slots__ = ("layer", "weight", "mask", "path", "schedule", "pattern", "score", "bounds")

    def __init__(self, layer, weight, mask, path: str, schedule=None, pattern=None,
                 score=None, bounds=(0.0, 1.0)):
        self.layer, self.weight, self.mask, self.path = layer, weight, mask, path
        self.schedule = schedule
        self.pattern = pattern if pattern is not None else patterns.Magnitude()
        self.score, self.bounds = score, tuple(bounds)

    def scores(self):
        """Importance of each entry (patterns rank by `|scores|`): `score(self)`,
        or the weight itself by default."""
        value = self.weight if self.score is None else self.score(self)
        return ops.cast(value, "float32")

    def __repr__(self) -> str:
        return f"PrunedWeight({self.path!r}, shape={tuple(self.weight.shape)})"


def find_prunable_weights(model) -> list:
    """`(layer, variable)` pairs for every prunable weight below `model`.

    Layers are found at any depth (sublayers, nested models, lists and dicts
    of layers); a variable reached twice (shared layers, a tfmot-style layer
    listing a sublayer's kernel) appears once.
    """
    found, seen = [], set()
    for layer in _keras_compat.nested_layers(model):
        for weight in prunable_weights_of(layer):
            if id(weight) not in seen:
                seen.add(id(weight))
                found.append((layer, weight))
    return found


@keras.saving.register_keras_serializable(package="prunemix")
class Pruner(keras.layers.Layer):
    """Holds the masks, the pruning step and the schedule of one model.

    State (all non-trainable, saved with the model):
    - one `bool` mask per pruned weight (1 byte per weight);
    - `pruned_counts` (int64, one per pruned weight): zeros in each mask;
    - `pruning_step` (int64): how many times `apply()` ran, i.e. optimizer
      updates seen;
    - `sparsity` (float32): fraction of pruned entries over all pruned
      weights after the last mask update.

    It is a layer only so Keras tracks and saves its variables; it is never
    called on data, so `predict` and `evaluate` pay nothing.

    Args:
        pruning_schedule: a `prunemix` schedule or a callable
            `step -> sparsity`.
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Example:

    ```python
    pruner = prunemix.Pruner(prunemix.ConstantSparsity(0.8, frequency=10))
    pruner.track(model)          # model must be built
    for x, y in dataset:
        train_step(x, y)         # your own optimizer step
        pruner.apply()           # update masks when due, zero pruned weights
    ```
    """

    def __init__(self, pruning_schedule: Any, pruning_policy: Any = None, **kwargs):
        super().__init__(**kwargs)
        self.pruning_schedule = schedules.get(pruning_schedule)
        self.pruning_policy = policy.get_policy(pruning_policy)
        self.pruned_weights = []
        self._groups = []
        self._apply_masks_xla = None

    def track(self, model) -> Pruner:
        """Creates a mask for every prunable weight of `model` (built).

        Args:
            model: a built Keras layer or model.

        Returns:
            `self`.

        Raises:
            ValueError: if `model` is not built, has no prunable weights, or a
                layer declares a weight that is missing or not a float; if a
                policy rule matches no weight, excludes every weight, or gives
                a weight a pattern it cannot handle.
        """
        if self.built:
            raise ValueError(f"Pruner '{self.name}' already tracks a model.")
        pairs = find_prunable_weights(model)
        if not pairs and not model.built:
            raise ValueError(
                f"Model '{model.name}' is not built yet; call it on data or "
                "`build()` it before tracking its weights."
            )
        if not pairs:
            raise ValueError(
                f"Model '{model.name}' has no prunable weights. Built-in layers "
                "(Dense, Conv*, Embedding, RNN cells, MultiHeadAttention, ...) are "
                "found at any depth; custom layers declare theirs with "
                "`PrunableMixin`, `@prunable(...)` or `get_prunable_weights()`."
            )
        chosen = self._apply_policy(model, pairs)
        for layer, weight, rule, pattern in chosen:
            mask = self.add_weight(
                name=f"{weight.name}_mask",
                shape=weight.shape,
                dtype="bool",
                initializer="ones",
                trainable=False,
                aggregation="only_first_replica",
            )
            self.pruned_weights.append(
                PrunedWeight(
                    layer, weight, mask, weight.path,
                    schedule=rule.schedule_for(self.pruning_schedule),
                    pattern=pattern, score=rule.score,
                    bounds=(rule.min_sparsity, rule.max_sparsity),
                )
            )
        self._groups = self._schedule_groups()
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), dtype="int64", initializer="zeros",
            trainable=False, aggregation="only_first_replica",
        )
        self.sparsity = self.add_weight(
            name="sparsity", shape=(), dtype="float32", initializer="zeros",
            trainable=False, aggregation="only_first_replica",
        )
        # Pruned entries per weight, as the patterns report them: the overall
        # sparsity without a pass over every mask.
        self.pruned_counts = self.add_weight(
            name="pruned_counts", shape=(len(self.pruned_weights),), dtype="int64",
            initializer="zeros", trainable=False, aggregation="only_first_replica",
        )
        self._index = {id(p): i for i, p in enumerate(self.pruned_weights)}
        self.built = True
        return self

    def _apply_policy(self, model, pairs) -> list:
        """`(layer, weight, rule, pattern)` for every weight the policy prunes."""
        rules = self.pruning_policy
        used = [False] * len(rules)
        chosen = []
        for layer, weight in pairs:
            rule = None
            for i, candidate in enumerate(rules):
                if candidate.matches(layer, weight):
                    used[i], rule = True, candidate
                    break
            rule = rule or policy.Rule()
            if rule.exclude:
                continue
            # The rule's pattern, else the layer class's default, else Magnitude.
            pattern = rule.pattern or getattr(layer, "pruning_pattern", None)
            pattern = patterns.get(pattern)
            pattern.check(layer, weight)
            chosen.append((layer, weight, rule, pattern))
        for i, rule in enumerate(rules):
            if not used[i]:
                layers = ", ".join(sorted({layer.path or layer.name for layer, _ in pairs}))
                raise ValueError(
                    f"Pruning policy rule {i} (match={rule.match!r}) matches no prunable "
                    f"weight of model '{model.name}' that an earlier rule did not take. "
                    f"Layers with prunable weights: {layers}."
                )
        if not chosen:
            raise ValueError(
                f"The pruning policy of model '{model.name}' excludes every prunable weight."
            )
        return chosen

    def _schedule_groups(self) -> list:
        """`(schedule, [pruned weights])` per distinct schedule, in order."""
        groups = {}
        for pruned_weight in self.pruned_weights:
            schedule = pruned_weight.schedule
            key = repr(keras.saving.serialize_keras_object(schedule))
            groups.setdefault(key, (schedule, []))[1].append(pruned_weight)
        pooled = [p for p in self.pruned_weights if p.pattern.is_global]
        if len({repr(keras.saving.serialize_keras_object(p.schedule)) for p in pooled}) > 1:
            raise ValueError(
                "GlobalMagnitude: every weight sharing the global threshold must "
                "follow the same schedule; these do not: "
                + ", ".join(p.path for p in pooled) + "."
            )
        return list(groups.values())

    def _check_built(self):
        if not self.built:
            raise ValueError(
                f"Pruner '{self.name}' tracks no model yet; call `track(model)` first."
            )

    def update_masks(self, step=None):
        """Recomputes every mask for the schedules' sparsity at `step`.

        Args:
            step: pruning step; defaults to the current `pruning_step`.

        Returns:
            The new overall sparsity (float32 scalar tensor).
        """
        self._check_built()
        if step is None:
            step = self.pruning_step
        step = ops.convert_to_tensor(step)
        for schedule, group in self._groups:
            self._update_group(schedule, group, step)
        return self._recount()

    def _update_group(self, schedule, group, step):
        target = schedule(step)
        updates = []  # (pruned weight, keep mask, pruned count)
        pooled = [p for p in group if p.pattern.is_global]
        if pooled:
            new = patterns.global_masks(
                [p.scores() for p in pooled], target, [p.bounds for p in pooled]
            )
            for pruned_weight, keep in zip(pooled, new, strict=True):
                count = ops.sum(ops.cast(ops.logical_not(keep), "int32"))
                updates.append((pruned_weight, keep, count))
        for pruned_weight in group:
            if pruned_weight.pattern.is_global:
                continue
            low, high = pruned_weight.bounds
            sparsity = ops.clip(target, low, high)
            keep, count = pruned_weight.pattern.mask_and_count(pruned_weight.scores(), sparsity)
            if isinstance(pruned_weight.pattern, patterns.NMSparsity):
                # A fixed pattern: nothing is pruned while the target is 0.
                off = ops.less_equal(target, 0.0)
                keep = ops.logical_or(keep, off)
                count = ops.where(off, 0, count)
            updates.append((pruned_weight, keep, count))
        for pruned_weight, keep, _ in updates:
            pruned_weight.mask.assign(keep)
        self.pruned_counts.assign(tf.tensor_scatter_nd_update(
            ops.convert_to_tensor(self.pruned_counts),
            [[self._index[id(p)]] for p, _, _ in updates],
            ops.stack([ops.cast(count, "int64") for _, _, count in updates]),
        ))
        return ops.convert_to_tensor(True)

    def _recount(self):
        total = sum(math.prod(p.weight.shape) for p in self.pruned_weights)
        pruned = ops.sum(ops.cast(self.pruned_counts, "float64"))
        self.sparsity.assign(ops.cast(pruned / total, "float32"))
        return ops.convert_to_tensor(self.sparsity)

    def apply_masks(self) -> None:
        """Sets every pruned entry of every tracked weight to exactly zero."""
        self._check_built()
        if self._apply_masks_xla is None:
            # One XLA cluster masks every weight in place in a single pass
            # each: half the time of TF's separate select and assign kernels
            # (bench/overhead.py). Inside an XLA train step it is inlined.
            self._apply_masks_xla = tf.function(self._apply_masks, jit_compile=True)
        self._apply_masks_xla()

    def _apply_masks(self):
        for pruned_weight in self.pruned_weights:
            weight = pruned_weight.weight
            weight.assign(ops.where(pruned_weight.mask, weight, ops.zeros_like(weight)))

    def apply(self, advance: Any = True):
        """One pruning step: advance the step, update masks when due, mask.

        Call it once after each optimizer update. Traceable: it runs inside
        `tf.function`, XLA and `fit()`'s train step, with `ops.cond` deciding
        whether the masks are due.

        Args:
            advance: whether an optimizer update happened in this step (a
                Python bool or bool scalar tensor). When false (a step skipped
                by loss scaling, or a gradient-accumulation micro-step) the
                step does not advance and the masks do not change, but pruned
                weights are still set to zero.

        Returns:
            The overall sparsity after this step (float32 scalar tensor).
        """
        self._check_built()
        advance = ops.convert_to_tensor(advance, dtype="bool")
        replica = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and replica is not None:
            # Under a tf.distribute strategy, leave the replicas once: the
            # step advances once, masks are computed once from the (already
            # all-reduced, identical) weights and written to every replica.
            def cross_replica(strategy, advance):
                first = strategy.experimental_local_results(advance)[0]
                return self._apply(first, distributed=True)

            return replica.merge_call(cross_replica, args=(advance,))
        return self._apply(advance, distributed=False)

    def _apply(self, advance, distributed: bool):
        self.pruning_step.assign_add(ops.cast(advance, "int64"))
        step = ops.convert_to_tensor(self.pruning_step)
        dues = [
            ops.logical_and(advance, schedule.should_prune(step)) for schedule, _ in self._groups
        ]

        def update():
            # One `cond` per step in the common one-schedule case (each cond
            # costs a function call on CPU); nested ones only when due.
            if len(self._groups) == 1:
                self._update_group(*self._groups[0], step)
            else:
                for due, (schedule, group) in zip(dues, self._groups, strict=True):
                    ops.cond(
                        due,
                        lambda schedule=schedule, group=group: self._update_group(
                            schedule, group, step
                        ),
                        lambda: ops.convert_to_tensor(False),
                    )
            return self._recount()

        any_due = dues[0] if len(dues) == 1 else ops.any(ops.stack(dues))
        sparsity = ops.cond(any_due, update, lambda: ops.convert_to_tensor(self.sparsity))
        if distributed:
            self._apply_masks()
        else:
            self.apply_masks()
        return sparsity

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "pruning_schedule": keras.saving.serialize_keras_object(
                self.pruning_schedule
            ),
            "pruning_policy": policy.serialize_policy(self.pruning_policy),
        }
