"""Issue 11: pruning state with one owner, saved by key, resolved once, safe to load."""

import json
import os
import pathlib
import subprocess
import sys
import warnings
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import prunemix
from tests.test_model import MLP, X, Y, compiled

ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SCHEDULE = prunemix.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2)


def two_layers(policy, name="ab"):
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="relu", name="l1")(inputs)
    outputs = keras.layers.Dense(3, name="l2")(hidden)
    return prunemix.PrunedModel(
        inputs, outputs, pruning_schedule=SCHEDULE, pruning_policy=policy, name=name
    )


def trained(model, mode=None, epochs=2):
    compiled(model, mode or {})
    model.fit(X, Y, batch_size=16, epochs=epochs, verbose=0)
    return model


def spec_table(model) -> dict:
    """key -> (schedule config, pattern, bounds) for every pruned weight."""
    return {
        p.key: (p.schedule.get_config(), repr(p.pattern), p.bounds)
        for p in model.pruner.pruned_weights
    }


def masks_by_key(model) -> dict:
    return {p.key: p.mask.numpy() for p in model.pruner.pruned_weights}


# -- saved by key, never by position ------------------------------------------------


def test_weights_for_other_pruned_weights_is_an_error_naming_both(tmp_path):
    a = trained(two_layers([prunemix.Rule("l1", exclude=True)]))
    a.save_weights(tmp_path / "a.weights.h5")
    b = two_layers([prunemix.Rule("l2", exclude=True)], name="b")
    before = b.get_layer("l1").kernel.numpy().copy()
    with pytest.raises(ValueError, match=r"dense_1/kernel.*\n?.*dense/kernel"):
        b.load_weights(tmp_path / "a.weights.h5")
    # Nothing of a's mask landed on b's l1.
    assert np.count_nonzero(b.get_layer("l1").kernel.numpy()) == np.count_nonzero(before)


def test_masks_follow_their_weight_when_generated_names_differ(tmp_path):
    model = trained(MLP(name="mlp"))
    saved = masks_by_key(model)
    model.save(tmp_path / "m.keras")
    keras.layers.Dense(3)  # shifts every generated name in this session
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.out.name != model.out.name
    assert set(masks_by_key(loaded)) == set(saved) == {"hidden/kernel", "out/kernel"}
    for key, mask in masks_by_key(loaded).items():
        np.testing.assert_array_equal(mask, saved[key])
    for p in loaded.pruner.pruned_weights:
        assert np.all(p.weight.numpy()[~p.mask.numpy()] == 0.0)


def test_tf_checkpoint_keys_masks_by_weight_and_checks_them(tmp_path):
    model = trained(MLP(name="mlp"))
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    names = [name for name, _ in tf.train.list_variables(path)]
    assert any("/masks/hidden.Skernel/" in n for n in names)  # by key, "/" escaped
    fresh = MLP(name="fresh")
    fresh(X[:1])
    tf.train.Checkpoint(model=fresh).read(path).assert_existing_objects_matched()
    for key, mask in masks_by_key(fresh).items():
        np.testing.assert_array_equal(mask, masks_by_key(model)[key])
    assert int(fresh.pruner.pruning_step.numpy()) == 8
    partial = MLP(name="partial", pruning_policy=[prunemix.Rule(lambda layer, w: w.shape[-1] == 3,
                                                                exclude=True)])
    partial(X[:1])
    with pytest.raises(ValueError, match=r"out/kernel"):
        tf.train.Checkpoint(model=partial).read(path)


def test_dense_weights_file_loads_with_fresh_masks(tmp_path):
    dense = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, name="l1"),
                              keras.layers.Dense(3, name="l2")])
    dense.save_weights(tmp_path / "dense.weights.h5")
    model = two_layers(None)
    model.load_weights(tmp_path / "dense.weights.h5")
    np.testing.assert_array_equal(model.get_layer("l1").kernel.numpy(),
                                  dense.layers[0].kernel.numpy())
    assert all(p.mask.numpy().all() for p in model.pruner.pruned_weights)


# -- globs mean one thing ---------------------------------------------------------


