"""`PrunedModel`: a `keras.Model` that prunes inside its own train step."""

from __future__ import annotations

import abc
import contextlib
import contextvars
import warnings
from typing import Any

import keras

from prunemix import _backend, _keras_compat, _trainers, policy, saving, schedules
from prunemix.pruner import Pruner
from prunemix.saving import FORMAT_VERSION

__all__ = ["PrunedModel", "pruned_class"]

Functional = _keras_compat.functional_class()

# Set while `prune_model` re-creates a model through its class's own config:
# the copy gets its pruner once its weights are in.
_DEFERRED = contextvars.ContextVar("prunemix_deferred_pruning", default=False)

# The config keys through which a model that is built at construction (a
# functional graph, a keras_hub task or backbone) carries its pruning state.
CONFIG_KEYS = ("pruner", "prunemix_format", "prunemix_stripped")

# A pruned model's one pruning state (`_Pruning._set_state`).
DEFERRED, PENDING, ACTIVE, STRIPPED = "deferred", "pending", "active", "stripped"


def _set_untracked(model, name: str, value) -> None:
    # The pruner waiting to be built holds no variables; Keras tracks it once
    # built, as `_pruner` (so it is saved once, under one name).
    object.__setattr__(model, name, value)


def _plain(config):
    """A config without the ids Keras adds to shared objects while saving."""
    if isinstance(config, dict):
        return {k: _plain(v) for k, v in config.items() if k != "shared_object_id"}
    if isinstance(config, list | tuple):
        return [_plain(v) for v in config]
    return config


def _serialize_policy(rules):
    return policy.serialize_policy(policy.get_policy(rules))


