"""Per-layer pruning policy: which weights to prune, and how.

A policy is a list of `Rule`s given once, to `PrunedModel(...,
pruning_policy=[...])` or `prune_model(...)`. For each prunable weight the
first rule that matches decides; a weight no rule matches is pruned with the
model's schedule and `Magnitude()`. The policy is saved with the model.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import keras

from prunemix import patterns, schedules

__all__ = ["Rule", "get_policy"]


def _serialize_match(match):
    if isinstance(match, str):
        return match
    if isinstance(match, type):
        return {"layer_class": keras.saving.get_registered_name(match),
                "module": match.__module__, "qualname": match.__qualname__}
    if isinstance(match, list | tuple):
        return {"any_of": [_serialize_match(m) for m in match]}
    return {"callable": keras.saving.serialize_keras_object(match)}


def _deserialize_match(config):
    if isinstance(config, str):
        return config
    if "any_of" in config:
        return [_deserialize_match(m) for m in config["any_of"]]
    if "callable" in config:
        return keras.saving.deserialize_keras_object(config["callable"])
    registered = keras.saving.get_registered_object(config["layer_class"])
    if isinstance(registered, type):
        return registered
    obj = importlib.import_module(config["module"])
    for part in config["qualname"].split("."):
        obj = getattr(obj, part)
    return obj


class Rule:
    """How to prune the weights that `match` selects.

    Args:
        match: what the rule applies to; one of, or a list of:
            - a layer name (`"dense_1"`), or a glob pattern matched against
              the layer name, the layer path and the weight path
              (`"encoder/*"`, `"*embedding*"`, `"*/kernel"`);
            - a layer class (`keras.layers.Conv2D`; subclasses match);
            - a callable `(layer, weight) -> bool`.
        exclude: if True, the matched weights are not pruned at all.
        schedule: their own schedule (default: the model's).
        final_sparsity: their own target: the schedule's final (or
            constant) sparsity replaced by this value, same timing.
        pattern: a `PruningPattern` (default `Magnitude()`).
        score: a callable `(pruned_weight) -> tensor` shaped like the
            weight, giving the importance of each entry (default `|w|`).
            The lowest scores are pruned. To save the model with it, use a
            named function registered with
            `keras.saving.register_keras_serializable`.
        min_sparsity: floor on each matched weight's sparsity.
        max_sparsity: ceiling on each matched weight's sparsity (with
            `GlobalMagnitude`, bounds on each weight's share).

    Raises:
        ValueError: for a bad argument; at build time, if the rule matches
            no prunable weight of the model.

    Example:

    ```python
    policy = [
        prunemix.Rule("conv_in", exclude=True),
        prunemix.Rule(keras.layers.Embedding, final_sparsity=0.95),
        prunemix.Rule("*", pattern=prunemix.NMSparsity(2, 4)),
    ]
    ```
    """

    def __init__(
        self,
        match: Any = "*",
        *,
        exclude: bool = False,
        schedule: Any = None,
        final_sparsity: float | None = None,
        pattern: Any = None,
        score: Callable | None = None,
        min_sparsity: float = 0.0,
        max_sparsity: float = 1.0,
    ):
        self.match = self._check_match(match)
        self.exclude = bool(exclude)
        self.schedule = None if schedule is None else schedules.get(schedule)
        self.final_sparsity = (
            None if final_sparsity is None
            else schedules._check_sparsity("final_sparsity", final_sparsity)
        )
        self.pattern = None if pattern is None else patterns.get(pattern)
        if score is not None and not callable(score):
            raise TypeError(f"Rule: `score` must be a callable, got {score!r}.")
        self.score = score
        self.min_sparsity = schedules._check_sparsity("min_sparsity", min_sparsity)
        self.max_sparsity = float(max_sparsity)
        if not 0.0 <= self.max_sparsity <= 1.0 or self.max_sparsity < self.min_sparsity:
            raise ValueError(
                f"Rule: `max_sparsity` must be in [min_sparsity, 1] = "
                f"[{self.min_sparsity}, 1], got {max_sparsity!r}."
            )
        if exclude and any(
            v is not None for v in (schedule, final_sparsity, pattern, score)
        ):
            raise ValueError("Rule: `exclude=True` cannot be combined with how to prune.")

    @classmethod
    def _check_match(cls, match):
        if isinstance(match, str | type) or callable(match):
            return match
        if isinstance(match, list | tuple) and match:
            return [cls._check_match(m) for m in match]
        raise TypeError(
            "Rule: `match` must be a layer name or glob pattern, a layer class, a "
            f"callable (layer, weight) -> bool, or a list of those; got {match!r}."
        )

    def matches(self, layer, weight) -> bool:
        """Whether this rule applies to `weight` of `layer`."""
        return self._matches(self.match, layer, weight)

    @classmethod
    def _matches(cls, match, layer, weight) -> bool:
        if isinstance(match, list):
            return any(cls._matches(m, layer, weight) for m in match)
        if isinstance(match, str):
            names = (layer.name, layer.path or layer.name, weight.path)
            return any(fnmatch.fnmatchcase(n, match) for n in names)
        if isinstance(match, type):
            return isinstance(layer, match)
        return bool(match(layer, weight))

    def schedule_for(self, default):
        """The schedule for matched weights, given the model's `default`."""
        schedule = self.schedule or default
        if self.final_sparsity is not None:
            schedule = schedules.with_final_sparsity(schedule, self.final_sparsity)
        return schedule

    def get_config(self) -> dict:
        ser = keras.saving.serialize_keras_object
        return {
            "match": _serialize_match(self.match),
            "exclude": self.exclude,
            "schedule": None if self.schedule is None else ser(self.schedule),
            "final_sparsity": self.final_sparsity,
            "pattern": None if self.pattern is None else ser(self.pattern),
            "score": None if self.score is None else ser(self.score),
            "min_sparsity": self.min_sparsity,
            "max_sparsity": self.max_sparsity,
        }

    @classmethod
    def from_config(cls, config: dict) -> Rule:
        de = keras.saving.deserialize_keras_object
        config = dict(config)
        config["match"] = _deserialize_match(config["match"])
        for key in ("schedule", "pattern", "score"):
            if config.get(key) is not None:
                config[key] = de(config[key])
        return cls(**config)

    def __repr__(self) -> str:
        return f"Rule({self.match!r}, ...)"


keras.saving.register_keras_serializable(package="prunemix", name="Rule")(Rule)


def get_policy(policy: Any) -> list:
    """A list of `Rule`s from `None`, a `Rule`, a list of rules, or configs."""
    if policy is None:
        return []
    if isinstance(policy, Rule | dict):
        policy = [policy]
    if not isinstance(policy, Sequence) or isinstance(policy, str):
        raise TypeError(
            f"`pruning_policy` must be a list of `prunemix.Rule`s, got {policy!r}."
        )
    rules = []
    for rule in policy:
        if isinstance(rule, dict):
            rule = keras.saving.deserialize_keras_object(rule)
        if not isinstance(rule, Rule):
            raise TypeError(
                f"`pruning_policy` must be a list of `prunemix.Rule`s; got {rule!r}."
            )
        rules.append(rule)
    return rules


def serialize_policy(rules: list) -> list | None:
    if not rules:
        return None
    return [keras.saving.serialize_keras_object(r) for r in rules]
