import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import prunemix
from tests.layers import GatedDense, Scale, TfmotStyle

RNG = np.random.default_rng(0)
X = RNG.random((64, 12)).astype("float32")
Y = RNG.integers(0, 3, 64)


@keras.saving.register_keras_serializable(package="prunemix_tests")
class MLP(prunemix.PrunedModel):
    def __init__(self, pruning_schedule=None, **kwargs):
        super().__init__(
            pruning_schedule=pruning_schedule
            or prunemix.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=12, frequency=3),
            **kwargs,
        )
        self.hidden = keras.layers.Dense(32, activation="relu", bias_initializer="ones")
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))


def compiled(model, mode, optimizer="adam"):
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **mode,
    )
    return model


def last_update_step(schedule, step):
    return max(s for s in range(step + 1) if schedule.should_prune(s))


class CheckEveryStep(keras.callbacks.Callback):
    """After every batch: exact zero counts, and pruned entries exactly zero."""

    def __init__(self):
        super().__init__()
        self.checked = 0
        self.pruned_before = {}

    def on_train_batch_end(self, batch, logs=None):
        pruner = self.model.pruner
        step = int(pruner.pruning_step.numpy())
        target = float(pruner.pruning_schedule(last_update_step(pruner.pruning_schedule, step)))
        for p in pruner.pruned_weights:
            mask, weight = p.mask.numpy(), p.weight.numpy()
            assert (~mask).sum() == round(target * mask.size), (p.path, step)
            assert np.all(weight[~mask] == 0.0), (p.path, step)
            # Masks only grow here (non-decreasing schedule): no pruned entry leaks back.
            before = self.pruned_before.get(p.path)
            if before is not None:
                assert np.all(~mask[before]), (p.path, step)
            self.pruned_before[p.path] = ~mask
        assert logs["sparsity"] == pytest.approx(float(pruner.sparsity.numpy()))
        self.checked += 1


def test_fit_prunes_exactly_and_zeros_stay_zero(mode):
    model = compiled(MLP(), mode)
    check = CheckEveryStep()
    history = model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[check])
    assert check.checked == 16
    assert int(model.pruner.pruning_step.numpy()) == 16
    report = prunemix.sparsity_report(model)
    assert [row.zeros for row in report] == [round(0.8 * 12 * 32), round(0.8 * 32 * 3)]
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=1e-6)
    # Biases are never touched.
    assert np.count_nonzero(model.hidden.bias.numpy()) == 32


@pytest.mark.parametrize("jit", [False, True])
def test_one_trace_per_fit(jit):
    traces = []

    class Counted(MLP):
        def train_step(self, data):
            traces.append(1)
            return super().train_step(data)

    model = compiled(Counted(), {"jit_compile": jit})
    # Built beforehand, so no variable is created while tracing (tf.function
    # traces a second time after a first trace that creates variables, with
    # or without pruning).
    model(X[:1])
    model.optimizer.build(model.trainable_variables)
    model.fit(X, Y, batch_size=8, epochs=3, verbose=0)
    assert len(traces) == 1
    assert int(model.pruner.pruning_step.numpy()) == 24  # masks updated 6 times
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    assert len(traces) == 1


def test_lazy_build_traces_like_plain_keras():
    def count_traces(base, **kwargs):
        traces = []

        class Net(base):
            def __init__(self):
                super().__init__(**kwargs)
                self.dense = keras.layers.Dense(3)

            def call(self, x):
                return self.dense(x)

            def train_step(self, data):
                traces.append(1)
                return super().train_step(data)

        compiled(Net(), {}).fit(X, Y, batch_size=8, epochs=2, verbose=0)
        return len(traces)

    schedule = prunemix.ConstantSparsity(0.5, frequency=2)
    assert count_traces(prunemix.PrunedModel, pruning_schedule=schedule) == count_traces(
        keras.Model
    )