class _Pruning:
    """The Keras hooks that make a `keras.Model` class prune (see `PrunedModel`).

    A plain mixin, not a `keras.Model`: Keras rewrites the bases of every
    class above a model used the functional way
    (`keras.src.models.model.inject_functional_model_class`) and walks
    through a mixin unchanged, so pruning composes with any model class,
    keras_hub tasks and backbones included.
    """

    _pruning_state = DEFERRED  # until `_begin_pruning`, after the model's own __init__

    def __new__(cls, *args, **kwargs):
        instance = super().__new__(cls, *args, **kwargs)
        if PrunedModel in cls.__mro__ and not issubclass(cls, Functional):
            # Keep schedules and policies passed as constructor keywords in the
            # automatic config, so `from_config` gets them back. (A class mixed
            # with another model class carries its pruner in its config.)
            _keras_compat.capture_init_config(instance, cls, args, kwargs, {
                "pruning_schedule": lambda s: keras.saving.serialize_keras_object(
                    schedules.get(s)),
                "pruning_policy": _serialize_policy,
            })
        return instance

    def __init__(
        self, *args, pruning_schedule: Any = None, pruning_policy: Any = None,
        pruner: dict | None = None, prunemix_format: Any = None,
        prunemix_stripped: bool = False, **kwargs
    ):
        if isinstance(self, FunctionalPrunedModel):
            # Reached from `Function.__init__` inside FunctionalPrunedModel's own.
            super().__init__(*args, **kwargs)
            return
        self._check_pruning_args(args, kwargs, pruning_schedule, pruner, prunemix_format,
                                 prunemix_stripped)
        super().__init__(*args, **kwargs)
        self._begin_pruning(pruning_schedule, pruning_policy, pruner, prunemix_stripped)

    def _check_pruning_args(self, args, kwargs, schedule, pruner, version, stripped) -> None:
        """Raises for bad pruning arguments before the model is built."""
        backend = keras.backend.backend()
        if backend not in ("tensorflow", "jax") and not stripped:
            raise NotImplementedError(
                f"prunemix's PrunedModel trains on the TensorFlow and JAX backends, and "
                f"KERAS_BACKEND is {backend!r}. On {backend}, `strip_pruning`'d files load "
                "with Keras alone, and `shrink`, `channel_graph` and the schedules work; "
                "run pruning itself with KERAS_BACKEND=jax or tensorflow."
            )
        functional_call = _keras_compat.is_functional_call(args, kwargs)
        if functional_call and not isinstance(self, Functional):
            raise TypeError(
                f"{type(self).__name__} is a subclass of PrunedModel; build "
                "functional models with `prunemix.PrunedModel(inputs, outputs, "
                "pruning_schedule=...)` itself."
            )
        if version is not None:
            saving.check_format({"prunemix_format": version}, f"Model '{kwargs.get('name')}'")
        if schedule is None and pruner is None and not stripped and not _DEFERRED.get():
            raise TypeError(
                "PrunedModel(inputs, outputs) needs `pruning_schedule=`, e.g. "
                "`prunemix.ConstantSparsity(0.8)`. (`keras.models.clone_model` cannot "
                "pass it on: to copy a PrunedModel with the same pruning and new "
                "weights, use `type(model).from_config(model.get_config())`; to copy "
                "its weights too, save and load it.)" if functional_call else
                f"{type(self).__name__} needs `pruning_schedule=`, e.g. "
                "`prunemix.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000)`."
            )

    def _begin_pruning(self, schedule, rules, saved: dict | None, stripped: bool) -> None:
        """Sets the pruner up after the model's own `__init__` (built now, for
        a functional graph; at its first call otherwise)."""
        self._pruner = None
        self._warned_unpruned = False
        if stripped:
            self._set_state(STRIPPED)
        elif saved is None and _DEFERRED.get():
            self._set_state(DEFERRED)
        elif saved is not None:
            self._set_state(PENDING, self._saved_pruner(saved, schedule, rules))
        else:
            self._set_state(PENDING, Pruner(schedule, rules, name="pruner"))
        if self._pruning_state == PENDING and self.built:
            self.build_pruning()

    def start_pruning(self, pruner: Pruner) -> None:
        """Gives a model made while pruning was deferred its pruner."""
        self._set_state(PENDING, pruner)
        if self.built:
            self.build_pruning()

    def _set_state(self, state: str, pending: Pruner | None = None) -> None:
        """The one place the pruning state changes (see `PrunedModel`):
        `DEFERRED` (a copy waiting for `start_pruning`), `PENDING` (a pruner
        waiting for the model to be built), `ACTIVE` (`_pruner` tracks the
        weights) or `STRIPPED` (never prunes)."""
        _set_untracked(self, "_pruning_state", state)
        _set_untracked(self, "_new_pruner", pending)

    @property
    def pruning_schedule(self):
        """The schedule this model prunes with (its pruner's; None once stripped)."""
        pruner = self._pruner or self._new_pruner
        return None if pruner is None else pruner.pruning_schedule

    @property
    def pruning_policy(self) -> list:
        """The `Rule`s choosing which weights are pruned, and how (its pruner's)."""
        pruner = self._pruner or self._new_pruner
        return [] if pruner is None else pruner.pruning_policy

    @property
    def _stripped(self) -> bool:
        return self._pruning_state == STRIPPED

    @property
    def _pending(self) -> bool:
        """Whether a pruner waits for the model to be built."""
        return self._pruning_state == PENDING

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
            ValueError: if the model is not built or has no prunable weights,
                or was stripped.
        """
        if self._stripped:
            raise ValueError(
                f"Model '{self.name}' was stripped of its pruning state "
                "(`prunemix.strip_pruning`); it no longer prunes."
            )
        if self._pruning_state == DEFERRED:
            raise ValueError(
                f"Model '{self.name}' is a copy still waiting for its pruner "
                "(`prunemix.prune_model` gives it one once its weights are in)."
            )
        if self._pruner is None:
            with _backend.init_scope():
                pruner = self._new_pruner.track(self)
                _keras_compat.attach_after_build(self, "_pruner", pruner)
            self._set_state(ACTIVE)
        return self._pruner

    def apply_pruning(self, advance: Any = True):
        """One pruning step; call it once after each optimizer update.

        Advances the pruning step, recomputes the masks when the schedule is
        due, and sets every pruned weight to exactly zero. Traceable: use it
        inside your own `train_step` or `tf.function` training loop.

        On JAX, where a `train_step(self, state, data)` is stateless, pass
        the state instead: `state = self.apply_pruning(state)` returns the
        state with the new weights, masks and step (nothing else changes).

        Args:
            advance: pass a false value (bool or bool tensor) for a step in
                which no optimizer update was applied; pruned weights are
                then still zeroed but the step and masks stay as they are.
                On JAX: the training state, `(trainable_variables,
                non_trainable_variables, optimizer_variables,
                metrics_variables)`.

        Returns:
            Overall sparsity of the pruned weights (float32 scalar tensor),
            ready to put in your logs as `"sparsity"`. On JAX, given a state:
            the new state.

        Example:

        ```python
        def train_step(self, data):  # TensorFlow
            ...  # forward, gradients, optimizer.apply(...)
            sparsity = self.apply_pruning()
            return {"loss": loss, "sparsity": sparsity}

        def train_step(self, state, data):  # JAX
            logs, state = super().train_step(state, data)  # or your own
            return logs, self.apply_pruning(state)
        ```
        """
        if isinstance(advance, tuple | list):
            return _trainers.stateless_pruning(self, advance)[0]
        return self.build_pruning().apply(advance)

    def __call__(self, *args, **kwargs):
        outputs = super().__call__(*args, **kwargs)
        if self._pending and self.built and not (
                keras.backend.backend() == "jax" and _backend.in_traced_call()):
            self.build_pruning()  # on JAX: at `fit`, or the first eager call
        return outputs

    def get_build_config(self):
        config = super().get_build_config() or {}
        if self._stripped:
            # A stripped copy must reload without masks.
            return {**config, "prunemix": {"format": FORMAT_VERSION, "stripped": True}}
        if self._pruner is not None and not _config_carries_pruner(self):
            config["prunemix"] = {"format": FORMAT_VERSION, "pruner": self._pruner.get_config()}
        return config or None

    def build_from_config(self, config):
        config = dict(config or {})
        record = config.pop("prunemix", None)
        if record is None:
            # Format 1 kept its version and flag beside the shapes.
            legacy = saving.check_format(config, f"Model '{self.name}'")
            record = {"stripped": legacy.pop("prunemix_stripped", False)}
            config = legacy
        else:
            saving.check_format({"prunemix_format": record.get("format")}, f"Model '{self.name}'")
        if record.get("stripped"):
            self._strip()
        elif record.get("pruner") is not None:
            self._adopt_saved_pruner(record["pruner"])
        super().build_from_config(config)
        # Keras builds a subclassed model's layers here (by running `call`
        # symbolically) without marking the model built, so `export()` would
        # refuse it; the masks must also exist before weights load.
        layers = _keras_compat.nested_layers(self)
        if config and not self.built and layers and all(layer.built for layer in layers):
            self.built = True
        if self.built and self._pending:
            self.build_pruning()

    def get_config(self) -> dict:
        return self._with_pruning_config(super().get_config())

    def _with_pruning_config(self, config: dict) -> dict:
        if not _config_carries_pruner(self):
            return config
        if self._stripped:
            return {**config, "prunemix_stripped": True}
        pruner = self._pruner or self._new_pruner
        if pruner is None:  # a deferred copy: its pruner comes with its weights
            return config
        return {**config, "pruner": pruner.get_config(), "prunemix_format": FORMAT_VERSION}

    def _saved_pruner(self, saved: dict, schedule=None, rules=None) -> Pruner:
        """Prune as the file says: warn if this class now builds other settings."""
        if schedule is not None:
            mine = Pruner(schedule, rules).get_config()
            for key in ("pruning_schedule", "pruning_policy"):
                if _plain(mine[key]) != _plain(saved.get(key)):
                    warnings.warn(
                        f"Model '{self.name}': {type(self).__name__}.__init__ now builds "
                        f"{key}={mine[key]!r}, but the saved model was pruned with "
                        f"{key}={saved.get(key)!r}. Using the saved one, so the pruning "
                        "goes on as it was saved.",
                        stacklevel=5,
                    )
        return Pruner.from_config(saved)

    def _adopt_saved_pruner(self, saved: dict) -> None:
        new = self._new_pruner
        if new is None:
            self._set_state(PENDING, self._saved_pruner(saved))
        else:
            self._set_state(PENDING, self._saved_pruner(
                saved, new.pruning_schedule, new.pruning_policy))

    def load_weights(self, filepath, *args, **kwargs):
        """`keras.Model.load_weights`; masks load onto their own weights by key.

        A file with pruning state must have been written for the same pruned
        weights (same layers and policy), else a `ValueError` names the weights
        on both sides. A file without pruning state (saved by a plain
        `keras.Model` with the same layers) loads into the layers and leaves
        the masks and pruning step as they are: the fine-tune-from-pretrained
        path for subclassed models.
        """
        if self._pruner is not None:
            self._pruner.expect_state(saving.has_pruning_state(filepath))
        try:
            return super().load_weights(filepath, *args, **kwargs)
        finally:
            if self._pruner is not None:
                self._pruner.expect_state(True)

    def make_train_function(self, force=False):
        # Without a distribution strategy Keras builds the model lazily, in
        # the first trace of the train step; the pruner follows from
        # `__call__` there (its variables are lifted out with `init_scope`).
        if self.built and self._pruning_state in (PENDING, ACTIVE):
            if keras.backend.backend() == "tensorflow":
                self._check_strategy()
                with self.distribute_strategy.scope():
                    self.build_pruning()
            else:
                self.build_pruning()
        result = super().make_train_function(force=force)
        if self._prunemix_split_update:
            self.train_function.reset()
        elif keras.backend.backend() == "jax" and self._pruning_state == ACTIVE and \
                type(self).train_step is _Pruning.train_step and self.steps_per_execution == 1:
            # Keras's own step with pruning (not a user's): its mask update
            # runs as a program of its own (see `SplitJaxTrainFunction`).
            self.train_function = _trainers.SplitJaxTrainFunction(self, self.train_function)
        return result

    @property
    def _prunemix_split_update(self) -> bool:
        """Whether `fit` runs the mask update as a program of its own (JAX)."""
        return isinstance(getattr(self, "train_function", None),
                          _trainers.SplitJaxTrainFunction)

    def _check_strategy(self):
        variables = list(self.weights)
        if self.optimizer is not None:
            variables += list(self.optimizer.variables)
        found = {}
        for variable in variables:
            strategy = _keras_compat.variable_strategy(variable)
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

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras's hook before the first step; keras#20585's fix lives in
        # `_keras_compat.first_batch_for_build`.
        iterator, data_batch = _keras_compat.first_batch_for_build(self, iterator, data_batch)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _distributable(self, logs):
        """Logs that Keras can reduce across workers: shape `(1,)` while
        keras#20585 reduces every log along axis 0 (the reduction returns
        scalars again). TensorFlow only: on JAX a step returns `(logs,
        state)`, passed through."""
        if keras.backend.backend() != "tensorflow" or \
                not _keras_compat.multi_worker_fit_bugs(self.distribute_strategy)[1]:
            return logs
        import tensorflow as tf

        return {k: tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0 else v
                for k, v in logs.items()}

    def test_step(self, *args, **kwargs):
        return self._distributable(super().test_step(*args, **kwargs))

    def train_step(self, *args, **kwargs):
        if self._pruning_state not in (PENDING, ACTIVE):
            return self._distributable(super().train_step(*args, **kwargs))
        return self._distributable(
            _trainers.train_step(self, super().train_step, *args, **kwargs))

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, then two checks that pruning did what was asked.

        Raises:
            ValueError: if a schedule returned a value that is not a sparsity
                in [0, 1) at a step where the masks were due (they were left
                as they were).

        A `fit` in which the optimizer updated the weights but the pruning
        step never advanced (a custom `train_step` that does not call
        `apply_pruning()`) warns once, naming the model.
        """
        pruner = self._pruner
        before = None
        if pruner is not None and self.optimizer is not None:
            before = (int(self.optimizer.iterations.numpy()), int(pruner.pruning_step.numpy()))
        history = super().fit(*args, **kwargs)
        pruner = self._pruner
        if pruner is None:
            return history
        step, value = (float(v) for v in pruner.invalid_target.numpy())
        if step:
            pruner.invalid_target.assign([0.0, 0.0])
            raise ValueError(
                f"Model '{self.name}': a pruning schedule returned {value} at step "
                f"{int(step)}, which is not a sparsity in [0, 1); the masks were left as "
                "they were. Fix the schedule so it returns a fraction in [0, 1)."
            )
        iterations, pruning_step = before or (0, 0)
        trained = int(self.optimizer.iterations.numpy()) > iterations
        if trained and int(pruner.pruning_step.numpy()) == pruning_step and not \
                self._warned_unpruned:
            self._warned_unpruned = True
            warnings.warn(
                f"Model '{self.name}' trained in `fit` but never pruned: its pruning step "
                "did not advance. A custom `train_step` must call `self.apply_pruning()` "
                "once after the optimizer update.",
                stacklevel=2,
            )
        return history

    def _strip(self) -> None:
        """Makes an unbuilt model stripped: it has no pruner and never prunes."""
        self._set_state(STRIPPED)

    def _stripped_copy(self):
        """A copy from this model's config with no pruner: an instance of the
        class it prunes (`pruned_class`), else of its own class, stripped."""
        config = {k: v for k, v in own_config(self).items() if k not in CONFIG_KEYS}
        base = type(self).__dict__.get("_prunemix_base")
        if base is not None:
            return base.from_config(config)
        if _config_carries_pruner(self):
            return type(self).from_config({**config, "prunemix_stripped": True})
        copy = type(self).from_config(config)
        copy._strip()
        return copy


