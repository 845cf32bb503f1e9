"""Issue 6: save / resume mid-pruning, prune_model, strip and ship, CLI."""

import os
import pickle
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import prunemix
from prunemix.__main__ import main as cli
from tests.test_model import MLP, X, Y, compiled, functional_model

ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture
def deterministic():
    """Op determinism for the resume tests only (it turns XLA off in Keras)."""
    from tensorflow.python.framework import config

    tf.config.experimental.enable_op_determinism()
    yield
    config.disable_op_determinism()


def new_model(kind):
    keras.utils.set_random_seed(0)
    model = MLP(name="mlp") if kind == "subclassed" else functional_model(name="func")
    compiled(model, {})
    model(X[:1])
    model.optimizer.build(model.trainable_variables)
    return model


def train(model, epochs, **kwargs):
    model.fit(X, Y, batch_size=16, epochs=epochs, shuffle=False, verbose=0, **kwargs)
    return model


def state(model):
    pruner = model.pruner
    return (
        [v.numpy() for v in model.weights],
        [v.numpy() for v in model.optimizer.variables],
        int(pruner.pruning_step.numpy()),
    )


def assert_same_state(a, b):
    (wa, oa, sa), (wb, ob, sb) = state(a), state(b)
    assert sa == sb
    assert len(wa) == len(wb) and len(oa) == len(ob)
    for x, y in zip(wa + oa, wb + ob, strict=True):
        np.testing.assert_array_equal(x, y)  # bit-identical


@pytest.fixture(scope="module")
def uninterrupted():
    # 4 epochs of 4 steps; the schedule (0 -> 80 %, steps 0..12) is mid-way at step 8.
    from tensorflow.python.framework import config

    tf.config.experimental.enable_op_determinism()
    try:
        return {kind: state(train(new_model(kind), 4)) for kind in ("subclassed", "functional")}
    finally:
        config.disable_op_determinism()


def check_against(reference, model):
    weights, optimizer, step = reference
    assert step == int(model.pruner.pruning_step.numpy()) == 16
    for x, y in zip(weights + optimizer, state(model)[0] + state(model)[1], strict=True):
        np.testing.assert_array_equal(x, y)


# -- save / load / resume, bit-identical -----------------------------------------


@pytest.mark.parametrize("kind", ["subclassed", "functional"])
def test_resume_from_keras_file(kind, uninterrupted, tmp_path, deterministic):
    model = train(new_model(kind), 2)
    assert int(model.pruner.pruning_step.numpy()) == 8
    model.save(tmp_path / "mid.keras")
    loaded = keras.saving.load_model(tmp_path / "mid.keras")
    assert type(loaded) is type(model)
    check_against(uninterrupted[kind], train(loaded, 2))


@pytest.mark.parametrize("kind", ["subclassed", "functional"])
def test_resume_with_backup_and_restore_after_a_crash(kind, uninterrupted, tmp_path, deterministic):
    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed")

    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="killed"):
        train(new_model(kind), 4, callbacks=[keras.callbacks.BackupAndRestore(backup), Crash()])
    restarted = new_model(kind)
    train(restarted, 4, callbacks=[keras.callbacks.BackupAndRestore(backup)])
    check_against(uninterrupted[kind], restarted)


def test_resume_from_model_checkpoint(uninterrupted, tmp_path, deterministic):
    path = str(tmp_path / "epoch{epoch}.keras")
    train(new_model("functional"), 2, callbacks=[keras.callbacks.ModelCheckpoint(path)])
    loaded = keras.saving.load_model(tmp_path / "epoch2.keras")
    check_against(uninterrupted["functional"], train(loaded, 4, initial_epoch=2))


@pytest.mark.parametrize("kind", ["subclassed", "functional"])
def test_resume_from_save_weights(kind, uninterrupted, tmp_path, deterministic):
    train(new_model(kind), 2).save_weights(tmp_path / "mid.weights.h5")
    fresh = new_model(kind)
    fresh.load_weights(tmp_path / "mid.weights.h5")
    check_against(uninterrupted[kind], train(fresh, 2))


def test_resume_from_tf_train_checkpoint(uninterrupted, tmp_path, deterministic):
    model = train(new_model("subclassed"), 2)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
        str(tmp_path / "ckpt")
    )
    fresh = new_model("subclassed")
    tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).read(path).assert_consumed()
    check_against(uninterrupted["subclassed"], train(fresh, 2))


@pytest.mark.parametrize("kind", ["subclassed", "functional"])
def test_pickle_round_trips_mid_pruning(kind, uninterrupted, deterministic):
    copy = pickle.loads(pickle.dumps(train(new_model(kind), 2)))
    assert int(copy.pruner.pruning_step.numpy()) == 8
    check_against(uninterrupted[kind], train(copy, 2))


# -- bad files -------------------------------------------------------------------


