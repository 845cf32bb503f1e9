"""`PrunedModel`: a `keras.Model` that prunes inside its own train step."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from prunemix import _keras_compat, policy, schedules
from prunemix.pruner import Pruner

__all__ = ["PrunedModel"]

Functional = _keras_compat.functional_class()

# Layout of the pruning state in saved files (masks, step, sparsity in the
# `pruner` layer). Bump when it changes; loading a newer layout is an error.
FORMAT_VERSION = 1


def _check_format(config: dict, what: str) -> dict:
    version = config.get("prunemix_format", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{what} was saved with prunemix pruning-state format {version!r}; this "
            f"prunemix reads format {FORMAT_VERSION} and older. Upgrade prunemix."
        )
    return {k: v for k, v in config.items() if k != "prunemix_format"}


def _has_pruning_state(filepath) -> bool:
    """Whether a `.weights.h5` file holds a `pruner` group anywhere."""
    import h5py

    found = []
    with h5py.File(filepath, "r") as f:
        f.visit(lambda name: found.append(name) if name.split("/")[-1] == "pruner" else None)
    return bool(found)


class PrunedModel(keras.Model):
    """A `keras.Model` whose training steps prune its weights.

    Subclass it like `keras.Model` (layers in `__init__`, `call`), or build
    it the functional way with `PrunedModel(inputs, outputs,
    pruning_schedule=...)`. Every prunable weight is found at any depth:
    built-in Dense/Conv/Embedding/RNN/MultiHeadAttention kernels and custom
    layers declared with `PrunableMixin`, `@prunable` or
    `get_prunable_weights()`.

    `fit()` runs the pruning inside the compiled train step (no callback):
    after each optimizer update it advances the pruning step, recomputes the
    masks when the schedule says so, and sets pruned weights to exactly zero.
    The logs and progress bar show `sparsity`. `evaluate()` and `predict()`
    run the plain model: the weights already hold the zeros.

    If you override `train_step`, call `self.apply_pruning()` once after your
    optimizer update(s).

    Args:
        *args: `keras.Model` arguments (`inputs, outputs` for functional).
        pruning_schedule: a `ConstantSparsity`, `PolynomialDecay`, or any
            traceable callable `step -> sparsity`. Required.
        pruning_policy: optional list of `prunemix.Rule`s: exclude layers,
            or give them their own schedule, final sparsity, pattern
            (`GlobalMagnitude`, `BlockSparsity`, `NMSparsity`,
            `StructuredSparsity`) or importance score. First match wins;
            saved with the model.
        **kwargs: `keras.Model` keyword arguments (`name`, ...).

    Raises:
        ValueError: at build time, if the model has no prunable weights.
        TypeError: if `pruning_schedule` is missing or not a schedule.

    Example:

    ```python
    class Net(prunemix.PrunedModel):
        def __init__(self, **kwargs):
            super().__init__(
                pruning_schedule=prunemix.PolynomialDecay(0.0, 0.9, 0, 1000),
                **kwargs,
            )
            self.hidden = keras.layers.Dense(64, activation="relu")
            self.out = keras.layers.Dense(10)

        def call(self, x):
            return self.out(self.hidden(x))

    model = Net()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=5)   # logs show `sparsity`
    ```
    """

    def __new__(cls, *args, **kwargs):
        if cls is PrunedModel and _keras_compat.is_functional_call(args, kwargs):
            return FunctionalPrunedModel.__new__(FunctionalPrunedModel, *args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

    def __init__(
        self, *args, pruning_schedule: Any = None, pruning_policy: Any = None, **kwargs
    ):
        functional = isinstance(self, Functional)
        if _keras_compat.is_functional_call(args, kwargs) and not functional:
            raise TypeError(
                f"{type(self).__name__} is a subclass of PrunedModel; build "
                "functional models with `prunemix.PrunedModel(inputs, outputs, "
                "pruning_schedule=...)` itself."
            )
        super().__init__(*args, **kwargs)
        if pruning_schedule is None and not functional:
            raise TypeError(
                f"{type(self).__name__} needs `pruning_schedule=`, e.g. "
                "`prunemix.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000)`."
            )
        self._pruning_schedule = (
            None if pruning_schedule is None else schedules.get(pruning_schedule)
        )
        self._pruning_policy = policy.get_policy(pruning_policy)
        self._pruner = None
        self._prunemix_stripped = False

    @property
    def pruning_schedule(self):
        """The schedule this model prunes with."""
        return self._pruning_schedule

    @property
    def pruning_policy(self) -> list:
        """The `Rule`s choosing which weights are pruned, and how."""
        return self._pruning_policy

    @property
    def pruner(self):
        """The `Pruner` holding masks and step; `None` until the model is built."""
        return self._pruner

    def build_pruning(self) -> Pruner:
        """Creates the masks for the built model (done automatically).

        Runs on the model's first call, at `fit`/`train_on_batch`, on loading,
        and on the first `apply_pruning()`. Variables are created outside any
        `tf.function` being traced.

        Returns:
            The model's `Pruner`.

        Raises:
            ValueError: if the model is not built or has no prunable weights.
        """
        if self._prunemix_stripped:
            raise ValueError(
                f"Model '{self.name}' was stripped of its pruning state "
                "(`prunemix.strip_pruning`); it no longer prunes."
            )
        if self._pruner is None:
            with tf.init_scope():
                pruner = Pruner(
                    self._pruning_schedule, self._pruning_policy, name="pruner"
                )
                pruner.track(self)
                _keras_compat.attach_after_build(self, "_pruner", pruner)
        return self._pruner

    def apply_pruning(self, advance: Any = True):
        """One pruning step; call it once after each optimizer update.

        Advances the pruning step, recomputes the masks when the schedule is
        due, and sets every pruned weight to exactly zero. Traceable: use it
        inside your own `train_step` or `tf.function` training loop.

        Args:
            advance: pass a false value (bool or bool tensor) for a step in
                which no optimizer update was applied; pruned weights are
                then still zeroed but the step and masks stay as they are.

        Returns:
            Overall sparsity of the pruned weights (float32 scalar tensor),
            ready to put in your logs as `"sparsity"`.

        Example:

        ```python
        def train_step(self, data):
            ...  # forward, gradients, optimizer.apply(...)
            sparsity = self.apply_pruning()
            return {"loss": loss, "sparsity": sparsity}
        ```
        """
        return self.build_pruning().apply(advance)

    def __call__(self, *args, **kwargs):
        outputs = super().__call__(*args, **kwargs)
        if self._pruner is None and self.built and not self._prunemix_stripped:
            self.build_pruning()
        return outputs

    def get_build_config(self):
        config = super().get_build_config()
        if config is not None:
            config = {**config, "prunemix_format": FORMAT_VERSION}
            if self._prunemix_stripped:
                # A stripped copy must reload without masks.
                config["prunemix_stripped"] = True
        return config

    def build_from_config(self, config):
        if config:
            config = _check_format(config, f"Model '{self.name}'")
        if config and config.get("prunemix_stripped"):
            self._prunemix_stripped = True
            config = {k: v for k, v in config.items() if k != "prunemix_stripped"}
        super().build_from_config(config)
        # Keras builds a subclassed model's layers here (by running `call`
        # symbolically) without marking the model built, so `export()` would
        # refuse it; the masks must also exist before weights load.
        layers = _keras_compat.nested_layers(self)
        if config and not self.built and layers and all(layer.built for layer in layers):
            self.built = True
        if config and not self._prunemix_stripped:
            self.build_pruning()

    def load_weights(self, filepath, *args, **kwargs):
        """`keras.Model.load_weights`, also from a dense model's weights file.

        A `.weights.h5` file saved by the same model without pruning (a
        plain `keras.Model` with the same layers) loads into the layers and
        leaves the masks and pruning step as they are: the fine-tune-from-
        pretrained path for subclassed models. A file that has pruning state
        must match this model's masks exactly, or Keras raises.
        """
        if (
            self._pruner is not None
            and str(filepath).endswith(".weights.h5")
            and not _has_pruning_state(filepath)
        ):
            with _keras_compat.hidden_layer(self, self._pruner, "_pruner"):
                return super().load_weights(filepath, *args, **kwargs)
        return super().load_weights(filepath, *args, **kwargs)

    def make_train_function(self, force=False):
        # Without a distribution strategy Keras builds the model lazily, in
        # the first trace of the train step; the pruner follows from
        # `__call__` there (its variables are lifted out with `init_scope`).
        if self.built and not self._prunemix_stripped:
            self._check_strategy()
            with self.distribute_strategy.scope():
                self.build_pruning()
        return super().make_train_function(force=force)

    def _check_strategy(self):
        def strategy_of(variable):
            value = variable.value
            if isinstance(value, tf.distribute.DistributedValues):
                return value._distribute_strategy
            return None

        variables = list(self.weights)
        if self.optimizer is not None:
            variables += list(self.optimizer.variables)
        found = {}
        for variable in variables:
            strategy = strategy_of(variable)
            found.setdefault(id(strategy), (strategy, variable))
        if len(found) > 1:
            names = ", ".join(
                f"'{v.path}' under {type(s).__name__ if s else 'no strategy'}"
                for s, v in found.values()
            )
            raise ValueError(
                f"Model '{self.name}' mixes variables created under different "
                f"`tf.distribute` strategies ({names}), so replicas could disagree "
                "on weights and masks. Create the model and compile it inside the "
                "same `strategy.scope()` (loading a saved model there works too)."
            )

    def train_step(self, *args, **kwargs):
        if self._prunemix_stripped:
            return super().train_step(*args, **kwargs)
        # `optimizer.iterations` counts applied updates: it stays put on a
        # step skipped by loss scaling and between gradient-accumulation
        # updates, and so does the pruning step.
        before = tf.identity(self.optimizer.iterations)
        logs = super().train_step(*args, **kwargs)
        updated = tf.greater(self.optimizer.iterations, before)
        sparsity = self.apply_pruning(advance=updated)
        return {**logs, "sparsity": sparsity}


@keras.saving.register_keras_serializable(package="prunemix", name="FunctionalPrunedModel")
class FunctionalPrunedModel(Functional, PrunedModel):
    """`PrunedModel(inputs, outputs, ...)`: a Functional model that prunes.

    A separate class so Keras never rewrites `PrunedModel`'s bases (Keras 3
    injects `Functional` into the class hierarchy of Model subclasses used
    the functional way, which would break every subclassed `PrunedModel`).
    """

    def __init__(
        self, *args, pruning_schedule: Any = None, pruning_policy: Any = None, **kwargs
    ):
        if pruning_schedule is None:
            raise TypeError(
                "PrunedModel(inputs, outputs) needs `pruning_schedule=`, e.g. "
                "`prunemix.ConstantSparsity(0.8)`."
            )
        schedule = schedules.get(pruning_schedule)
        Functional.__init__(self, *args, **kwargs)
        self._pruning_schedule = schedule
        self._pruning_policy = policy.get_policy(pruning_policy)
        self.build_pruning()

    def get_config(self) -> dict:
        return {
            **Functional.get_config(self),
            "pruning_schedule": keras.saving.serialize_keras_object(
                self._pruning_schedule
            ),
            "pruning_policy": policy.serialize_policy(self._pruning_policy),
            "prunemix_format": FORMAT_VERSION,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = _check_format(config, f"Model '{config.get('name')}'")
        return super().from_config(config, custom_objects=custom_objects)