class Encoder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = keras.layers.Dense(16, activation="relu")
        self.b = keras.layers.Dense(16, activation="relu")

    def call(self, x):
        return self.b(self.a(x))


@keras.saving.register_keras_serializable(package="prunemix_tests")
class EncoderNet(prunemix.PrunedModel):
    def __init__(self, **kwargs):
        super().__init__(
            pruning_schedule=SCHEDULE,
            pruning_policy=[prunemix.Rule("encoder/*", final_sparsity=0.5)],
            **kwargs,
        )
        self.encoder = Encoder(name="encoder")
        self.head = keras.layers.Dense(3)

    def call(self, x):
        return self.head(self.encoder(x))


def functional_encoder_model():
    inner_in = keras.Input((12,))
    h = keras.layers.Dense(16, activation="relu")(inner_in)
    encoder = keras.Model(inner_in, keras.layers.Dense(16, activation="relu")(h), name="encoder")
    inputs = keras.Input((12,))
    outputs = keras.layers.Dense(3, name="head")(encoder(inputs))
    return keras.Model(inputs, outputs, name="net")


def targets(model) -> dict:
    return {p.path: round(float(p.schedule(8)), 6) for p in model.pruner.pruned_weights}


def check_encoder_targets(model):
    found = targets(model)
    encoder = {path: t for path, t in found.items() if path.startswith("encoder/")}
    assert len(encoder) == 2 and set(encoder.values()) == {0.5}, found
    assert {t for path, t in found.items() if not path.startswith("encoder/")} == {0.8}


@pytest.mark.parametrize("kind", ["subclassed", "functional", "prune_model"])
def test_glob_selects_the_encoder_everywhere_and_after_reload(kind, tmp_path):
    if kind == "subclassed":
        model = EncoderNet(name="net")
        model(X[:1])
    else:
        dense = functional_encoder_model()
        policy = [prunemix.Rule("encoder/*", final_sparsity=0.5)]
        model = prunemix.prune_model(dense, SCHEDULE, policy) if kind == "prune_model" else \
            prunemix.PrunedModel(dense.inputs, dense.outputs, pruning_schedule=SCHEDULE,
                                 pruning_policy=policy)
    check_encoder_targets(model)
    trained(model)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    check_encoder_targets(loaded)
    assert spec_table(loaded) == spec_table(model)
    for key, mask in masks_by_key(loaded).items():
        np.testing.assert_array_equal(mask, masks_by_key(model)[key])


# -- same pruning after reload --------------------------------------------------------


@keras.saving.register_keras_serializable(package="prunemix_tests")
def is_head(layer, weight):
    return layer.name.startswith("head")


def nested_twins():
    """Two nested encoders that reuse layer names, a glob, a class and a callable rule."""
    def encoder(name):
        inner = keras.Input((12,))
        x = keras.layers.Dense(8, activation="relu", name="proj")(inner)
        return keras.Model(inner, keras.layers.Dense(8, name="out")(x), name=name)

    inputs = keras.Input((12,))
    merged = keras.layers.Concatenate()([encoder("enc1")(inputs), encoder("enc2")(inputs)])
    outputs = keras.layers.Dense(3, name="head")(merged)
    return keras.Model(inputs, outputs, name="twins")


def twin_policy():
    return [
        prunemix.Rule("enc1/proj/*", pattern=prunemix.BlockSparsity((1, 4))),
        prunemix.Rule(is_head, final_sparsity=0.5),
        prunemix.Rule(keras.layers.Dense, schedule=prunemix.ConstantSparsity(0.25, frequency=2)),
    ]


def test_same_pruning_after_reload_with_nested_reused_names(tmp_path, mode):
    model = prunemix.prune_model(nested_twins(), SCHEDULE, twin_policy())
    table = spec_table(model)
    assert {p.path for p in model.pruner.pruned_weights} == {
        "enc1/proj/kernel", "enc1/out/kernel", "enc2/proj/kernel", "enc2/out/kernel",
        "head/kernel"}
    trained(model, mode, epochs=1)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert spec_table(loaded) == table
    trained(model, mode, epochs=1)
    trained(loaded, mode, epochs=1)
    assert int(loaded.pruner.pruning_step.numpy()) == 8
    for key, mask in masks_by_key(loaded).items():
        assert (~mask).sum() == (~masks_by_key(model)[key]).sum(), key