def own_config(model) -> dict:
    """`model.get_config()` for re-creating `model` in this process: a
    keras_hub task's preprocessor, whose vocabulary lives in its assets and
    not in its config, is passed as the object itself (it has no weights;
    copies share it)."""
    config = model.get_config()
    if getattr(model, "preprocessor", None) is not None and \
            isinstance(config.get("preprocessor"), dict):
        config["preprocessor"] = model.preprocessor
    return config


def _config_carries_pruner(model) -> bool:
    """Whether the pruning state travels in the model's config (else in its
    build config): for a model built at construction, which needs its pruner
    then, and for a model of another class mixed with pruning, whose own
    `get_config` replaces the automatic one that records constructor
    keywords."""
    return isinstance(model, Functional) or PrunedModel not in type(model).__mro__


class _PrunedModelType(abc.ABCMeta):
    """PrunedModel's metaclass: mixed into another model class, pruning is
    inherited as PrunedModel's hooks (`_Pruning`), not as PrunedModel itself,
    whose bases Keras would otherwise rewrite when that class builds a
    functional graph; `isinstance(model, PrunedModel)` still holds."""

    def __new__(mcs, name, bases, namespace, **kwargs):
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        root = globals().get("PrunedModel")
        others = [b for b in bases if b is not root and b is not Functional
                  and issubclass(b, keras.Model) and not issubclass(b, _Pruning)]
        if root is not None and root in bases and others:
            cls.__bases__ = tuple(_Pruning if b is root else b for b in bases)
            root.register(cls)
        return cls


