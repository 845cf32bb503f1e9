"""Per-layer pruning policy: which weights to prune, and how.

A policy is a list of `Rule`s given once, to `PrunedModel(...,
pruning_policy=[...])` or `prune_model(...)`. For each prunable weight the
first rule that matches decides; a weight no rule matches is pruned with the
model's schedule and `Magnitude()`. The policy is saved with the model.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from typing import Any

import keras

from prunemix import _validate, patterns, schedules
from prunemix.prunable import default_pattern_of

__all__ = ["Rule", "Spec", "deserialize_resolution", "get_policy", "resolve",
           "serialize_resolution"]


def _serialize_match(match):
    if isinstance(match, str):
        return match
    if isinstance(match, type):
        return {"layer_class": keras.saving.get_registered_name(match)}
    if isinstance(match, list | tuple):
        return {"any_of": [_serialize_match(m) for m in match]}
    return {"callable": keras.saving.serialize_keras_object(match)}


def _layer_class(name: str) -> type:
    """A layer class from its registered name: Keras's registry (and any
    `custom_objects` in scope), else a public `keras.layers` name. Never an
    import: a file cannot make prunemix import a module."""
    found = keras.saving.get_registered_object(name)
    if found is None and ">" not in name:
        found = getattr(keras.layers, name, None)
    if isinstance(found, type) and issubclass(found, keras.layers.Layer):
        return found
    raise ValueError(
        f"A saved pruning rule matches layer class {name!r}, which is neither a "
        "public `keras.layers` class nor registered. Register it with "
        "`keras.saving.register_keras_serializable` (and import the module that "
        "does), or pass it in `custom_objects`."
    )


def _deserialize_match(config):
    if isinstance(config, str):
        return config
    if not isinstance(config, dict):
        raise ValueError(f"Bad saved rule match: {config!r}.")
    if "any_of" in config:
        return [_deserialize_match(m) for m in config["any_of"]]
    if "callable" in config:
        return keras.saving.deserialize_keras_object(config["callable"])
    return _layer_class(str(config.get("layer_class")))


class Rule:
    """How to prune the weights that `match` selects.

    Args:
        match: what the rule applies to; one of, or a list of:
            - a layer name (`"dense_1"`), or a glob pattern matched against
              the layer name, and the layer's and the weight's paths
              relative to the model, by layer names (`"encoder/*"`,
              `"*embedding*"`, `"*/kernel"`): the same paths in a
              subclassed, functional or `prune_model` model;
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
        required: if True (default), a rule that matches no weight is an
            error at build time; rule sets meant for any model
            (`latency_policy()`) use False.

    Raises:
        ValueError: for a bad argument; at build time, if a required rule
            matches no prunable weight of the model.

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
        required: bool = True,
    ):
        self.match = self._check_match(match)
        self.required = bool(required)
        self.exclude = bool(exclude)
        self.schedule = None if schedule is None else schedules.get(schedule)
        self.final_sparsity = (
            None if final_sparsity is None
            else schedules._check_sparsity("final_sparsity", final_sparsity)
        )
        self.pattern = None if pattern is None else patterns.get(pattern)
        if score is not None and not callable(score):
            raise TypeError(f"Rule: `score` must be a callable. Received: score={score!r}")
        self.score = score
        self._schedules = {}
        self.min_sparsity = schedules._check_sparsity("min_sparsity", min_sparsity)
        self.max_sparsity = _validate.fraction(max_sparsity, "max_sparsity", where="Rule",
                                               closed=True, error=TypeError)
        if self.max_sparsity < self.min_sparsity:
            raise ValueError(
                f"Rule: `max_sparsity` must be in [min_sparsity, 1] = "
                f"[{self.min_sparsity}, 1]. Received: max_sparsity={max_sparsity!r}"
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
            f"callable (layer, weight) -> bool, or a list of those. Received: match={match!r}"
        )

    def matches(self, layer, weight, path: str | None = None) -> bool:
        """Whether this rule applies to `weight` of `layer`.

        Args:
            layer: the layer owning the weight.
            weight: the variable.
            path: the weight's path relative to the model
                (`"encoder/dense/kernel"`); default: the layer name and the
                weight name.
        """
        path = path or f"{layer.name}/{weight.name}"
        return self._matches(self.match, layer, weight, path)

    @classmethod
    def _matches(cls, match, layer, weight, path) -> bool:
        if isinstance(match, list):
            return any(cls._matches(m, layer, weight, path) for m in match)
        if isinstance(match, str):
            names = (layer.name, path.rpartition("/")[0], path)
            return any(fnmatch.fnmatchcase(n, match) for n in names)
        if isinstance(match, type):
            return isinstance(layer, match)
        return bool(match(layer, weight))

    def schedule_for(self, default):
        """The schedule for matched weights, given the model's `default`.

        The same object for every weight of the rule, so they update together.
        """
        key = id(default)
        if key not in self._schedules:
            schedule = self.schedule or default
            if self.final_sparsity is not None:
                schedule = schedules.with_final_sparsity(schedule, self.final_sparsity)
            self._schedules[key] = (default, schedule)
        return self._schedules[key][1]

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
            "required": self.required,
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
            f"`pruning_policy` must be a list of `prunemix.Rule`s. Received: {policy!r}"
        )
    rules = []
    for rule in policy:
        if isinstance(rule, dict):
            rule = keras.saving.deserialize_keras_object(rule)
        if not isinstance(rule, Rule):
            raise TypeError(
                f"`pruning_policy` must be a list of `prunemix.Rule`s. Received: {rule!r}"
            )
        rules.append(rule)
    return rules


