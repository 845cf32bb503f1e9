import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import prunemix
from prunemix import schedules


def tfmot_polynomial(initial, final, begin, end, power, step):
    """tfmot's PolynomialDecay formula, written out in numpy."""
    p = min(1.0, max(0.0, (step - begin) / (end - begin)))
    return final + (initial - final) * (1 - p) ** power


def tfmot_should_prune(begin, end, frequency, step):
    in_range = step >= begin and (step <= end or end < 0)
    return in_range and (step - begin) % frequency == 0


STEPS = list(range(0, 130))


@pytest.mark.parametrize(
    "args", [(0.0, 0.9, 0, 100, 3, 10), (0.2, 0.8, 10, 90, 1, 7), (0.5, 0.95, 5, 6, 2, 1)]
)
def test_polynomial_decay_matches_tfmot_formula(args):
    initial, final, begin, end, power, frequency = args
    schedule = prunemix.PolynomialDecay(initial, final, begin, end, power, frequency)
    got = [float(schedule(step)) for step in STEPS]
    want = [tfmot_polynomial(initial, final, begin, end, power, step) for step in STEPS]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_schedules_compile_to_the_same_values():
    schedule = prunemix.PolynomialDecay(0.1, 0.9, 3, 50, power=3, frequency=4)
    compiled = tf.function(
        lambda s: (schedule(s), schedule.should_prune(s)), jit_compile=True
    )
    for step in STEPS:
        sparsity, due = compiled(tf.constant(step, tf.int64))
        assert float(sparsity) == pytest.approx(float(schedule(step)), abs=1e-12)
        assert bool(due) == bool(schedule.should_prune(step))


@pytest.mark.parametrize("begin,end,frequency", [(0, -1, 10), (5, 40, 7), (3, 3, 1), (0, 20, 100)])
def test_constant_sparsity_follows_tfmot_rule_plus_first_step(begin, end, frequency):
    schedule = prunemix.ConstantSparsity(0.6, begin, end, frequency)
    first = max(begin, 1)
    for step in STEPS:
        in_range = step >= begin and (end < 0 or step <= end)
        want = tfmot_should_prune(begin, end, frequency, step) or (in_range and step == first)
        assert bool(schedule.should_prune(step)) is want, step
        assert float(schedule(step)) == 0.6


def test_first_update_lands_on_step_one_even_with_large_frequency():
    schedule = prunemix.ConstantSparsity(0.5, begin_step=0, frequency=100)
    assert [s for s in range(0, 250) if schedule.should_prune(s)] == [0, 1, 100, 200]


def test_degenerate_polynomial_range_jumps_to_final():
    schedule = prunemix.PolynomialDecay(0.1, 0.7, begin_step=4, end_step=4)
    assert float(schedule(3)) == pytest.approx(0.1)
    assert float(schedule(4)) == pytest.approx(0.7)
    assert float(schedule(9)) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"target_sparsity": 1.0}, "target_sparsity"),
        ({"target_sparsity": 1.5}, "target_sparsity=1.5"),
        ({"target_sparsity": -0.1}, "target_sparsity"),
        ({"target_sparsity": float("nan")}, "target_sparsity"),
        ({"target_sparsity": 0.5, "frequency": 0}, "frequency"),
        ({"target_sparsity": 0.5, "begin_step": -1}, "begin_step"),
        ({"target_sparsity": 0.5, "begin_step": 10, "end_step": 5}, "end_step"),
        ({"target_sparsity": 0.5, "end_step": -2}, "end_step"),
    ],
)
def test_constant_sparsity_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prunemix.ConstantSparsity(**kwargs)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"final_sparsity": 50}, ValueError, "final_sparsity=50"),
        ({"initial_sparsity": True}, TypeError, "initial_sparsity"),
        ({"end_step": -1}, ValueError, "end_step"),
        ({"begin_step": 20, "end_step": 10}, ValueError, "begin_step=20, end_step=10"),
        ({"power": 0}, ValueError, "power"),
        ({"frequency": 2.5}, TypeError, "frequency"),
    ],
)
def test_polynomial_decay_rejects_bad_arguments(kwargs, error, match):
    args = {"initial_sparsity": 0.0, "final_sparsity": 0.5, "begin_step": 0, "end_step": 10}
    with pytest.raises(error, match=match):
        prunemix.PolynomialDecay(**{**args, **kwargs})


@pytest.mark.parametrize(
    "schedule",
    [
        prunemix.ConstantSparsity(0.25, 3, 30, 5),
        prunemix.PolynomialDecay(0.1, 0.8, 2, 40, power=2, frequency=3),
    ],
)
def test_schedules_round_trip_through_keras_serialization(schedule):
    config = keras.saving.serialize_keras_object(schedule)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    assert schedules.get(config).get_config() == schedule.get_config()


def test_get_accepts_a_traceable_callable_and_rejects_junk():
    schedule = schedules.get(lambda step: 0.5 * (1.0 - 0.5 ** keras.ops.cast(step, "float64")))
    assert float(schedule(1)) == pytest.approx(0.25)
    assert bool(schedule.should_prune(12345))
    with pytest.raises(TypeError, match="pruning_schedule"):
        schedules.get(0.5)
    with pytest.raises(TypeError, match="pruning_schedule"):
        schedules.get("polynomial")


def test_values_are_float64_for_exact_counts():
    # 0.95 * 10 is 9.5 in float64 (rounds to 10 zeros, like Python) but
    # 9.4999998 in float32 (9 zeros): the schedule must keep float64.
    value = prunemix.ConstantSparsity(0.95)(1)
    assert value.dtype == tf.float64
    assert round(float(value) * 10) == round(0.95 * 10) == 10
    assert not math.isclose(float(tf.cast(0.95, tf.float32)) * 10, 9.5, abs_tol=0)