def test_prune_model_layers_selects_inside_nested_models_with_reused_names():
    pruned = prunemix.prune_model(nested_twins(), SCHEDULE, layers=["enc2/*"])
    assert sorted(p.path for p in pruned.pruner.pruned_weights) == [
        "enc2/out/kernel", "enc2/proj/kernel"]


def test_old_format_1_files_load(tmp_path):
    expected = np.load(FIXTURES / "format1_expected.npz")
    model = keras.saving.load_model(FIXTURES / "format1_functional.keras")
    assert int(model.pruner.pruning_step.numpy()) == int(expected["func_step"]) == 8
    assert [p.path for p in model.pruner.pruned_weights] == ["middle/kernel", "last/kernel"]
    for i, p in enumerate(model.pruner.pruned_weights):
        np.testing.assert_array_equal(p.mask.numpy(), expected[f"func_mask{i}"])
        assert int(model.pruner.pruned_counts.numpy()[i]) == int((~p.mask.numpy()).sum())
    mlp = MLP(name="mlp")
    mlp(X[:1])
    mlp.load_weights(FIXTURES / "format1_mlp.weights.h5")
    for i, p in enumerate(mlp.pruner.pruned_weights):
        np.testing.assert_array_equal(p.mask.numpy(), expected[f"mlp_mask{i}"])
    # Saving again writes format 2, keyed by weight.
    model.save(tmp_path / "again.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "again.keras").read("config.json"))
    assert config["config"]["prunemix_format"] == 2
    assert prunemix.saving.read_pruning_state(tmp_path / "again.keras")["format"] == 2


def test_format_1_weights_for_another_model_say_what_to_do():
    other = MLP(pruning_policy=[prunemix.Rule(lambda layer, w: w.shape[-1] == 3, exclude=True)])
    other(X[:1])
    with pytest.raises(ValueError, match="format 1"):
        other.load_weights(FIXTURES / "format1_mlp.weights.h5")


# -- schedule and policy survive a subclassed round trip --------------------------------


def test_constructor_schedule_and_policy_survive_keras_round_trip(tmp_path):
    schedule = prunemix.ConstantSparsity(0.5, begin_step=1, frequency=2)
    model = trained(MLP(pruning_schedule=schedule, name="mlp",
                        pruning_policy=[prunemix.Rule("*dense_1*", exclude=True)]))
    model.save(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.pruning_schedule == schedule
    assert [p.key for p in loaded.pruner.pruned_weights] == ["hidden/kernel"]
    assert spec_table(loaded) == spec_table(model)


@keras.saving.register_keras_serializable(package="prunemix_tests")
class OwnSchedule(prunemix.PrunedModel):
    TARGET = 0.5

    def __init__(self, **kwargs):
        super().__init__(pruning_schedule=prunemix.ConstantSparsity(self.TARGET, frequency=2),
                         **kwargs)
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def test_class_that_now_builds_another_schedule_warns_and_keeps_the_saved_one(tmp_path):
    model = trained(OwnSchedule(name="own"))
    model.save(tmp_path / "m.keras")
    OwnSchedule.TARGET = 0.9
    try:
        with pytest.warns(UserWarning, match=r"Model 'own'.*0\.9.*saved.*0\.5"):
            loaded = keras.saving.load_model(tmp_path / "m.keras")
    finally:
        OwnSchedule.TARGET = 0.5
    assert loaded.pruning_schedule.target_sparsity == 0.5


# -- safe loading -------------------------------------------------------------------


@pytest.mark.parametrize("safe_mode", [True, False])
def test_loading_never_imports_a_module_the_file_names(tmp_path, safe_mode, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_rules.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\n"
        "import keras\nclass Evil(keras.layers.Dense):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = two_layers([prunemix.Rule(keras.layers.Dense, final_sparsity=0.5)])
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as src:
        files = {name: src.read(name) for name in src.namelist()}
    text = files["config.json"].decode().replace(
        '{"layer_class": "Dense"}',
        '{"layer_class": "Evil", "module": "evil_rules", "qualname": "Evil"}')
    assert "evil_rules" in text
    with zipfile.ZipFile(tmp_path / "evil.keras", "w") as out:
        for name, data in files.items():
            out.writestr(name, text if name == "config.json" else data)
    with pytest.raises(Exception, match="Evil"):
        keras.saving.load_model(tmp_path / "evil.keras", safe_mode=safe_mode)
    assert not marker.exists()
    assert "evil_rules" not in sys.modules


def test_lambda_rules_are_refused_in_safe_mode(tmp_path):
    model = two_layers([prunemix.Rule(lambda layer, weight: layer.name == "l1", exclude=True)])
    model.save(tmp_path / "m.keras")
    with pytest.raises((TypeError, ValueError), match="lambda"):
        keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=False)
    assert [p.key for p in loaded.pruner.pruned_weights] == ["dense_1/kernel"]


# -- bad input, clear errors, early --------------------------------------------------


def test_end_step_that_leaves_no_step_to_prune_at():
    with pytest.raises(ValueError, match="no step to prune at"):
        prunemix.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=0)
    with pytest.raises(ValueError, match="no step to prune at"):
        prunemix.ConstantSparsity(0.5, begin_step=0, end_step=0)


@pytest.mark.parametrize("value, problem", [
    (1.0, "outside"), (1.5, "outside"), (float("nan"), "NaN"), (-0.1, "outside"),
    (1, "not a float"), ("x", "not a float"), (None, "not a number"),
])
def test_schedule_values_that_are_not_a_sparsity_fail_at_build(value, problem):
    def bad_schedule(step):
        return value

    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match=rf"bad_schedule.*step 0.*{problem}"):
        prunemix.PrunedModel(inputs, keras.layers.Dense(2)(inputs), pruning_schedule=bad_schedule)


