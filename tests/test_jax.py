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

import jax
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


def test_pruned_count_is_the_same_without_float64():
    assert not jax.config.jax_enable_x64
    for sparsity, size, want in [(0.4375, 216, 94), (0.4375, 232, 102), (0.5, 7, 4),
                                 (0.1, 5, 0), (0.7, 15, 10), (0.5, 2**31 - 1, 2**30)]:
        assert int(prunemix.masks.pruned_count(sparsity, size)) == want
        # As a traced float32 value, the way a schedule gives it under jit.
        count = jax.jit(prunemix.masks.pruned_count, static_argnums=1)(
            np.float32(sparsity), size)
        assert int(count) == want


X = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
Y = np.arange(64) % 8
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
SPARSITY = 0.4375
# Units pruned of each weight at SPARSITY (the MLP's kernels: 16x16, 16x8).
PATTERNS = {
    "magnitude": (None, [112, 56]),
    "global": (prunemix.GlobalMagnitude(), None),  # 168 over both
    "block": (prunemix.BlockSparsity((1, 4)), [28 * 4, 14 * 4]),
    "nm": (prunemix.NMSparsity(2, 4), [128, 64]),
    "structured": (prunemix.StructuredSparsity(), [7 * 16, 4 * 16]),
    "input_block": (prunemix.InputBlockSparsity(4), [28 * 4, 14 * 4]),
    # 7 of 16 hidden units: their kernel columns, output rows and biases.
    "channels": (prunemix.ChannelGroups(), [7 * 16, 7 * 8, 7]),
}


class Net(prunemix.PrunedModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(16, activation="relu", name="hidden")
        self.out = keras.layers.Dense(8, name="out")

    def call(self, x):
        return self.out(self.hidden(x))


def functional(schedule, policy):
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    return prunemix.PrunedModel(inputs, keras.layers.Dense(8, name="out")(hidden),
                                pruning_schedule=schedule, pruning_policy=policy)


def masks_of(model):
    return {p.path: np.asarray(p.mask.numpy()) for p in model.pruner.pruned_weights}


def assert_zero_where_masked(model):
    for p in model.pruner.pruned_weights:
        weight = np.asarray(p.weight.numpy())
        assert not weight[~np.asarray(p.mask.numpy())].any(), p.path


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_every_pattern_trains_on_jax_with_exact_counts(name):
    pattern, want = PATTERNS[name]
    keras.utils.set_random_seed(0)
    schedule = prunemix.PolynomialDecay(0.0, SPARSITY, begin_step=0, end_step=4, frequency=1)
    policy = [prunemix.Rule("*", pattern=pattern)] if pattern is not None else None
    model = (Net(pruning_schedule=schedule, pruning_policy=policy) if name != "channels"
             else functional(schedule, policy))
    model.compile("adam", LOSS, jit_compile=name in ("magnitude", "channels"))
    for step in range(1, 7):  # masks once per update; zeros after every step
        logs = model.train_on_batch(X[:16], Y[:16], return_dict=True)
        assert int(model.pruner.pruning_step.numpy()) == step
        assert_zero_where_masked(model)
    counts = [int((~m).sum()) for m in masks_of(model).values()]
    if want is None:
        assert sum(counts) == 168
    else:
        assert counts == want
    size = sum(m.size for m in masks_of(model).values())
    assert logs["sparsity"] == pytest.approx(sum(counts) / size)
    model.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    assert [int((~m).sum()) for m in masks_of(model).values()] == counts \
        or want is None and sum(int((~m).sum()) for m in masks_of(model).values()) == 168
    assert_zero_where_masked(model)


class OwnStep(Net):
    """A stateless JAX train step written by hand, pruning with `apply_pruning(state)`."""

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        x, y = data

        def loss_fn(trainable):
            logits, updated = self.stateless_call(trainable, non_trainable, x)
            return keras.ops.mean(LOSS(y, logits)), updated

        (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, grads, trainable)
        state = self.apply_pruning(
            (trainable, non_trainable, optimizer_variables, metrics_variables))
        return {"loss": loss}, state


def test_own_stateless_train_step_prunes_with_apply_pruning_state():
    keras.utils.set_random_seed(0)
    model = OwnStep(pruning_schedule=prunemix.ConstantSparsity(SPARSITY, 0, frequency=2))
    model.compile("sgd", LOSS)
    model.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    assert int(model.pruner.pruning_step.numpy()) == 8
    assert [int((~m).sum()) for m in masks_of(model).values()] == [112, 56]
    assert_zero_where_masked(model)
    with pytest.raises(ValueError, match="one value per variable"):
        model.apply_pruning(([], [], [], []))


def test_a_file_saved_mid_pruning_on_tensorflow_goes_on_on_jax_and_back(tmp_path):
    # Written by TensorFlow: 4 of 16 pruning steps of an MLP (NMSparsity on
    # the hidden kernel, Magnitude on the output), saved mid-pruning.
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": ROOT}
    subprocess.run([sys.executable, "-c", MID_PRUNING, "save", str(tmp_path / "tf.keras")],
                   check=True, env=env, capture_output=True)
    model = prunemix.load_model(tmp_path / "tf.keras")
    assert int(model.pruner.pruning_step.numpy()) == 4
    # Step 4 of PolynomialDecay(0, 0.75, 0..16): 0.43359375 * 48 = 20.8 -> 21.
    assert [int((~m).sum()) for m in masks_of(model).values()] == [96, 21]
    assert model.pruner.pruning_schedule.final_sparsity == 0.75
    assert model.pruner.pruned_weights[0].pattern == prunemix.NMSparsity(2, 4, axis=0)
    model.fit(MID_X, MID_Y, epochs=3, batch_size=16, verbose=0)
    assert int(model.pruner.pruning_step.numpy()) == 16
    assert [int((~m).sum()) for m in masks_of(model).values()] == [96, 36]
    assert_zero_where_masked(model)
    # Saved on JAX at step 16; TensorFlow loads it and goes on.
    model.save(tmp_path / "jax.keras")
    out = subprocess.run(
        [sys.executable, "-c", MID_PRUNING, "load", str(tmp_path / "jax.keras")],
        check=True, env=env, capture_output=True, text=True).stdout.split()
    assert out == ["16", "96,36", "20", "96,36"]
    # Stripped on JAX: a plain .keras that TensorFlow loads with Keras alone.
    prunemix.strip_pruning(model).save(tmp_path / "plain.keras")
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_ON_TENSORFLOW, str(tmp_path / "plain.keras")],
        check=True, env=env, capture_output=True, text=True).stdout.split()
    assert out[:2] == ["96", "36"]
    np.testing.assert_allclose(float(out[2]), float(np.abs(model.predict(MID_X, verbose=0)).sum()),
                               rtol=1e-5)