def test_weights_file_with_other_masks_is_an_error(tmp_path):
    model = train(new_model("functional"), 1)
    model.save_weights(tmp_path / "w.weights.h5")
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    other = prunemix.PrunedModel(
        inputs, keras.layers.Dense(3, name="out")(hidden),
        pruning_schedule=prunemix.ConstantSparsity(0.5),
        pruning_policy=[prunemix.Rule("out", exclude=True)],
    )
    with pytest.raises(ValueError, match="pruner"):
        other.load_weights(tmp_path / "w.weights.h5")


def test_truncated_or_newer_keras_files_are_errors(tmp_path):
    model = train(new_model("functional"), 1)
    model.save(tmp_path / "m.keras")
    data = (tmp_path / "m.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.keras is not a complete Keras model file: it is "
                                         "not a zip archive"):
        prunemix.load_model(tmp_path / "cut.keras")
    with pytest.raises(FileNotFoundError, match="No such file"):
        prunemix.load_model(tmp_path / "nothing.keras")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match="no config.json"):
        prunemix.load_model(tmp_path / "empty.keras")
    assert prunemix.load_model(tmp_path / "m.keras").pruner is not None
    # A file written by a future layout of the pruning state.
    with zipfile.ZipFile(tmp_path / "m.keras") as src, zipfile.ZipFile(
        tmp_path / "new.keras", "w"
    ) as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename == "config.json":
                content = content.replace(b'"prunemix_format": 2', b'"prunemix_format": 99')
            dst.writestr(item, content)
    with pytest.raises(ValueError, match="format 99; this prunemix reads format 2"):
        keras.saving.load_model(tmp_path / "new.keras")
    with pytest.raises(ValueError, match="format 99"):
        prunemix.load_model(tmp_path / "new.keras")


# -- prune_model -----------------------------------------------------------------


