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
import numpy as np


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


def _position(variables: list, variable) -> int:
    """Where `variable` is in `variables` (by identity): its value's place in
    a JAX training state."""
    return next(i for i, v in enumerate(variables) if v is variable)


def _jax_train_step(model, keras_step, state, data):
    index = _position(model.optimizer.variables, model.optimizer.iterations)
    before = state[2][index]
    logs, state = keras_step(state, data)
    split = isinstance(model.train_function, SplitJaxTrainFunction)
    masks = "later" if split else "when_due"
    state, sparsity = stateless_pruning(model, state, state[2][index] > before, masks)
    return {**logs, "sparsity": sparsity}, state


# Steps whose due-ness the host computes at once (`Pruner.due_steps`).
_WINDOW = 1024


class SplitJaxTrainFunction:
    """Keras's JAX train function (one step per call), with the mask update
    as a jitted program of its own, run only at the steps a schedule is due.

    In the step, a mask-update branch costs even when not taken
    (`bench/jax_step_parts.py`, a 6.3M-weight MLP: 1.20x with it, 1.00x
    as its own program; our guess is that XLA:CPU allocates scratch memory
    sized for the branch on every call).

    The host does not read the pruning step back after every step (that
    would wait for each step to finish): it predicts the step, one more per
    call, and reads it back only when the predicted step is due. A step that
    did not advance (skipped by loss scaling) only makes the prediction run
    ahead, and every read resets it, so each due step is still seen at the
    call that reaches it.
    """

    def __init__(self, model, train_function):
        import jax

        self.model, self.train_function = model, train_function
        self._index = _position(model.non_trainable_variables, model.pruner.pruning_step)
        self._update = jax.jit(lambda state: stateless_pruning(model, state, False, "now"),
                               donate_argnums=0)
        self.reset()

    def reset(self) -> None:
        """Forget the step (read it back at the next call): at each `fit`."""
        self._step, self._updated_at = None, None
        self._window = (0, np.zeros(0, bool))

    def _due(self, step: int) -> bool:
        start, due = self._window
        if not start <= step < start + len(due):
            self._window = (step, self.model.pruner.due_steps(step, _WINDOW))
            start, due = self._window
        return bool(due[step - start])

    def __call__(self, state, data):
        logs, state = self.train_function(state, data)
        if self._step is not None and not self._due(self._step + 1):
            self._step += 1
            return logs, state
        step = int(state[1][self._index])
        if step != self._updated_at and self._due(step):
            state, sparsity = self._update(state)
            logs = {**logs, "sparsity": sparsity}
            self._updated_at = step
        self._step = step
        return logs, state


def stateless_pruning(model, state: tuple, advance=True, masks: str = "when_due") -> tuple:
    """One pruning step on a JAX training state.

    Args:
        model: a built `PrunedModel`.
        state: `(trainable_variables, non_trainable_variables,
            optimizer_variables, metrics_variables)` values, as a JAX
            `train_step(state, data)` receives and returns them.
        advance: whether an optimizer update happened.
        masks: see `Pruner.stateless_apply`.

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
                                                    strict=True)), advance, masks)
    new = {id(variable): value for variable, value in new}
    trainable = [new.get(id(v), x) for v, x in zip(own_trainable, trainable, strict=True)]
    non_trainable = [new.get(id(v), x)
                     for v, x in zip(own_non_trainable, non_trainable, strict=True)]
    return (trainable, non_trainable, *rest), sparsity