PLAIN_ON_TENSORFLOW = """
import sys, numpy as np, keras
model = keras.saving.load_model(sys.argv[1])
assert type(model).__module__.startswith("keras."), type(model)
x = np.random.default_rng(0).normal(size=(64, 12)).astype("float32")
print(*[int((model.get_layer(n).kernel.numpy() == 0).sum()) for n in ("a", "b")],
      float(np.abs(model.predict(x, verbose=0)).sum()))
"""


MID_X = np.random.default_rng(0).normal(size=(64, 12)).astype("float32")
MID_Y = np.arange(64) % 3
MID_PRUNING = """
import sys, numpy as np, keras, prunemix
mode, path = sys.argv[1], sys.argv[2]
x = np.random.default_rng(0).normal(size=(64, 12)).astype("float32")
y = np.arange(64) % 3
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
def counts(m):
    return ",".join(str(int((~m.numpy()).sum())) for m in [p.mask for p in m.pruner.pruned_weights])
if mode == "save":
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="relu", name="a")(inputs)
    model = prunemix.prune_model(
        keras.Model(inputs, keras.layers.Dense(3, name="b")(hidden)),
        prunemix.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=16, frequency=2),
        pruning_policy=[prunemix.Rule("a/*", pattern=prunemix.NMSparsity(2, 4)),
                        prunemix.Rule("*")])
    model.compile("adam", loss)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    model.save(path)
else:
    model = prunemix.load_model(path)
    print(int(model.pruner.pruning_step.numpy()), counts(model))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    print(int(model.pruner.pruning_step.numpy()), counts(model))
"""


DATA_PARALLEL = """
import jax, keras, numpy as np, prunemix
assert len(jax.devices()) == 2
x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
y = np.arange(64) % 8
def run():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    model = prunemix.PrunedModel(
        inputs, keras.layers.Dense(8, name="out")(hidden),
        pruning_schedule=prunemix.PolynomialDecay(0.0, 0.4375, begin_step=0, end_step=6,
                                                  frequency=1))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    return model
single = run()
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
multi = run()
assert int(multi.pruner.pruning_step.numpy()) == int(single.pruner.pruning_step.numpy()) == 8
for a, b in zip(single.pruner.pruned_weights, multi.pruner.pruned_weights, strict=True):
    np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
    assert int((~np.asarray(b.mask.numpy())).sum()) == round(0.4375 * b.mask.numpy().size)
    assert not np.asarray(b.weight.numpy())[~np.asarray(b.mask.numpy())].any()
for a, b in zip(single.trainable_weights, multi.trainable_weights, strict=True):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
print("same")
"""


def test_data_parallel_on_two_devices_equals_one_device():
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": ROOT,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, "-c", DATA_PARALLEL], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.split()[-1] == "same", out.stderr[-2000:]


def test_a_keras_hub_task_prunes_fits_and_generates_on_jax(tmp_path):
    hub_models = pytest.importorskip("tests.hub_models")
    keras.utils.set_random_seed(0)
    pruned = prunemix.prune_model(hub_models.gpt2(), prunemix.ConstantSparsity(0.5, 0, frequency=1))
    assert type(pruned).__name__ == "PrunedGPT2CausalLM"
    x = hub_models.TOKENS
    pruned.compile("adam", LOSS)
    pruned.fit(x, np.roll(x["token_ids"], -1, axis=1), epochs=1, batch_size=2, verbose=0)
    report = prunemix.sparsity_report(pruned)
    assert [r.zeros for r in report] == [round(0.5 * r.size) for r in report] and report
    assert_zero_where_masked(pruned)
    out = pruned.generate(hub_models.PROMPT, max_length=12, stop_token_ids=None)
    assert out["token_ids"].shape == (1, 12)
    pruned.save(tmp_path / "lm.keras")
    loaded = prunemix.load_model(tmp_path / "lm.keras")
    assert int(loaded.pruner.pruning_step.numpy()) == 2
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               atol=1e-6)