def pretrained(kind):
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(32, activation="relu", name="hidden"),
              keras.layers.Dense(3, name="out")]
    if kind == "sequential":
        model = keras.Sequential(layers)
        model(X[:2])  # built by a call: a fixed batch size in its inputs
    elif kind == "sequential_input":
        model = keras.Sequential([keras.Input((12,)), *layers])
    else:
        inputs = keras.Input((12,))
        model = keras.Model(inputs, layers[1](layers[0](inputs)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    return model


@pytest.mark.parametrize("kind", ["sequential", "sequential_input", "functional"])
def test_prune_model_keeps_weights_and_leaves_the_original_alone(kind, mode):
    dense = pretrained(kind)
    before = [w.copy() for w in dense.get_weights()]
    pruned = prunemix.prune_model(dense, prunemix.ConstantSparsity(0.75, frequency=2))
    assert isinstance(pruned, prunemix.PrunedModel)
    np.testing.assert_allclose(pruned.predict(X, verbose=0), dense.predict(X, verbose=0))
    compiled(pruned, mode).fit(X, Y, batch_size=16, epochs=1, verbose=0)
    assert [r.zeros for r in prunemix.sparsity_report(pruned)] == [288, 72]
    for a, b in zip(before, dense.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_prune_model_layers_selection_saves(tmp_path):
    pruned = prunemix.prune_model(
        pretrained("functional"), prunemix.ConstantSparsity(0.5), layers=["hid*"]
    )
    compiled(pruned, {}).fit(X, Y, batch_size=16, epochs=1, verbose=0)
    assert {r.layer: r.zeros for r in prunemix.sparsity_report(pruned)} == {
        "hidden": 192, "out": 0}
    pruned.save(tmp_path / "p.keras")
    loaded = keras.saving.load_model(tmp_path / "p.keras")
    assert [p.path for p in loaded.pruner.pruned_weights] == ["hidden/kernel"]


def test_prune_model_errors():
    with pytest.raises(ValueError, match="not built"):
        prunemix.prune_model(Tower(), prunemix.ConstantSparsity(0.5))
    tower = Tower()
    tower(np.zeros((1, 3)))
    # Its config cannot re-create it (no `get_config`, no constructor arguments).
    with pytest.raises(ValueError, match=r"(?s)Tower.from_config\(model.get_config\(\)\) fails .*"
                       r"class PrunedTower\(prunemix.PrunedModel, Tower\)"):
        prunemix.prune_model(tower, prunemix.ConstantSparsity(0.5))
    with pytest.raises(ValueError, match="takes a built keras.Model. Received: Dense"):
        prunemix.prune_model(keras.layers.Dense(2), prunemix.ConstantSparsity(0.5))
    with pytest.raises(ValueError, match="not built"):
        prunemix.prune_model(keras.Sequential([keras.layers.Dense(2)]),
                             prunemix.ConstantSparsity(0.5))
    with pytest.raises(ValueError, match="selects no prunable weight .* hidden/kernel, out/kernel"):
        prunemix.prune_model(pretrained("functional"), prunemix.ConstantSparsity(0.5),
                             layers=[keras.layers.Conv2D])
    with pytest.raises(ValueError, match="name='digits 90%' is not a valid model name"):
        prunemix.prune_model(pretrained("functional"), prunemix.ConstantSparsity(0.5),
                             name="digits 90%")
    with pytest.raises(ValueError, match="already a PrunedModel"):
        prunemix.prune_model(functional_model(), prunemix.ConstantSparsity(0.5))


class Tower(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


# -- strip and ship --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["subclassed", "functional"])
def test_stripped_export_serves_without_prunemix(kind, tmp_path):
    model = train(new_model(kind), 3)
    stripped = prunemix.strip_pruning(model)
    assert not any("mask" in v.path or "pruning_step" in v.path for v in stripped.weights)
    stripped.export(str(tmp_path / "saved"), verbose=False)
    np.save(tmp_path / "x.npy", X)
    code = (
        "import sys; sys.modules['prunemix'] = None\n"
        "import numpy as np, tensorflow as tf\n"
        f"served = tf.saved_model.load({str(tmp_path / 'saved')!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, served.serve(x).numpy())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), model.predict(X, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_tflite_sparse_conversion_matches_keras():
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(256, activation="relu")(inputs)
    model = prunemix.PrunedModel(
        inputs, keras.layers.Dense(10)(hidden),
        pruning_schedule=prunemix.ConstantSparsity(0.9),
    )
    model.pruner.update_masks(1)
    model.pruner.apply_masks()
    dense_bytes = prunemix.to_tflite(model, sparse=False)
    sparse_bytes = prunemix.to_tflite(model)
    assert len(sparse_bytes) * 4 < len(dense_bytes)
    x = np.random.default_rng(0).random((1, 64)).astype("float32")
    interpreter = tf.lite.Interpreter(model_content=sparse_bytes)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    result = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(result, model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


# -- command line ----------------------------------------------------------------


def test_cli_report_and_strip(tmp_path, capsys):
    model = train(new_model("functional"), 4)
    model.save(tmp_path / "m.keras")
    assert cli(["report", str(tmp_path / "m.keras")]) == 0
    out = capsys.readouterr().out
    assert "pruning step 16" in out and "dense_1" in out and "kernel" in out
    assert f"{prunemix.sparsity_report(model).zeros}/{prunemix.sparsity_report(model).size}" in out
    assert "gzipped" in out
    assert cli(["strip", str(tmp_path / "m.keras"), str(tmp_path / "s.keras")]) == 0
    stripped = keras.saving.load_model(tmp_path / "s.keras")
    assert not isinstance(stripped, prunemix.PrunedModel)
    np.testing.assert_allclose(stripped.predict(X, verbose=0), model.predict(X, verbose=0))


def test_cli_errors(tmp_path, capsys):
    assert cli(["report", str(tmp_path / "missing.keras")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "notes.keras").write_text("not a model")
    assert cli(["report", str(tmp_path / "notes.keras")]) == 2
    assert "is not a complete Keras model file: it is not a zip" in capsys.readouterr().err
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.keras")
    assert cli(["strip", str(tmp_path / "plain.keras"), str(tmp_path / "o.keras")]) == 1
    assert "has no pruning state" in capsys.readouterr().err
    assert not (tmp_path / "o.keras").exists()


def test_cli_runs_as_a_module(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "prunemix", "report", str(tmp_path / "nope.keras")],
        capture_output=True, text=True, env=ENV,
    )
    assert out.returncode == 2 and "prunemix: error: no such file" in out.stderr


def test_subclassed_pretrained_path_loads_dense_weights(tmp_path, mode):
    class Dense(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = keras.layers.Dense(32, activation="relu")
            self.out = keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.hidden(x))

    class Pruned(prunemix.PrunedModel):  # same layers, inherits from PrunedModel
        def __init__(self, **kwargs):
            super().__init__(pruning_schedule=prunemix.ConstantSparsity(0.75, frequency=2),
                             **kwargs)
            self.hidden = keras.layers.Dense(32, activation="relu")
            self.out = keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.hidden(x))

    dense = Dense()
    dense.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dense.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    dense.save_weights(tmp_path / "dense.weights.h5")
    pruned = Pruned()
    pruned(X[:1])
    pruned.load_weights(tmp_path / "dense.weights.h5")
    np.testing.assert_array_equal(pruned.predict(X, verbose=0), dense.predict(X, verbose=0))
    assert int(pruned.pruner.pruning_step.numpy()) == 0
    compiled(pruned, mode).fit(X, Y, batch_size=16, epochs=1, verbose=0)
    assert [r.zeros for r in prunemix.sparsity_report(pruned)] == [288, 72]


class Graph(keras.Model):
    """A functional model class whose constructor takes no config."""

    def __init__(self):
        inputs = keras.Input((3,))
        super().__init__(inputs, keras.layers.Dense(2)(inputs))


def test_prune_model_of_a_graph_class_without_config_copies_the_graph_and_warns():
    model = Graph()
    with pytest.warns(UserWarning, match=r"(?s)Graph.from_config.*functional PrunedModel"):
        pruned = prunemix.prune_model(model, prunemix.ConstantSparsity(0.5, 0, 1))
    assert type(pruned).__name__ == "FunctionalPrunedModel"
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(pruned(x), model(x), atol=1e-6)
