import keras
import numpy as np
import pytest
import tensorflow as tf

import prunemix

RNG = np.random.default_rng(0)
X = RNG.random((64, 12)).astype("float32")
Y = RNG.integers(0, 3, 64)


def replica_values(variable):
    return [v.numpy() for v in variable.value.values]


@pytest.mark.skipif(
    len(tf.config.list_logical_devices("CPU")) < 2, reason="needs 2 logical CPUs (conftest)"
)
def test_mirrored_fit_keeps_replicas_identical_and_steps_once():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        inputs = keras.Input((12,))
        outputs = keras.layers.Dense(3)(keras.layers.Dense(16, activation="relu")(inputs))
        model = prunemix.PrunedModel(
            inputs, outputs,
            pruning_schedule=prunemix.PolynomialDecay(0.0, 0.7, 0, 6, frequency=2),
        )
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0)
    pruner = model.pruner
    # One pruning step per global step, equal to the optimizer's.
    assert int(pruner.pruning_step.numpy()) == 8
    assert int(model.optimizer.iterations.numpy()) == 8
    for p in pruner.pruned_weights:
        masks, weights = replica_values(p.mask), replica_values(p.weight)
        assert len(masks) == 2
        np.testing.assert_array_equal(masks[0], masks[1])
        np.testing.assert_array_equal(weights[0], weights[1])
        assert (~masks[0]).sum() == round(0.7 * masks[0].size)
        assert np.all(weights[0][~masks[0]] == 0)