class Tower(keras.Model):
    """A nested plain sub-model."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(8)]
        self.named = {"scale": Scale()}

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return self.named["scale"](x)


class Research(prunemix.PrunedModel):
    def __init__(self, **kwargs):
        super().__init__(
            pruning_schedule=prunemix.ConstantSparsity(0.6, begin_step=0, frequency=4), **kwargs
        )
        self.conv = keras.layers.Conv2D(4, 3, activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.embed = keras.layers.Embedding(20, 8)
        self.lstm = keras.layers.LSTM(6, return_sequences=True)
        self.attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)
        self.gated = GatedDense(8)
        self.tower = Tower()
        self.tfmot_style = TfmotStyle(8)
        self.head = keras.layers.Dense(3)

    def call(self, inputs):
        image, tokens = inputs
        a = keras.ops.mean(self.norm(self.conv(image)), axis=(1, 2))
        seq = self.lstm(self.embed(tokens))
        b = keras.ops.mean(self.attention(seq, seq), axis=1)
        h = keras.ops.concatenate([a, b], axis=-1)
        h = self.tower(self.gated(h)) + self.tfmot_style(h)
        return self.head(h)


def research_data(n=32):
    rng = np.random.default_rng(1)
    return (
        rng.random((n, 8, 8, 1)).astype("float32"),
        rng.integers(0, 20, (n, 5)),
    ), rng.integers(0, 3, n)


def test_mixed_subclassed_model_prunes_every_declared_weight(mode):
    (image, tokens), y = research_data()
    model = compiled(Research(), mode)
    model((image[:1], tokens[:1]))
    zeros_at_init = {v.path: int(np.sum(v.numpy() == 0)) for v in model.weights}
    model.fit((image, tokens), y, batch_size=8, epochs=2, verbose=0)
    pruned = {id(p.weight): p for p in model.pruner.pruned_weights}
    declared = [
        model.conv._kernel, model.embed._embeddings,
        model.lstm.cell.kernel, model.lstm.cell.recurrent_kernel,
        model.gated.kernel, model.gated.gate,
        model.tower.blocks[0]._kernel, model.tower.blocks[1]._kernel,
        model.tower.named["scale"].w, model.tfmot_style.kernel,
        model.head._kernel,
    ] + [
        layer._kernel for layer in (
            model.attention._query_dense, model.attention._key_dense,
            model.attention._value_dense, model.attention._output_dense,
        )
    ]
    assert set(pruned) == {id(v) for v in declared}
    # Keys follow the attributes that hold each layer; paths follow layer names.
    keys = {p.key: p for p in pruned.values()}
    assert keys["tower/blocks/1/kernel"].weight is model.tower.blocks[1]._kernel
    assert keys["tower/named/scale/w"].weight is model.tower.named["scale"].w
    assert keys["attention/_query_dense/kernel"].path == f"{model.attention.name}/query/kernel"
    assert keys["lstm/cell/recurrent_kernel"].weight is model.lstm.cell.recurrent_kernel
    for variable in model.weights:
        if variable.path.startswith(model.pruner.path or "pruner"):
            continue
        zeros = int(np.sum(variable.numpy() == 0))
        if id(variable) in pruned:
            assert zeros == round(0.6 * np.prod(variable.shape)), variable.path
        elif keras.backend.is_float_dtype(variable.dtype) and variable.trainable:
            # Zero-initialized biases of dead units may stay zero; nothing more.
            assert zeros <= zeros_at_init[variable.path], variable.path


class TwoOptimizers(prunemix.PrunedModel):
    """GAN-style: its own train_step, two optimizers, then apply_pruning()."""

    def __init__(self, **kwargs):
        super().__init__(
            pruning_schedule=prunemix.PolynomialDecay(0.0, 0.75, 0, 6, frequency=2), **kwargs
        )
        self.generator = keras.layers.Dense(12)
        self.discriminator = keras.layers.Dense(1)

    def call(self, x):
        return self.discriminator(self.generator(x))

    def compile(self, **kwargs):
        super().compile(**kwargs)
        self.g_opt = keras.optimizers.Adam(1e-2)
        self.d_opt = keras.optimizers.SGD(1e-2)

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            d_loss = keras.ops.mean(keras.ops.softplus(-self.discriminator(x)))
        d_vars = self.discriminator.trainable_weights
        self.d_opt.apply_gradients(zip(tape.gradient(d_loss, d_vars), d_vars, strict=True))
        with tf.GradientTape() as tape:
            g_loss = keras.ops.mean(keras.ops.softplus(-self(x)))
        g_vars = self.generator.trainable_weights
        self.g_opt.apply_gradients(zip(tape.gradient(g_loss, g_vars), g_vars, strict=True))
        sparsity = self.apply_pruning()
        return {"d_loss": d_loss, "g_loss": g_loss, "sparsity": sparsity}


def test_custom_train_step_with_two_optimizers_reaches_target(mode):
    model = TwoOptimizers()
    model.compile(**mode)
    history = model.fit(X, batch_size=8, epochs=1, verbose=0)
    report = prunemix.sparsity_report(model)
    assert [r.zeros for r in report] == [round(0.75 * 12 * 12), round(0.75 * 12)]
    assert history.history["sparsity"][-1] == pytest.approx(report.sparsity)


def test_apply_pruning_in_a_custom_tf_function_loop():
    model = MLP(prunemix.ConstantSparsity(0.5, begin_step=2, frequency=2))
    optimizer = keras.optimizers.SGD(0.1)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
        return model.apply_pruning()

    sparsity = [float(step(X[i : i + 8], Y[i : i + 8])) for i in range(0, 40, 8)]
    assert sparsity == [0.0, 0.5, 0.5, 0.5, 0.5]
    assert prunemix.sparsity_report(model).zeros == round(0.5 * 384) + round(0.5 * 96)


def functional_model(**kwargs):
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.BatchNormalization()(hidden))
    return prunemix.PrunedModel(
        inputs, outputs,
        pruning_schedule=prunemix.ConstantSparsity(0.5, frequency=2), **kwargs,
    )


def test_functional_pruned_model(mode):
    model = compiled(functional_model(name="func"), mode)
    assert isinstance(model, prunemix.PrunedModel) and model.pruner is not None
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    assert [r.zeros for r in prunemix.sparsity_report(model)] == [96, 24]
    # Subclassed models still work after a functional one was made.
    assert MLP()(X).shape == (64, 3)


def test_save_and_load_keep_masks_and_step(tmp_path):
    for model in (functional_model(), MLP()):
        compiled(model, {}).fit(X, Y, batch_size=16, epochs=1, verbose=0)
        model.save(tmp_path / "m.keras")
        loaded = keras.saving.load_model(tmp_path / "m.keras")
        assert type(loaded) is type(model)
        assert int(loaded.pruner.pruning_step.numpy()) == 4
        for a, b in zip(model.pruner.pruned_weights, loaded.pruner.pruned_weights, strict=True):
            np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
        np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0))


def test_strip_pruning_functional_loads_without_prunemix(tmp_path):
    model = compiled(functional_model(), {})
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    stripped = prunemix.strip_pruning(model)
    assert type(stripped) is keras.Model or type(stripped).__name__ == "Functional"
    assert not any("mask" in v.name for v in stripped.weights)
    np.testing.assert_allclose(stripped.predict(X, verbose=0), model.predict(X, verbose=0))
    assert prunemix.sparsity_report(stripped).zeros == prunemix.sparsity_report(model).zeros
    stripped.save(tmp_path / "plain.keras")
    code = (
        "import sys; sys.modules['prunemix'] = None\n"
        "import keras, numpy as np\n"
        f"m = keras.saving.load_model({str(tmp_path / 'plain.keras')!r})\n"
        "print(sum(int(np.sum(w == 0)) for w in m.get_weights()))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    zeros = sum(int(np.sum(w == 0)) for w in stripped.get_weights())
    assert int(out.stdout.strip().splitlines()[-1]) == zeros


def test_strip_pruning_subclassed(tmp_path):
    model = compiled(MLP(), {})
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    stripped = prunemix.strip_pruning(model)
    assert stripped.pruner is None
    assert not any("mask" in v.name for v in stripped.weights)
    np.testing.assert_allclose(stripped.predict(X, verbose=0), model.predict(X, verbose=0))
    stripped.save(tmp_path / "stripped.keras")
    reloaded = keras.saving.load_model(tmp_path / "stripped.keras")
    assert reloaded.pruner is None
    np.testing.assert_allclose(reloaded.predict(X, verbose=0), model.predict(X, verbose=0))
    assert prunemix.sparsity_report(stripped).zeros == prunemix.sparsity_report(model).zeros
    compiled(stripped, {}).fit(X, Y, batch_size=16, epochs=1, verbose=0)
    assert stripped.pruner is None


def test_model_without_prunable_weights_is_an_error():
    class Empty(prunemix.PrunedModel):
        def __init__(self):
            super().__init__(pruning_schedule=prunemix.ConstantSparsity(0.5))
            self.norm = keras.layers.BatchNormalization()

        def call(self, x):
            return self.norm(x)

    with pytest.raises(ValueError, match="'empty' has no prunable weights"):
        Empty()(X)


def test_missing_or_bad_schedule_is_an_error_at_construction():
    class NoSchedule(prunemix.PrunedModel):
        def __init__(self):
            super().__init__()

    with pytest.raises(TypeError, match="needs `pruning_schedule=`"):
        NoSchedule()
    with pytest.raises(TypeError, match="pruning_schedule"):
        MLP(pruning_schedule="fast")
    inputs = keras.Input((3,))
    with pytest.raises(TypeError, match="needs `pruning_schedule=`"):
        prunemix.PrunedModel(inputs, keras.layers.Dense(2)(inputs))


def test_one_explicit_pruning_state_from_construction_to_strip():
    from prunemix import model as model_module

    class Small(prunemix.PrunedModel):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    small = Small(pruning_schedule=prunemix.ConstantSparsity(0.5))
    assert small._pruning_state == model_module.PENDING and small.pruner is None
    small(np.zeros((1, 4), "float32"))
    assert small._pruning_state == model_module.ACTIVE and small.pruner is not None
    stripped = prunemix.strip_pruning(small)
    assert isinstance(stripped, prunemix.PrunedModel)
    assert stripped._pruning_state == model_module.STRIPPED and stripped.pruner is None
    with pytest.raises(ValueError, match="stripped of its pruning state"):
        stripped.build_pruning()
    # prune_model's copy waits for its weights, then prunes.
    inputs = keras.Input((4,))
    pruned = prunemix.prune_model(keras.Model(inputs, keras.layers.Dense(3)(inputs)),
                                  prunemix.ConstantSparsity(0.5))
    assert pruned._pruning_state == model_module.ACTIVE