class PrunedModel(_Pruning, keras.Model, metaclass=_PrunedModelType):
    """A `keras.Model` whose training steps prune its weights.

    Subclass it like `keras.Model` (layers in `__init__`, `call`), or build
    it the functional way with `PrunedModel(inputs, outputs,
    pruning_schedule=...)`. It composes with any other model class: `class
    MyLM(prunemix.PrunedModel, keras_hub.models.GPT2CausalLM)` takes the
    task's own arguments plus `pruning_schedule=`, and is a `GPT2CausalLM`
    (`generate`, presets) that prunes in `fit`. (Such a class inherits
    PrunedModel's hooks directly, not the class itself, since Keras rewrites
    the bases of functional model classes; `isinstance(model, PrunedModel)`
    still holds.) Every prunable weight is found at any depth:
    built-in Dense/Conv/Embedding/RNN/MultiHeadAttention kernels and custom
    layers declared with `PrunableMixin`, `@prunable` or
    `get_prunable_weights()`.

    `fit()` runs the pruning inside the compiled train step (no callback):
    after each optimizer update it advances the pruning step, recomputes the
    masks when the schedule says so, and sets pruned weights to exactly zero.
    The logs and progress bar show `sparsity`. `evaluate()` and `predict()`
    run the plain model: the weights already hold the zeros.

    If you override `train_step`, call `self.apply_pruning()` once after your
    optimizer update(s); a `fit` whose steps never do is warned about.

    The model's `Pruner` owns the schedule, the policy and the masks. The
    policy is resolved once, when the pruner is built; saving records the
    resolution by each weight's stable key, and loading restores exactly it
    (schedule, pattern and target of every weight), also for a subclassed
    model whose schedule came through constructor keywords.

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

    @_keras_compat.keras_default
    def get_config(self) -> dict:
        # Marked as Keras's default: a subclass without its own `get_config`
        # gets Keras's automatic config, constructor keywords included.
        return super().get_config()


_PRUNED_CLASSES: dict = {}


def pruned_class(model_class: type) -> type:
    """The class that is a `model_class` and prunes like a `PrunedModel`.

    `prune_model` copies a model of any class other than plain
    `keras.Model`/`Sequential` into an instance of this class: it keeps the
    model's own methods and config (a keras_hub task still generates) and
    is registered for saving as `prunemix>Pruned:<registered name of
    model_class>`, which `prunemix.load_model` re-creates in any process.

    Args:
        model_class: a `keras.Model` subclass.

    Returns:
        `type("Pruned" + model_class.__name__, (PrunedModel, model_class), {})`,
        made once per class.

    Raises:
        TypeError: if `model_class` is not a `keras.Model` subclass or already prunes.

    Example:

    ```python
    PrunedGPT2 = prunemix.pruned_class(keras_hub.models.GPT2CausalLM)
    lm = PrunedGPT2(backbone=backbone, preprocessor=None,
                    pruning_schedule=prunemix.ConstantSparsity(0.5))
    ```
    """
    if not (isinstance(model_class, type) and issubclass(model_class, keras.Model)):
        raise TypeError(f"pruned_class takes a keras.Model subclass. Received: {model_class!r}")
    if issubclass(model_class, PrunedModel):
        raise TypeError(f"{model_class.__name__} already prunes (it is a PrunedModel).")
    if model_class not in _PRUNED_CLASSES:
        cls = type(f"Pruned{model_class.__name__}", (PrunedModel, model_class), {
            "__module__": __name__, "_prunemix_base": model_class,
            "__doc__": f"A `{model_class.__name__}` that prunes (`prunemix.pruned_class`).",
        })
        name = PRUNED_PREFIX + keras.saving.get_registered_name(model_class)
        keras.saving.register_keras_serializable(package="prunemix", name=name)(cls)
        _PRUNED_CLASSES[model_class] = cls
    return _PRUNED_CLASSES[model_class]


PRUNED_PREFIX = "Pruned:"


@contextlib.contextmanager
def deferred_pruning():
    """Models of pruning classes made inside get no pruner until
    `start_pruning` (how `prune_model` copies weights in first)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


