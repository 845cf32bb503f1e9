"""The backend-specific half of `PrunedModel`'s training step.

`PrunedModel` keeps the Keras hooks; what differs by backend lives here, the
way Keras splits `TensorFlowTrainer` and `JAXTrainer`:

- TensorFlow: Keras's `train_step(data)` updates variables in place, then
  `Pruner.apply()` assigns masks and zeros inside the same `tf.function`.
- JAX: Keras's `train_step(state, data)` is stateless: variable values
  travel in `state` and the variables change only at `jax_state_sync()`.
  `Pruner.stateless_apply` reads the weights, masks and step from `state`
  and returns their new values, inside the same `jax.jit`.

In both, the pruning step advances only when `optimizer.iterations` did (a
step skipped by loss scaling or a gradient-accumulation micro-step does not
count).
"""

from __future__ import annotations

import keras


def train_step(model, keras_step, *args, **kwargs):
    """`keras_step` (Keras's own train step), then one pruning step."""
    if keras.backend.backend() == "jax":
        return _jax_train_step(model, keras_step, *args, **kwargs)
    return _tensorflow_train_step(model, keras_step, *args, **kwargs)


def _tensorflow_train_step(model, keras_step, *args, **kwargs):
    import tensorflow as tf

    before = tf.identity(model.optimizer.iterations)
    logs = keras_step(*args, **kwargs)
    updated = tf.greater(model.optimizer.iterations, before)
    return {**logs, "sparsity": model.apply_pruning(advance=updated)}


def _iterations_index(model) -> int:
    return next(i for i, v in enumerate(model.optimizer.variables)
                if v is model.optimizer.iterations)


def _jax_train_step(model, keras_step, state, data):
    index = _iterations_index(model)
    before = state[2][index]
    logs, state = keras_step(state, data)
    state, sparsity = stateless_pruning(model, state, state[2][index] > before)
    return {**logs, "sparsity": sparsity}, state


def stateless_pruning(model, state: tuple, advance=True) -> tuple:
    """One pruning step on a JAX training state.

    Args:
        model: a built `PrunedModel`.
        state: `(trainable_variables, non_trainable_variables,
            optimizer_variables, metrics_variables)` values, as a JAX
            `train_step(state, data)` receives and returns them.
        advance: whether an optimizer update happened.

    Returns:
        `(new_state, sparsity)`.
    """
    trainable, non_trainable, *rest = state
    pruner = model.build_pruning()
    own_trainable, own_non_trainable = model.trainable_variables, model.non_trainable_variables
    if len(own_trainable) != len(trainable) or len(own_non_trainable) != len(non_trainable):
        raise ValueError(
            f"Model '{model.name}': `apply_pruning(state)` takes the state a JAX "
            "`train_step(self, state, data)` receives, `(trainable_variables, "
            "non_trainable_variables, optimizer_variables, metrics_variables)`, with one "
            f"value per variable ({len(own_trainable)} trainable, {len(own_non_trainable)} "
            f"non-trainable). Received: {len(trainable)} and {len(non_trainable)} values."
        )
    own = [*own_trainable, *own_non_trainable]
    new, sparsity = pruner.stateless_apply(list(zip(own, [*trainable, *non_trainable],
                                                    strict=True)), advance)
    new = {id(variable): value for variable, value in new}
    trainable = [new.get(id(v), x) for v, x in zip(own_trainable, trainable, strict=True)]
    non_trainable = [new.get(id(v), x)
                     for v, x in zip(own_non_trainable, non_trainable, strict=True)]
    return (trainable, non_trainable, *rest), sparsity
