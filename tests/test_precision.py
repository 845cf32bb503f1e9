"""Pruning follows optimizer updates: accumulation, loss scaling, precision."""

import keras
import numpy as np
import pytest

import prunemix
from tests.test_model import MLP, X, Y, compiled


def test_gradient_accumulation_advances_once_per_update(mode):
    model = MLP(prunemix.ConstantSparsity(0.5, begin_step=2, frequency=2))
    optimizer = keras.optimizers.Adam(gradient_accumulation_steps=2)
    compiled(model, mode, optimizer=optimizer)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)  # 8 batches, 4 updates
    assert int(model.optimizer.iterations.numpy()) == 4
    assert int(model.pruner.pruning_step.numpy()) == 4
    assert prunemix.sparsity_report(model).sparsity == pytest.approx(0.5, abs=1e-3)


def test_steps_per_execution(mode):
    model = compiled(MLP(), {**mode, "steps_per_execution": 3})
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    assert int(model.pruner.pruning_step.numpy()) == 8
    assert [r.zeros for r in prunemix.sparsity_report(model)] == [
        round(float(model.pruning_schedule(6)) * 384),
        round(float(model.pruning_schedule(6)) * 96),
    ]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_masks_float32_variables(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = compiled(MLP(prunemix.ConstantSparsity(0.75, frequency=2)), {})
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for p in model.pruner.pruned_weights:
        assert p.weight.dtype == "float32"
        weight, mask = p.weight.numpy(), p.mask.numpy()
        assert (~mask).sum() == round(0.75 * mask.size)
        assert np.all(weight[~mask] == 0)
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert int(model.pruner.pruning_step.numpy()) == int(model.optimizer.iterations.numpy())


def test_skipped_loss_scaled_step_does_not_advance():
    model = compiled(MLP(prunemix.ConstantSparsity(0.5, frequency=1)), {})
    model.optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    model.compile(model.optimizer, model.loss)
    x = X.copy()
    x[0, 0] = np.inf  # non-finite gradients: the loss scale halves, no update
    model.fit(x[:8], Y[:8], batch_size=8, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 0
    assert int(model.pruner.pruning_step.numpy()) == 0
    model.fit(X[8:16], Y[8:16], batch_size=8, epochs=1, verbose=0)
    assert int(model.pruner.pruning_step.numpy()) == 1
