"""The pruner: the one owner of a model's pruning state, and the update math.

`PrunedModel` owns one; research code with its own loop can use one directly.
"""

from __future__ import annotations

import json
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from prunemix import _backend, _validate, policy, saving, schedules
from prunemix.prunable import find_prunable_weights, locate_prunable_weights

__all__ = ["Pruner", "PrunedWeight", "find_prunable_weights"]

class PrunedWeight:
    """One pruned weight: its layer, variable, bool mask, path, and how it is pruned.

    `path` is the weight's path relative to the model by layer names (what
    `Rule` globs match); `key` its stable identity, under which its mask is
    saved; `spec` how the policy resolved it (a `prunemix.policy.Spec`),
    read through `schedule`, `pattern`, `score` (None: `|w|`) and sparsity
    `bounds`.
    """

    __slots__ = ("layer", "weight", "mask", "path", "key", "spec")

    def __init__(self, layer, weight, mask, path: str, spec, key: str | None = None):
        self.layer, self.weight, self.mask, self.path = layer, weight, mask, path
        self.key, self.spec = key or spec.key, spec

    schedule = property(lambda self: self.spec.schedule, doc="The weight's schedule.")
    pattern = property(lambda self: self.spec.pattern, doc="The weight's pattern.")
    score = property(lambda self: self.spec.score, doc="Its score function, or None: `|w|`.")
    bounds = property(lambda self: self.spec.bounds, doc="`(min_sparsity, max_sparsity)`.")

    def scores(self):
        """Importance of each entry (patterns rank by `|scores|`): `score(self)`,
        or the weight itself by default."""
        value = self.weight if self.score is None else self.score(self)
        return ops.cast(value, "float32")

    def __repr__(self) -> str:
        return f"PrunedWeight({self.path!r}, shape={tuple(self.weight.shape)})"


class _Manifest(tf.train.experimental.PythonState):
    """The keys of the pruned weights, in `tf.train.Checkpoint`s: restoring a
    checkpoint made for other pruned weights is an error naming both sides."""

    def __init__(self, pruner):
        self._pruner = pruner

    def serialize(self):
        return json.dumps(self._pruner._keys())

    def deserialize(self, string_value):
        saved = json.loads(string_value)
        saving.check_keys(saved, self._pruner._keys(), "the checkpoint", self._pruner.name)


class _MaskTable(tf.Module):
    """Masks by weight key, so `tf.train.Checkpoint` names each by its weight."""

    def __init__(self, masks: dict, manifest):
        super().__init__(name=None)
        self.masks = masks
        self.manifest = manifest


