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


def mirrored():
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


class Net(prunemix.PrunedModel):
    def __init__(self, **kwargs):
        super().__init__(pruning_schedule=prunemix.ConstantSparsity(0.5, frequency=2), **kwargs)
        self.hidden = keras.layers.Dense(16)
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x, y, self(x, training=True))
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights, strict=True))
        return {"loss": loss, "sparsity": self.apply_pruning()}


@pytest.mark.skipif(len(tf.config.list_logical_devices("CPU")) < 2, reason="needs 2 CPUs")
def test_custom_train_step_under_mirrored_strategy():
    strategy = mirrored()
    with strategy.scope():
        model = Net()
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    assert int(model.pruner.pruning_step.numpy()) == 4
    for p in model.pruner.pruned_weights:
        masks, weights = replica_values(p.mask), replica_values(p.weight)
        np.testing.assert_array_equal(masks[0], masks[1])
        np.testing.assert_array_equal(weights[0], weights[1])
        assert (~masks[0]).sum() == round(0.5 * masks[0].size)


@pytest.mark.skipif(len(tf.config.list_logical_devices("CPU")) < 2, reason="needs 2 CPUs")
def test_model_built_outside_the_scope_is_a_clear_error():
    model = Net(name="outside")
    model(X[:1])
    with mirrored().scope():
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="'outside' mixes variables created under different"):
        model.fit(X, Y, batch_size=16, verbose=0)


@pytest.mark.skipif(len(tf.config.list_logical_devices("CPU")) < 2, reason="needs 2 CPUs")
def test_save_under_a_strategy_and_load_with_or_without_it(tmp_path):
    with mirrored().scope():
        inputs = keras.Input((12,))
        model = prunemix.PrunedModel(
            inputs, keras.layers.Dense(3)(keras.layers.Dense(16)(inputs)),
            pruning_schedule=prunemix.ConstantSparsity(0.5, frequency=2),
        )
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, Y, batch_size=16, verbose=0)
    model.save(tmp_path / "m.keras")
    plain = keras.saving.load_model(tmp_path / "m.keras")
    with mirrored().scope():
        distributed = keras.saving.load_model(tmp_path / "m.keras")
    for loaded in (plain, distributed):
        assert int(loaded.pruner.pruning_step.numpy()) == 4
        for a, b in zip(model.pruner.pruned_weights, loaded.pruner.pruned_weights, strict=True):
            np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
        loaded.fit(X, Y, batch_size=16, verbose=0)
        assert int(loaded.pruner.pruning_step.numpy()) == 8