def test_schedule_returning_a_vector_fails_at_build():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="not a scalar"):
        prunemix.PrunedModel(inputs, keras.layers.Dense(2)(inputs),
                             pruning_schedule=lambda step: tf.constant([0.5, 0.5]))


def test_schedule_invalid_later_keeps_masks_and_fit_says_so(mode):
    def late(step):
        return tf.where(step == 5, 1.5, 0.5)  # at a step the build-time check skips

    model = compiled(prunemix.PrunedModel(*_io(), pruning_schedule=late), mode)
    with pytest.raises(ValueError, match=r"returned 1\.5 at step 5"):
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    counts = model.pruner.pruned_counts.numpy()
    assert np.all(counts >= 0)
    assert [int((~p.mask.numpy()).sum()) for p in model.pruner.pruned_weights] == [
        round(0.5 * 12 * 16), round(0.5 * 16 * 3)]


def _io():
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return inputs, keras.layers.Dense(3)(hidden)


def test_pruned_count_is_never_negative_and_percentages_are_errors():
    with pytest.raises(ValueError, match="not a percentage"):
        prunemix.masks.magnitude_mask(np.ones(4, "float32"), 50)
    with pytest.raises(ValueError, match="not a percentage"):
        prunemix.masks.pruned_count(1.5, 10)

    @tf.function
    def traced(s):
        return prunemix.masks.pruned_count(s, 10)

    assert int(traced(tf.constant(float("nan"), tf.float64))) == 0
    assert int(traced(tf.constant(7.0, tf.float64))) == 10


@pytest.mark.parametrize("rule", [
    dict(final_sparsity=0.9), dict(max_sparsity=0.3), dict(min_sparsity=0.6),
])
def test_nm_with_a_target_it_cannot_honour_is_rejected_at_build(rule):
    with pytest.raises(ValueError, match=r"NMSparsity\(2, 4\).*cannot honour|outside"):
        two_layers([prunemix.Rule("l1", pattern=prunemix.NMSparsity(2, 4), **rule)])


@prunemix.prunable("kernel", "empty")
class WithEmpty(keras.layers.Layer):
    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 4), name="kernel")
        self.empty = self.add_weight(shape=(0, 4), name="empty")

    def call(self, x):
        return x @ self.kernel


