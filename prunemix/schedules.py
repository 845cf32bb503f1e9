"""Pruning schedules: pure `step -> sparsity` functions.

A schedule answers two questions for a pruning step (the count of optimizer
updates applied so far, starting at 1 for the first update):

- `schedule(step)`: the target sparsity, a float64 scalar tensor in [0, 1)
  (float32 on JAX without `jax_enable_x64`);
- `schedule.should_prune(step)`: whether the masks are recomputed at `step`.

Both are branch-free, so they trace, compile under XLA and run eagerly alike.

Example:

>>> import prunemix
>>> schedule = prunemix.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100)
>>> round(float(schedule(50)), 4)
0.7
>>> bool(schedule.should_prune(100)), bool(schedule.should_prune(150))
(True, False)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from prunemix import _backend, _validate

__all__ = ["ConstantSparsity", "PolynomialDecay", "PruningSchedule", "check_values", "get"]

_PROBE_STEPS = (0, 1, 2, 10, 100, 1000, 10_000, 100_000, 1_000_000)


def _check_sparsity(name: str, value: Any) -> float:
    return _validate.fraction(value, name, error=TypeError)


def _check_int(name: str, value: Any, minimum: int) -> int:
    return _validate.integer(value, name, minimum=minimum, error=TypeError)


def _check_steps(begin_step: Any, end_step: Any, frequency: Any, allow_forever: bool):
    begin_step = _check_int("begin_step", begin_step, 0)
    end_step = _check_int("end_step", end_step, -1 if allow_forever else 0)
    if end_step != -1 and end_step < begin_step:
        raise ValueError(
            "`end_step` must be >= `begin_step`"
            + (" (or -1 to prune forever)" if allow_forever else "")
            + f". Received: begin_step={begin_step}, end_step={end_step}"
        )
    if end_step == 0:
        # Pruning steps count optimizer updates and start at 1.
        raise ValueError(
            "`end_step` leaves no step to prune at: pruning steps count optimizer "
            "updates and start at 1, so `end_step` must be >= 1"
            + (" (or -1 to prune forever)" if allow_forever else "")
            + f". Received: begin_step={begin_step}, end_step={end_step}"
        )
    frequency = _check_int("frequency", frequency, 1)
    return begin_step, end_step, frequency


class PruningSchedule:
    """Base class of pruning schedules.

    Subclasses implement `__call__(step)` (target sparsity at `step`) and
    `get_config()`; they may override `should_prune(step)`, which by default
    recomputes the masks at every step. Register subclasses with
    `keras.saving.register_keras_serializable` so models that use them can be
    saved.
    """

    def __call__(self, step):
        raise NotImplementedError(
            f"{type(self).__name__} must implement `__call__(step)`."
        )

    def should_prune(self, step):
        """Whether the masks are recomputed at `step` (a bool scalar tensor)."""
        del step
        return ops.convert_to_tensor(True)

    def get_config(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must implement `get_config()`.")

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        except NotImplementedError:
            args = "..."
        return f"{type(self).__name__}({args})"


class _StepRange(PruningSchedule):
    """Shared `[begin_step, end_step]` every-`frequency` logic (tfmot's rule).

    `should_prune(step)` is true when `step >= begin_step`, `step <= end_step`
    (or `end_step == -1`) and `(step - begin_step) % frequency == 0`, exactly as
    in `tfmot.sparsity.keras`. One deliberate addition: it is also true at the
    first step of the range, `max(begin_step, 1)`, so a run shorter than
    `frequency` steps still prunes (with tfmot the first update only lands at
    step `begin_step + frequency` when `begin_step` is 0).
    """

    # Built-in schedules are fully described by their config: two equal
    # configs mean the same schedule (and share one mask-update group).
    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.get_config().items()))))

    def probe_steps(self) -> list:
        end = self.end_step if self.end_step != -1 else self.begin_step + 10 * self.frequency
        return sorted({0, 1, self.begin_step, (self.begin_step + end) // 2, end, 2 * end + 1})

    def should_prune(self, step):
        step = ops.cast(step, _backend.wide("int64"))
        in_range = ops.greater_equal(step, self.begin_step)
        if self.end_step != -1:
            in_range = ops.logical_and(in_range, ops.less_equal(step, self.end_step))
        turn = ops.equal(ops.mod(step - self.begin_step, self.frequency), 0)
        first = ops.equal(step, max(self.begin_step, 1))
        return ops.logical_and(in_range, ops.logical_or(turn, first))


@keras.saving.register_keras_serializable(package="prunemix")
class ConstantSparsity(_StepRange):
    """Prunes to a constant sparsity, recomputing the masks every `frequency` steps.

    The masks are recomputed at steps `begin_step + i * frequency` up to
    `end_step` (`-1`: until training ends), and once at the first step of the
    range. Same arguments and values as `tfmot.sparsity.keras.ConstantSparsity`.

    Args:
        target_sparsity: fraction of weights set to zero, in [0, 1).
        begin_step: first step at which the masks may change.
        end_step: last step at which the masks may change; `-1` for no end.
        frequency: recompute the masks every `frequency` steps.

    Example:

    >>> schedule = ConstantSparsity(0.9, begin_step=10, frequency=5)
    >>> float(schedule(0)), float(schedule(1000))
    (0.9, 0.9)
    >>> [int(s) for s in range(8, 22) if schedule.should_prune(s)]
    [10, 15, 20]
    """

    def __init__(
        self,
        target_sparsity: float,
        begin_step: int = 0,
        end_step: int = -1,
        frequency: int = 100,
    ):
        self.target_sparsity = _check_sparsity("target_sparsity", target_sparsity)
        self.begin_step, self.end_step, self.frequency = _check_steps(
            begin_step, end_step, frequency, allow_forever=True
        )

    def __call__(self, step):
        del step
        return ops.convert_to_tensor(self.target_sparsity, dtype=_backend.wide("float64"))

    def get_config(self) -> dict:
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="prunemix")
class PolynomialDecay(_StepRange):
    """Raises sparsity from `initial_sparsity` to `final_sparsity` polynomially.

    The schedule of Zhu & Gupta (2017), as in
    `tfmot.sparsity.keras.PolynomialDecay`:

        p = clip((step - begin_step) / (end_step - begin_step), 0, 1)
        sparsity = final + (initial - final) * (1 - p) ** power

    Sparsity rises quickly at first, then flattens towards `final_sparsity`,
    reached at `end_step`. When `end_step == begin_step` the schedule jumps
    straight to `final_sparsity` (tfmot divides by zero there).

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity from `end_step` on, in [0, 1).
        begin_step: first step at which the masks may change.
        end_step: last step at which the masks may change (required).
        power: exponent of the decay; 3 in the paper, 1 for a linear ramp.
        frequency: recompute the masks every `frequency` steps.

    Example:

    >>> schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, power=1)
    >>> [round(float(schedule(s)), 2) for s in (0, 5, 10, 20)]
    [0.0, 0.25, 0.5, 0.5]
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ):
        self.initial_sparsity = _check_sparsity("initial_sparsity", initial_sparsity)
        self.final_sparsity = _check_sparsity("final_sparsity", final_sparsity)
        self.begin_step, self.end_step, self.frequency = _check_steps(
            begin_step, end_step, frequency, allow_forever=False
        )
        if (
            isinstance(power, bool)
            or not isinstance(power, numbers.Real)
            or not power > 0
            or math.isinf(power)
        ):
            raise ValueError(f"`power` must be a positive number. Received: power={power!r}")
        self.power = power

    def __call__(self, step):
        step = ops.cast(step, _backend.wide("float64"))
        span = self.end_step - self.begin_step
        if span == 0:
            p = ops.cast(step >= self.begin_step, _backend.wide("float64"))
        else:
            p = ops.clip((step - self.begin_step) / span, 0.0, 1.0)
        return self.final_sparsity + (
            self.initial_sparsity - self.final_sparsity
        ) * ops.power(1.0 - p, self.power)

    def get_config(self) -> dict:
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="prunemix", name="FunctionSchedule")
class _FunctionSchedule(PruningSchedule):
    """A plain `step -> sparsity` callable; the masks follow it at every step."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, step):
        return ops.cast(self.fn(step), _backend.wide("float64"))

    def raw(self, step):
        return self.fn(step)

    def __eq__(self, other) -> bool:
        # Two callables never mean the same schedule, whatever their names.
        return type(self) is type(other) and self.fn is other.fn

    def __hash__(self) -> int:
        return hash(id(self.fn))

    def __repr__(self) -> str:
        return f"schedule {getattr(self.fn, '__qualname__', self.fn)!r}"

    def get_config(self) -> dict:
        return {"fn": keras.saving.serialize_keras_object(self.fn)}

    @classmethod
    def from_config(cls, config: dict):
        return cls(keras.saving.deserialize_keras_object(config["fn"]))


def get(identifier: Any) -> PruningSchedule:
    """Returns a `PruningSchedule` for a schedule, a config dict or a callable.

    Args:
        identifier: a `PruningSchedule`; a dict from
            `keras.saving.serialize_keras_object`; or any callable mapping a
            step tensor to a sparsity tensor (traceable: no Python `if` on the
            step). A plain callable recomputes the masks at every step.

    Returns:
        A `PruningSchedule`.

    Raises:
        TypeError: if `identifier` is none of these.
    """
    if isinstance(identifier, PruningSchedule):
        return identifier
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
        if isinstance(identifier, PruningSchedule):
            return identifier
    if callable(identifier) and not isinstance(identifier, type):
        return _FunctionSchedule(identifier)
    raise TypeError(
        "`pruning_schedule` must be a prunemix schedule (e.g. "
        "`prunemix.PolynomialDecay(...)`) or a callable `step -> sparsity`. "
        f"Received: pruning_schedule={identifier!r}"
    )


def with_final_sparsity(schedule: PruningSchedule, sparsity: float) -> PruningSchedule:
    """`schedule` with its final (or constant) sparsity replaced, same timing.

    Raises:
        TypeError: for a schedule without a final sparsity (a plain callable).
    """
    config = schedule.get_config()
    for key in ("final_sparsity", "target_sparsity"):
        if key in config:
            return type(schedule).from_config({**config, key: sparsity})
    raise TypeError(
        f"Cannot set a final sparsity on {type(schedule).__name__}; give the rule "
        "its own `schedule=` instead."
    )


def check_values(schedule: PruningSchedule) -> None:
    """Evaluates `schedule` eagerly at representative steps and checks each value.

    Called when a pruner is built, so a schedule that returns a sparsity
    outside [0, 1), NaN, or anything but a float scalar is an error then,
    not a silent 100 % or a negative count inside a compiled step.

    Raises:
        ValueError: naming the schedule, the step and the value.
    """
    steps = getattr(schedule, "probe_steps", lambda: _PROBE_STEPS)()
    raw = getattr(schedule, "raw", schedule)
    for step in steps:
        value = raw(ops.convert_to_tensor(step, _backend.wide("int64")))
        problem = _value_problem(value)
        if problem:
            raise ValueError(
                f"Pruning {schedule!r} returned {_show(value)} at step {step}: {problem}. "
                "A schedule must return a float sparsity in [0, 1) (a fraction, not a "
                "percentage)."
            )


def _value_problem(value) -> str | None:
    if isinstance(value, bool):
        return "a bool is not a sparsity"
    if isinstance(value, numbers.Real):
        shape, floating = (), isinstance(value, float)
    else:
        try:
            tensor = ops.convert_to_tensor(value)
        except Exception:  # noqa: BLE001 - any unconvertible value is reported
            return f"not a number ({type(value).__name__})"
        shape, floating = tuple(tensor.shape), "float" in str(tensor.dtype)
    if shape != ():
        return f"not a scalar (shape {shape})"
    if not floating:
        return "not a float"
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if not 0.0 <= number < 1.0:
        return "outside [0, 1)"
    return None


def _show(value) -> str:
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return repr(value)