def serialize_policy(rules: list) -> list | None:
    if not rules:
        return None
    return [keras.saving.serialize_keras_object(r) for r in rules]


class Spec:
    """How one weight is pruned, as the policy resolved it once."""

    __slots__ = ("key", "schedule", "pattern", "score", "bounds")

    def __init__(self, key, schedule, pattern, score=None, bounds=(0.0, 1.0)):
        self.key, self.schedule, self.pattern = key, schedule, pattern
        self.score, self.bounds = score, (float(bounds[0]), float(bounds[1]))


def _label(path, layer) -> str:
    return f"weight '{path}' of layer '{layer.name}' ({type(layer).__name__})"


def resolve(rules: list, located: list, default_schedule, model_name: str) -> dict:
    """One `Spec` per pruned weight: rules + located weights in, `{key: Spec}` out.

    For each `(layer, weight, path, key)` the first matching rule decides; a
    weight no rule matches gets `default_schedule` and its layer class's
    default pattern (else `Magnitude()`). Empty weights are never pruned.

    Raises:
        ValueError: if a rule matches no weight an earlier rule did not
            take, the policy excludes everything, a pattern cannot handle a
            weight or honour its rule's target, or weights pooled under
            `GlobalMagnitude` follow different schedules.
    """
    used = [False] * len(rules)
    specs = {}
    for layer, weight, path, key in located:
        rule = None
        for i, candidate in enumerate(rules):
            if candidate.matches(layer, weight, path):
                used[i], rule = True, candidate
                break
        rule = rule or Rule()
        if rule.exclude or not math.prod(weight.shape):
            continue
        pattern = patterns.get(rule.pattern or default_pattern_of(layer))
        pattern.check(layer, weight)
        pattern = pattern.bind(layer, weight)
        bounds = (rule.min_sparsity, rule.max_sparsity)
        pattern.check_target(rule.final_sparsity, bounds, _label(path, layer))
        specs[key] = Spec(key, rule.schedule_for(default_schedule), pattern, rule.score, bounds)
    for i, rule in enumerate(rules):
        if not used[i] and rule.required:
            paths = ", ".join(sorted({path for _, _, path, _ in located}))
            raise ValueError(
                f"Pruning policy rule {i} (match={rule.match!r}) matches no prunable "
                f"weight of model '{model_name}' that an earlier rule did not take. "
                f"Prunable weights (paths relative to the model): {paths}."
            )
    if not specs:
        raise ValueError(
            f"The pruning policy of model '{model_name}' excludes every prunable weight."
        )
    pooled = {s.schedule for s in specs.values() if s.pattern.is_global}
    if len(pooled) > 1:
        raise ValueError(
            "GlobalMagnitude: every weight sharing the global threshold must "
            "follow the same schedule; these do not: "
            + ", ".join(k for k, s in specs.items() if s.pattern.is_global) + "."
        )
    return specs


def serialize_resolution(specs: list) -> dict:
    """A flat, JSON-ready record of resolved specs (schedules stored once)."""
    ser = keras.saving.serialize_keras_object
    unique = []
    for spec in specs:
        if not any(spec.schedule is s for s in unique):
            unique.append(spec.schedule)
    return {
        "schedules": [ser(s) for s in unique],
        "weights": [
            {
                "key": spec.key,
                "schedule": next(i for i, s in enumerate(unique) if s is spec.schedule),
                "pattern": ser(spec.pattern),  # a planned ChannelGroups saves unplanned
                "score": None if spec.score is None else ser(spec.score),
                "bounds": list(spec.bounds),
            }
            for spec in specs
        ],
    }


def deserialize_resolution(record: dict) -> dict:
    """`{key: Spec}` from `serialize_resolution`'s record."""
    de = keras.saving.deserialize_keras_object
    try:
        saved = [schedules.get(s) for s in record["schedules"]]
        return {
            w["key"]: Spec(
                w["key"], saved[w["schedule"]], patterns.get(w["pattern"]),
                None if w["score"] is None else de(w["score"]), tuple(w["bounds"]),
            )
            for w in record["weights"]
        }
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(f"Malformed saved pruning resolution ({error!r}).") from None


def plan(model, located: list, rules: list, schedule, resolution: dict | None = None,
         owner: str = "pruner") -> tuple:
    """The weights a model prunes and how: `(located, specs)`.

    Matches `rules` against the located weights (or reads a saved
    `resolution` instead), then lets patterns that need the model's graph
    (`ChannelGroups`) plan over it. The `Pruner` gets the result and only
    holds masks for it.

    Args:
        model: the built model.
        located: `(layer, weight, path, key)` of each prunable weight.
        rules: the policy's `Rule`s.
        schedule: the default schedule.
        resolution: a saved resolution (`serialize_resolution`), or None.
        owner: the pruner's name, for error messages.

    Returns:
        The located weights (planning may couple more, such as biases) and
        a `{key: Spec}` dict.

    Raises:
        ValueError: as `resolve` does; for a saved resolution that names
            weights the model does not have.
    """
    from prunemix import saving
    from prunemix.structured import channels  # it imports this module

    if resolution is None:
        return channels.plan(model, located, resolve(rules, located, schedule, model.name))
    saved = deserialize_resolution(resolution)
    located, specs = channels.plan(model, located, saved)
    where = f"the saved pruning state of model '{model.name}'"
    saving.check_keys(list(saved), [key for _, _, _, key in located], where, owner,
                      subset=True)
    if set(specs) != set(saved):  # the graph now couples other channels
        saving.check_keys(list(saved), list(specs), where, owner)
    return located, specs