def test_zero_size_weights_are_skipped_and_reported(mode):
    inputs = keras.Input((12,))
    outputs = WithEmpty(name="w")(inputs)
    model = compiled(prunemix.PrunedModel(inputs, outputs, pruning_schedule=SCHEDULE), mode)
    assert [p.path for p in model.pruner.pruned_weights] == ["w/kernel"]
    assert model.pruner.skipped == ["w/empty"]
    model.fit(X, Y % 3, batch_size=16, epochs=2, verbose=0)
    report = prunemix.sparsity_report(model)
    assert [(r.weight, r.size, r.note) for r in report] == [
        ("kernel", 48, ""), ("empty", 0, "empty: not pruned")]
    assert "empty: not pruned" in str(report)


def test_clone_model_of_a_pruned_model_says_how_to_copy_one():
    model = trained(two_layers([prunemix.Rule("l1", exclude=True)]))
    with pytest.raises(TypeError, match=r"type\(model\)\.from_config\(model\.get_config\(\)\)"):
        keras.models.clone_model(model)
    copy = type(model).from_config(model.get_config())
    assert spec_table(copy) == spec_table(model)
    assert [p.key for p in copy.pruner.pruned_weights] == ["dense_1/kernel"]
    assert int(copy.pruner.pruning_step.numpy()) == 0


class Forgetful(prunemix.PrunedModel):
    def __init__(self, **kwargs):
        super().__init__(pruning_schedule=SCHEDULE, **kwargs)
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        return {"loss": loss}


def test_custom_train_step_that_never_prunes_warns_once():
    model = compiled(Forgetful(name="forgetful"), {})
    with pytest.warns(UserWarning, match="Model 'forgetful'.*apply_pruning"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0)


# -- schedules grouped by meaning ----------------------------------------------------


def constant(target):
    def schedule(step):
        return tf.constant(target, tf.float64)

    return schedule


def test_two_callables_from_one_factory_are_two_schedules(mode):
    model = two_layers([
        prunemix.Rule("l1", schedule=constant(0.25)),
        prunemix.Rule("l2", schedule=constant(0.75)),
    ])
    assert len(model.pruner._groups) == 2
    trained(model, mode, epochs=1)
    assert [int((~p.mask.numpy()).sum()) for p in model.pruner.pruned_weights] == [
        round(0.25 * 12 * 16), round(0.75 * 16 * 3)]


def test_equal_builtin_schedules_share_one_update():
    model = two_layers([prunemix.Rule("l1", schedule=prunemix.ConstantSparsity(0.5)),
                        prunemix.Rule("l2", schedule=prunemix.ConstantSparsity(0.5))])
    assert len(model.pruner._groups) == 1


# -- the CLI reads any saved file ------------------------------------------------------


def test_cli_reports_a_subclassed_model_whose_class_it_cannot_import(tmp_path):
    (tmp_path / "private_net.py").write_text(
        "import keras, prunemix\n"
        "@keras.saving.register_keras_serializable(package='private')\n"
        "class Net(prunemix.PrunedModel):\n"
        "    def __init__(self, **kwargs):\n"
        "        super().__init__(pruning_schedule=prunemix.ConstantSparsity(0.75, "
        "frequency=1), **kwargs)\n"
        "        self.body = keras.layers.Dense(8)\n"
        "    def call(self, x):\n"
        "        return self.body(x)\n"
    )
    script = (
        "import sys, numpy as np, keras; sys.path.insert(0, sys.argv[1]);"
        "import private_net; m = private_net.Net(name='net');"
        "m.compile('adam', 'mse'); m.fit(np.ones((8, 4)), np.ones((8, 8)), verbose=0);"
        "m.save(sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path), str(tmp_path / "net.keras")],
                   check=True, env=ENV, cwd=tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "prunemix", "report", str(tmp_path / "net.keras")],
        capture_output=True, text=True, env={**ENV, "PYTHONPATH": os.getcwd()}, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "model 'net' (Net)" in result.stdout
    # The table shows paths by layer names (`body` is a Dense named "dense").
    assert "\ndense  kernel  4x8    24/32  75.00%\n" in result.stdout
    assert "schedule target 75.00%" in result.stdout