def test_to_tflite_converts_a_model_trained_on_jax():
    keras.utils.set_random_seed(0)
    model = functional(prunemix.ConstantSparsity(0.75, 0, frequency=1), None)
    model.compile("adam", LOSS)
    model.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    interpreter = prunemix.make_interpreter(prunemix.to_tflite(model))
    runner = interpreter.get_signature_runner()
    (name,) = interpreter.get_signature_list()["serving_default"]["inputs"]
    (out,) = runner(**{name: X[:4]}).values()
    np.testing.assert_allclose(out, model.predict(X[:4], verbose=0), atol=1e-5)


def test_mask_updates_as_their_own_program_match_the_in_step_ones():
    # steps_per_execution=1: the update runs as its own jitted program at due
    # steps; 2: inside the step, under a condition. Same masks, same weights.
    runs = []
    for steps_per_execution in (1, 2):
        keras.utils.set_random_seed(0)
        model = functional(prunemix.PolynomialDecay(0.0, SPARSITY, begin_step=0, end_step=6,
                                                    frequency=2), None)
        model.compile("sgd", LOSS, steps_per_execution=steps_per_execution)
        model.fit(X, Y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        assert model._prunemix_split_update == (steps_per_execution == 1)
        assert int(model.pruner.pruning_step.numpy()) == 8
        assert_zero_where_masked(model)
        runs.append(model)
    split, in_step = runs
    for a, b in zip(split.pruner.pruned_weights, in_step.pruner.pruned_weights, strict=True):
        np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
        assert int((~np.asarray(a.mask.numpy())).sum()) == round(SPARSITY * a.mask.numpy().size)
    for a, b in zip(split.trainable_weights, in_step.trainable_weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_split_updates_see_every_due_step_when_steps_do_not_advance():
    from prunemix import _trainers

    keras.utils.set_random_seed(0)
    model = functional(prunemix.ConstantSparsity(SPARSITY, 0, frequency=3), None)
    index = next(i for i, v in enumerate(model.non_trainable_variables)
                 if v is model.pruner.pruning_step)
    advances = iter([1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1])

    def fake_step(state, data):  # advances the pruning step as a real step would
        non_trainable = list(state[1])
        non_trainable[index] = non_trainable[index] + next(advances)
        return {}, (state[0], non_trainable, *state[2:])

    split = _trainers.SplitJaxTrainFunction(model, fake_step)
    updated = []
    real_update = split._update

    def record(state):
        updated.append(int(state[1][index]))
        return real_update(state)

    split._update = record
    state = ([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables], [], [])
    steps = []
    for _ in range(14):
        _, state = split(state, None)
        steps.append(int(state[1][index]))
    assert steps == [1, 2, 2, 2, 3, 4, 5, 5, 6, 7, 8, 9, 9, 10]
    # Due: the first step, then every 3rd. Once per due step, at the call that
    # reaches it, as `should_prune` says.
    due = [step for step in range(1, 11) if bool(model.pruner.pruning_schedule.should_prune(step))]
    assert updated == due == [1, 3, 6, 9]


def test_pruning_summaries_and_oneshot_run_on_jax(tmp_path):
    import tensorflow as tf  # reads the event files

    keras.utils.set_random_seed(0)
    model = functional(prunemix.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=8,
                                                frequency=1), None)
    model.compile("adam", LOSS)
    model.fit(X, Y, epochs=2, batch_size=16, verbose=0,
              callbacks=[prunemix.PruningSummaries(tmp_path, update_freq=2)])
    written = []
    for path in sorted((tmp_path / "train").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            written += [(event.step, float(tf.make_ndarray(v.tensor)))
                        for v in event.summary.value if v.tag == "pruning/sparsity"]
    # The pruned fraction at steps 2, 4, 6, 8 of PolynomialDecay(0 -> 0.5 over 8).
    sizes = [16 * 16, 16 * 8]
    want = [(step, sum(int(prunemix.masks.pruned_count(0.5 - 0.5 * (1 - step / 8) ** 3, n))
                       for n in sizes) / sum(sizes)) for step in (2, 4, 6, 8)]
    assert [s for s, _ in written] == [s for s, _ in want]
    np.testing.assert_allclose([v for _, v in written], [v for _, v in want], atol=1e-6)

    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    dense = keras.Model(inputs, keras.layers.Dense(8, name="out")(hidden))
    report = prunemix.prune_oneshot(dense, X, sparsity=0.5)
    assert [r.zeros for r in report] == [128, 64]
    assert int((keras.ops.convert_to_numpy(dense.get_layer("hidden").kernel) == 0).sum()) == 128