@keras.saving.register_keras_serializable(package="prunemix")
class Pruner(keras.layers.Layer):
    """Holds the masks, the pruning step, the schedule and the policy of one model.

    State (all non-trainable, saved with the model):
    - one `bool` mask per pruned weight (1 byte per weight), saved under the
      weight's key, never by position;
    - `pruned_counts` (int64; int32 on JAX without x64; one per pruned weight): zeros in each mask;
    - `pruning_step` (int64, or int32 likewise): how many times `apply()` ran, i.e. optimizer
      updates seen.

    `sparsity` (pruned fraction over all pruned weights) is derived from the
    counts. The policy is resolved once, at `track`, into one spec per weight
    (schedule, pattern, score, bounds); the resolution is saved and a reload
    uses it instead of matching the rules again.

    It is a layer only so Keras tracks and saves its variables; it is never
    called on data, so `predict` and `evaluate` pay nothing.

    Args:
        pruning_schedule: a `prunemix` schedule or a callable
            `step -> sparsity`.
        pruning_policy: optional list of `prunemix.Rule`s.
        resolution: a saved resolution (from `get_config()`); used instead of
            matching the rules. You do not pass it yourself.
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

    _prunemix_is_pruner = True

    def __init__(
        self,
        pruning_schedule: Any,
        pruning_policy: Any = None,
        resolution: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.pruning_schedule = schedules.get(pruning_schedule)
        self.pruning_policy = policy.get_policy(pruning_policy)
        self._resolution = resolution
        self.pruned_weights = []
        self.skipped = []
        self._groups = []
        self._schedules = []
        self._apply_masks_xla = None
        self.expect_state(True)

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
                a weight a pattern it cannot handle; if the schedule returns a
                value that is not a sparsity; if a saved resolution names
                weights the model does not have.
        """
        if self.built:
            raise ValueError(f"Pruner '{self.name}' already tracks a model.")
        located = locate_prunable_weights(model)
        if not located and not model.built:
            raise ValueError(
                f"Model '{model.name}' is not built yet; call it on data or "
                "`build()` it before tracking its weights."
            )
        if not located:
            raise ValueError(
                f"Model '{model.name}' has no prunable weights. Built-in layers "
                "(Dense, Conv*, Embedding, RNN cells, MultiHeadAttention, ...) are "
                "found at any depth; custom layers declare theirs with "
                "`PrunableMixin`, `@prunable(...)` or `get_prunable_weights()`."
            )
        located, specs = policy.plan(model, located, self.pruning_policy,
                                     self.pruning_schedule, self._resolution, self.name)
        self.skipped = [path for _, weight, path, _ in located if not math.prod(weight.shape)]
        masks = {}
        for layer, weight, path, key in located:
            if key not in specs:
                continue
            mask = self.add_weight(
                name=f"{key.replace('/', '.')}_mask", shape=weight.shape, dtype="bool",
                initializer="ones", trainable=False, aggregation="only_first_replica",
            )
            masks[key] = mask
            self.pruned_weights.append(PrunedWeight(layer, weight, mask, path, specs[key]))
        self._groups = self._make_groups()
        for _, pattern, members in self._groups:
            # A planned pattern's masks follow its weights' order: never positions
            # that drifted.
            if pattern.keys not in (None, [p.key for p in members]):
                raise AssertionError(f"prunemix: {pattern!r} was planned for other weights.")
        # The distinct schedules, in order: one mask-update decision each.
        self._schedules = list(dict.fromkeys(s for s, _, _ in self._groups))
        if tf.executing_eagerly():
            for schedule in self._schedules:
                schedules.check_values(schedule)
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), dtype=_backend.wide("int64"), initializer="zeros",
            trainable=False, aggregation="only_first_replica",
        )
        self.pruned_counts = self.add_weight(
            name="pruned_counts", shape=(len(self.pruned_weights),), dtype=_backend.wide("int64"),
            initializer="zeros", trainable=False, aggregation="only_first_replica",
        )
        # The last step whose schedule value was not a sparsity (0: none) and
        # the value: masks stay as they were; `PrunedModel.fit` raises. Not saved.
        self.invalid_target = self.add_weight(
            name="invalid_target", shape=(2,), dtype=_backend.wide("float64"), initializer="zeros",
            trainable=False, aggregation="only_first_replica",
        )
        self._index = {id(p): i for i, p in enumerate(self.pruned_weights)}
        self._total = sum(math.prod(p.weight.shape) for p in self.pruned_weights)
        self._by_key = _MaskTable(masks, _Manifest(self))
        self.built = True
        return self

    def _keys(self) -> list:
        return [p.key for p in self.pruned_weights]

    def _make_groups(self) -> list:
        """`(schedule, pattern, [pruned weights])` per distinct pair, in order.

        Schedules compare by meaning: built-in ones by their config, any other
        (a callable, a custom class) by identity, so two callables never share
        an update.
        """
        groups = {}
        for p in self.pruned_weights:
            groups.setdefault((p.schedule, p.pattern), []).append(p)
        return [(schedule, pattern, members) for (schedule, pattern), members in groups.items()]

    def _check_built(self):
        if not self.built:
            raise ValueError(
                f"Pruner '{self.name}' tracks no model yet; call `track(model)` first."
            )

    @property
    def sparsity(self):
        """Fraction of pruned entries over all pruned weights (float32 scalar
        tensor), from `pruned_counts`."""
        self._check_built()
        pruned = ops.sum(ops.cast(self.pruned_counts, _backend.wide("float64")))
        return ops.cast(pruned / max(self._total, 1), "float32")

    def update_masks(self, step=None):
        """Recomputes every mask for the schedules' sparsity at `step`.

        Args:
            step: pruning step; defaults to the current `pruning_step`.

        Returns:
            The new overall sparsity (float32 scalar tensor).
        """
        self._check_built()
        step = ops.convert_to_tensor(self.pruning_step if step is None else step)
        for schedule in self._schedules:
            self._update_schedule(schedule, step)
        return self.sparsity

    def _schedule_masks(self, schedule, target) -> list:
        """`(index, keep mask, pruned count)` of every weight that follows
        `schedule`, for its value `target`."""
        out = []
        for group_schedule, pattern, members in self._groups:
            if group_schedule is not schedule:
                continue
            keeps, counts = pattern.group_masks(
                [p.scores() for p in members], target, [p.bounds for p in members]
            )
            for p, keep, count in zip(members, keeps, counts, strict=True):
                out.append((self._index[id(p)], keep, ops.cast(count, self.pruned_counts.dtype)))
        return out

    def _target(self, schedule, step) -> tuple:
        """`(target, valid, rejected)`: `schedule`'s value at `step`, whether
        it is a sparsity in [0, 1), and the `invalid_target` value recording
        it when it is not."""
        target = schedule(step)
        valid = ops.logical_and(ops.greater_equal(target, 0.0), ops.less(target, 1.0))
        dtype = self.invalid_target.dtype
        return target, valid, ops.stack([ops.cast(step, dtype), ops.cast(target, dtype)])

    @staticmethod
    def _with_counts(counts, updates):
        """`counts` with the pruned count of each `(index, _, count)` update."""
        return ops.scatter_update(counts, [[index] for index, _, _ in updates],
                                  ops.cast(ops.stack([c for _, _, c in updates]), counts.dtype))

    def _update_schedule(self, schedule, step):
        """Updates every group that follows `schedule`, if its value is valid."""
        target, valid, rejected = self._target(schedule, step)

        def update():
            updates = self._schedule_masks(schedule, target)
            for index, keep, _ in updates:
                self.pruned_weights[index].mask.assign(keep)
            self.pruned_counts.assign(
                self._with_counts(ops.convert_to_tensor(self.pruned_counts), updates))
            return ops.convert_to_tensor(True)

        def reject():
            self.invalid_target.assign(rejected)
            return ops.convert_to_tensor(False)

        return ops.cond(valid, update, reject)

    def stateless_apply(self, values: list, advance: Any = True, masks: str = "when_due") -> tuple:
        """`apply()` for a stateless training step (JAX): values in, values out.

        Reads the tracked weights and the pruner's own variables from
        `values` instead of the variables, and changes no variable: the
        way Keras's `stateless_call` and `optimizer.stateless_apply` work,
        so it runs inside `jax.jit` and a JAX `train_step(state, data)`.

        Args:
            values: `(variable, value)` pairs holding at least every
                tracked weight and the pruner's variables.
            advance: whether an optimizer update happened (see `apply()`).
            masks: `"when_due"` (the default: recompute the masks in this
                step when a schedule is due, like `apply()`), `"later"`
                (advance and zero only; the caller runs the update with
                `"now"` when `due_steps` says so: a separate XLA program,
                so a step does not carry the update's branch) or `"now"`
                (recompute the masks due at the current step, without
                advancing).

        Returns:
            `(new_values, sparsity)`: `(variable, new value)` pairs for the
            variables a step changes (pruned weights, masks, `pruning_step`,
            `pruned_counts`, `invalid_target`), and the overall sparsity.
        """
        self._check_built()
        with keras.StatelessScope(state_mapping=values) as scope:
            _validate.one_of(masks, "masks", ("when_due", "later", "now"),
                             where="Pruner.stateless_apply")
            sparsity = self._apply_values(ops.convert_to_tensor(advance, dtype="bool"), masks)
        changed = [self.pruning_step, self.pruned_counts, self.invalid_target]
        changed += [p.mask for p in self.pruned_weights] + [p.weight for p in self.pruned_weights]
        return [(v, scope.get_current_value(v)) for v in changed], sparsity

    def due_steps(self, start: int, count: int):
        """Whether a schedule recomputes its masks at each of the steps
        `start, ..., start + count - 1` (a numpy bool array): the host-side
        check of a caller that runs `stateless_apply(masks="now")` as a
        program of its own. One vectorized call for many steps, as each
        eager call costs more than a small training step's share."""
        steps = np.arange(start, start + count)
        due = np.zeros(count, bool)
        for schedule in self._schedules:
            value = ops.convert_to_numpy(schedule.should_prune(steps))
            due |= np.broadcast_to(np.asarray(value, bool), (count,))
        return due

    def _apply_values(self, advance, masks="when_due"):
        """One step written as values (conditions return new values, assigning
        nothing inside them), for `stateless_apply`."""
        step = ops.convert_to_tensor(self.pruning_step)
        if masks != "now":
            step = step + ops.cast(advance, self.pruning_step.dtype)
        self.pruning_step.assign(step)
        state = ([ops.convert_to_tensor(p.mask) for p in self.pruned_weights],
                 ops.convert_to_tensor(self.pruned_counts),
                 ops.convert_to_tensor(self.invalid_target))

        def schedule_values(schedule, state):
            masks, counts, invalid = state
            target, valid, rejected = self._target(schedule, step)

            def update():
                updates = self._schedule_masks(schedule, target)
                new_masks = list(masks)
                for index, keep, _ in updates:
                    new_masks[index] = keep
                return new_masks, self._with_counts(counts, updates), invalid

            return ops.cond(valid, update, lambda: (list(masks), counts, rejected))

        for schedule in self._schedules if masks != "later" else []:
            due = schedule.should_prune(step)
            if masks == "when_due":
                due = ops.logical_and(advance, due)
            state = ops.cond(due, lambda s=schedule, st=state: schedule_values(s, st),
                             lambda st=state: st)
        masks, counts, invalid = state
        for p, mask in zip(self.pruned_weights, masks, strict=True):
            p.mask.assign(mask)
            weight = ops.convert_to_tensor(p.weight)
            p.weight.assign(ops.where(mask, weight, ops.zeros_like(weight)))
        self.pruned_counts.assign(counts)
        self.invalid_target.assign(invalid)
        return self.sparsity

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
        self.pruning_step.assign_add(ops.cast(advance, self.pruning_step.dtype))
        step = ops.convert_to_tensor(self.pruning_step)
        dues = [ops.logical_and(advance, s.should_prune(step)) for s in self._schedules]

        def update():
            # One `cond` per step in the common one-schedule case (each cond
            # costs a function call on CPU); nested ones only when due.
            if len(self._schedules) == 1:
                self._update_schedule(self._schedules[0], step)
            else:
                for due, schedule in zip(dues, self._schedules, strict=True):
                    ops.cond(
                        due,
                        lambda schedule=schedule: self._update_schedule(schedule, step),
                        lambda: ops.convert_to_tensor(False),
                    )
            return ops.convert_to_tensor(True)

        any_due = dues[0] if len(dues) == 1 else ops.any(ops.stack(dues))
        ops.cond(any_due, update, lambda: ops.convert_to_tensor(False))
        if distributed:
            self._apply_masks()
        else:
            self.apply_masks()
        return self.sparsity

    # -- saving: by key, never by position ------------------------------------

    def save_own_variables(self, store):
        if self.built:  # an untracked pruner has no state
            saving.write_pruner_state(self, store)

    def expect_state(self, expected: bool) -> None:
        """Whether the next load must find pruning state (False: a dense file).

        Keras retries a failed `load_own_variables` at every path the pruner is
        reachable by, and an empty store there must not pass for "no state":
        it re-raises the first failure, or says the state is missing.
        """
        self._expect_saved_state = expected
        self._load_error = None

    def load_own_variables(self, store):
        if not len(store):
            if self._load_error is not None:
                raise self._load_error
            if self.built and self._expect_saved_state:
                raise ValueError(f"No pruning state for pruner '{self.name}' at this path.")
            return  # a dense weights file: the masks start afresh
        try:
            self._check_built()
            saving.read_pruner_state(self, store)
        except Exception as error:
            self._load_error = error
            raise
        self._load_error = None

    def get_config(self) -> dict:
        config = {
            **super().get_config(),
            "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
            "pruning_policy": policy.serialize_policy(self.pruning_policy),
            "resolution": self._resolution,
        }
        if self.built:
            config["resolution"] = policy.serialize_resolution(self.pruned_weights)
        return config
