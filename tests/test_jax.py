"""What runs on the JAX backend today (a separate process: `make test` runs
this file again with KERAS_BACKEND=jax; under TensorFlow it is skipped).

Pruning itself trains on TensorFlow (issue 19 brings it to JAX): a file
`strip_pruning` wrote on TensorFlow loads and predicts on JAX with Keras
alone, `shrink` and the schedules run on JAX, and a `PrunedModel` says
clearly that it needs TensorFlow.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import prunemix

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax",
                                reason="runs in the KERAS_BACKEND=jax process of `make test`")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Written by a TensorFlow process: a small CNN pruned by ChannelGroups in
# `fit`, stripped and saved, with inputs and its predictions.
ON_TENSORFLOW = """
import sys
import keras, numpy as np, prunemix
keras.utils.set_random_seed(0)
out = sys.argv[1]
inputs = keras.Input((8, 8, 1))
x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inputs)
x = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(x)
x = keras.layers.GlobalAveragePooling2D()(x)
model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
rng = np.random.default_rng(0)
images = rng.normal(size=(32, 8, 8, 1)).astype("float32")
pruned = prunemix.prune_model(
    model, prunemix.ConstantSparsity(0.5, 0, frequency=1),
    pruning_policy=[prunemix.Rule("*", pattern=prunemix.ChannelGroups())])
pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
pruned.fit(images, np.arange(32) % 3, epochs=2, batch_size=16, verbose=0)
stripped = prunemix.strip_pruning(pruned)
stripped.save(out + "/cnn.keras")
np.save(out + "/images.npy", images)
np.save(out + "/predictions.npy", stripped.predict(images, verbose=0))
"""


@pytest.fixture(scope="module")
def from_tensorflow(tmp_path_factory):
    out = tmp_path_factory.mktemp("tf")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": ROOT}
    subprocess.run([sys.executable, "-c", ON_TENSORFLOW, str(out)], check=True, env=env,
                   capture_output=True)
    return out


def test_a_stripped_tensorflow_file_loads_and_predicts_on_jax(from_tensorflow):
    model = keras.saving.load_model(from_tensorflow / "cnn.keras")
    images = np.load(from_tensorflow / "images.npy")
    np.testing.assert_allclose(model.predict(images, verbose=0),
                               np.load(from_tensorflow / "predictions.npy"), atol=1e-5)
    for name in ("c1", "c2"):  # 4 of 8 filters zero in each pruned conv
        kernel = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
        assert int((~kernel.reshape(-1, 8).any(axis=0)).sum()) == 4, name


def test_shrink_runs_on_jax_and_keeps_the_predictions(from_tensorflow, tmp_path):
    model = keras.saving.load_model(from_tensorflow / "cnn.keras")
    images = np.load(from_tensorflow / "images.npy")
    small = prunemix.shrink(model)
    assert [small.get_layer(n).filters for n in ("c1", "c2")] == [4, 4]
    np.testing.assert_allclose(small.predict(images, verbose=0),
                               model.predict(images, verbose=0), rtol=1e-5, atol=1e-5)
    small.save(tmp_path / "small.keras")
    reloaded = keras.saving.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0),
                               small.predict(images, verbose=0), atol=1e-6)


def test_schedules_give_the_same_sparsities_on_jax():
    schedule = prunemix.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=10, power=3)
    for step in (0, 1, 5, 10, 20):
        want = 0.8 + (0.0 - 0.8) * (1 - min(step, 10) / 10) ** 3
        assert float(schedule(step)) == pytest.approx(want, abs=1e-6)
    assert float(prunemix.ConstantSparsity(0.5, 0, frequency=1)(3)) == 0.5


def test_a_pruned_model_says_it_trains_on_tensorflow():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(inputs)
    with pytest.raises(NotImplementedError, match="trains on the TensorFlow backend, and "
                                                  "KERAS_BACKEND is 'jax'"):
        prunemix.PrunedModel(inputs, outputs, pruning_schedule=prunemix.ConstantSparsity(0.5))
    with pytest.raises(NotImplementedError, match="KERAS_BACKEND=tensorflow"):
        prunemix.prune_model(keras.Model(inputs, outputs), prunemix.ConstantSparsity(0.5))