@keras.saving.register_keras_serializable(package="prunemix", name="FunctionalPrunedModel")
class FunctionalPrunedModel(Functional, PrunedModel):
    """`PrunedModel(inputs, outputs, ...)`: a Functional model that prunes.

    A separate class so Keras never rewrites `PrunedModel`'s bases (Keras 3
    injects `Functional` into the class hierarchy of Model subclasses used
    the functional way, which would break every subclassed `PrunedModel`).
    Its config holds its pruner's config, resolution included.
    """

    _prunemix_base = keras.Model

    def __init__(
        self, *args, pruning_schedule: Any = None, pruning_policy: Any = None,
        pruner: dict | None = None, prunemix_format: Any = None,
        prunemix_stripped: bool = False, **kwargs
    ):
        self._check_pruning_args(args, kwargs, pruning_schedule, pruner, prunemix_format,
                                 prunemix_stripped)
        # Not `super().__init__`: `keras.Model.__init__` would rewrite bases.
        Functional.__init__(self, *args, **kwargs)
        shared = _keras_compat.shared_across_nesting(self)
        if shared:
            layer, nested = shared[0]
            warnings.warn(
                f"PrunedModel '{self.name}': layer '{layer}' belongs to the nested model "
                f"'{nested}' and is called again outside it (a tied LM head). Keras's "
                "`from_config` would create it twice, so this model cannot be saved and "
                "reloaded or copied (`strip_pruning` flattens it). Use "
                "`prunemix.prune_model(model)`, which copies the model through its "
                "own class, or `class MyLM(prunemix.PrunedModel, YourTaskClass)`.",
                UserWarning, stacklevel=3,
            )
        self._begin_pruning(pruning_schedule, pruning_policy, pruner, prunemix_stripped)

    def get_config(self) -> dict:
        return self._with_pruning_config(Functional.get_config(self))
