"""One-shot pruning from calibration data (`prune_oneshot`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import prunemix
from prunemix import oneshot
from prunemix.axes import layer_input_axis
from prunemix.prunable import locate_prunable_weights

RNG = np.random.default_rng(0)


def mlp():
    inputs = keras.Input((12,))
    x = keras.layers.Dense(20, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(6, name="out")(x))


def cnn():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv_2")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="out")(x))


def attention():
    inputs = keras.Input((6, 16))
    x = keras.layers.MultiHeadAttention(2, 8, name="mha")(inputs, inputs)
    return keras.Model(inputs, keras.layers.Dense(8, name="out")(x))


def kernels(model):
    return {p: w for p, w in ((w.path, w) for w in model.weights) if p.endswith("kernel")}


def zeros(variable):
    return int((np.asarray(variable) == 0).sum())


@pytest.mark.parametrize("method", prunemix.oneshot.METHODS)
@pytest.mark.parametrize("make,shape", [(mlp, (12,)), (cnn, (8, 8, 4)), (attention, (6, 16))])
@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_exact_counts_per_kernel_and_nothing_else_touched(method, make, shape, sparsity):
    model = make()
    biases = {w.path: np.asarray(w).copy() for w in model.weights if "kernel" not in w.path}
    x = RNG.normal(size=(40, *shape)).astype("float32")
    report = prunemix.prune_oneshot(model, x, sparsity=sparsity, method=method, batch_size=16)
    assert len(report) == len(kernels(model))
    for path, kernel in kernels(model).items():
        assert zeros(kernel) == round(sparsity * np.prod(kernel.shape)), path
    assert [r.zeros for r in report] == [round(sparsity * r.size) for r in report]
    for w in model.weights:
        if w.path in biases:
            np.testing.assert_array_equal(np.asarray(w), biases[w.path])


@pytest.mark.parametrize("method", prunemix.oneshot.METHODS)
@pytest.mark.parametrize("make,shape", [(mlp, (12,)), (cnn, (8, 8, 4)), (attention, (6, 16))])
def test_two_four_groups_along_each_input_axis(method, make, shape):
    model = make()
    x = RNG.normal(size=(32, *shape)).astype("float32")
    prunemix.prune_oneshot(model, x, method=method, pattern=prunemix.NMSparsity(2, 4))
    for layer, weight, path, _ in locate_prunable_weights(model):
        value = np.moveaxis(np.asarray(weight), layer_input_axis(layer, weight), -1)
        assert ((value.reshape(-1, 4) == 0).sum(axis=1) == 2).all(), path


def linear_error(method, x, kernel, **kwargs):
    model = keras.Sequential([keras.Input((x.shape[1],)),
                              keras.layers.Dense(kernel.shape[1], use_bias=False)])
    model.layers[0].kernel.assign(kernel)
    prunemix.prune_oneshot(model, x, sparsity=0.5, method=method, **kwargs)
    pruned = np.asarray(model.layers[0].kernel)
    return float(np.linalg.norm(x @ kernel - x @ pruned))


@pytest.mark.parametrize("pattern", [None, prunemix.NMSparsity(2, 4)])
def test_sparsegpt_reconstructs_better_than_magnitude_on_correlated_inputs(pattern):
    x = (RNG.normal(size=(1024, 128)) @ RNG.normal(size=(128, 128))).astype("float32")
    kernel = RNG.normal(size=(128, 16)).astype("float32")
    magnitude = linear_error("magnitude", x, kernel, pattern=pattern)
    # Measured 0.77 for both; SparseGPT's own masks, chosen per block of 32 inputs.
    assert linear_error("sparsegpt", x, kernel, pattern=pattern, block_size=32) < \
        0.85 * magnitude


def test_sparsegpt_matches_a_port_of_the_reference_implementation():
    # The SparseGPT repository's `fasterprune` (2:4), written out in numpy.
    x = (RNG.normal(size=(256, 16)) @ RNG.normal(size=(16, 16))).astype("float32")
    kernel = RNG.normal(size=(16, 8)).astype("float32")
    w = kernel.T.astype(np.float64).copy()
    h = 2 * x.T.astype(np.float64) @ x / len(x)
    h += 0.01 * np.mean(np.diag(h)) * np.eye(16)
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    for i in range(16):
        if i % 4 == 0:
            scores = w[:, i:i + 4] ** 2 / np.diag(hinv)[i:i + 4][None] ** 2
            mask = np.zeros((8, 4), bool)
            np.put_along_axis(mask, np.argsort(scores, axis=1, kind="stable")[:, :2], True, 1)
        q = np.where(mask[:, i % 4], 0.0, w[:, i])
        w[:, i:] -= np.outer((w[:, i] - q) / hinv[i, i], hinv[i, i:])
        w[:, i] = q
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, use_bias=False)])
    model.layers[0].kernel.assign(kernel)
    prunemix.prune_oneshot(model, x, method="sparsegpt", pattern=prunemix.NMSparsity(2, 4))
    np.testing.assert_allclose(np.asarray(model.layers[0].kernel), w.T.astype("float32"),
                               rtol=1e-4, atol=1e-5)


def test_wanda_wins_where_inputs_have_outlier_features():
    x = RNG.normal(size=(512, 32)).astype("float32")
    x[:, :3] *= 30.0  # three outlier features, as large LMs have
    kernel = RNG.normal(size=(32, 16)).astype("float32")
    assert linear_error("wanda", x, kernel) < 0.5 * linear_error("magnitude", x, kernel)


def test_zero_sparsity_changes_nothing():
    model = mlp()
    before = [w.copy() for w in model.get_weights()]
    prunemix.prune_oneshot(model, RNG.normal(size=(16, 12)).astype("float32"), sparsity=0.0)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_later_layers_calibrate_on_the_pruned_outputs_before_them():
    model = mlp()
    x = RNG.normal(size=(64, 12)).astype("float32")
    hidden, out = model.get_layer("hidden"), model.get_layer("out")
    w1, b1, w2 = (np.asarray(v).copy() for v in (hidden.kernel, hidden.bias, out.kernel))
    prunemix.prune_oneshot(model, x, sparsity=0.5, method="wanda")

    def wanda(w, inputs):  # reference: the lowest |w| * ||x_j|| of each output, exactly half
        score = np.abs(w) * np.sqrt((inputs.astype(np.float64) ** 2).sum(axis=0))[:, None]
        keep = np.ones_like(w, bool)
        for j in range(w.shape[1]):
            keep[np.argsort(score[:, j], kind="stable")[:round(0.5 * w.shape[0])], j] = False
        return np.where(keep, w, 0)

    w1p = wanda(w1, x)
    np.testing.assert_array_equal(np.asarray(hidden.kernel), w1p)
    inputs_of_out = np.maximum(x @ w1p + b1, 0)  # produced by the pruned first layer
    np.testing.assert_array_equal(np.asarray(out.kernel), wanda(w2, inputs_of_out))


def test_calibration_formats_agree():
    x = RNG.normal(size=(48, 12)).astype("float32")
    y = np.zeros(48)
    results = []
    for data in (x, [x[:20], x[20:]], tf.data.Dataset.from_tensor_slices((x, y)).batch(7)):
        model = mlp()
        model.set_weights([w for w in mlp_weights()])
        prunemix.prune_oneshot(model, data, method="wanda")
        results.append([np.asarray(w) for w in model.weights])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a == 0, b == 0)


def mlp_weights():
    keras.utils.set_random_seed(3)
    return mlp().get_weights()


def test_keras_hub_task_prunes_block_by_block_and_still_generates():
    pytest.importorskip("keras_hub")
    from tests.hub_models import PROMPT, TOKENS, gpt2

    lm = gpt2()
    embedding = np.asarray(lm.backbone.token_embedding.embeddings).copy()
    report = prunemix.prune_oneshot(lm, TOKENS, sparsity=0.5, method="sparsegpt", batch_size=2)
    # 2 blocks x (q, k, v, attention output, FFN in, FFN out).
    assert len(report) == 12
    assert [r.zeros for r in report] == [round(0.5 * r.size) for r in report]
    np.testing.assert_array_equal(np.asarray(lm.backbone.token_embedding.embeddings), embedding)
    assert lm.generate(PROMPT, max_length=12, stop_token_ids=None)["token_ids"].shape == (1, 12)


def test_pruned_model_continues_from_the_oneshot_masks(mode):
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(20, activation="relu", name="hidden")(inputs)
    model = prunemix.PrunedModel(
        inputs, keras.layers.Dense(6, name="out")(hidden),
        pruning_schedule=prunemix.ConstantSparsity(0.5, begin_step=1000))
    x = RNG.normal(size=(32, 12)).astype("float32")
    prunemix.prune_oneshot(model, x, sparsity=0.5, method="sparsegpt")
    for p in model.pruner.pruned_weights:
        np.testing.assert_array_equal(np.asarray(p.mask), np.asarray(p.weight) != 0)
    assert list(model.pruner.pruned_counts.numpy()) == [120, 60]
    model.compile("adam", "mse", **mode)
    model.fit(x, RNG.normal(size=(32, 6)), epochs=2, verbose=0)
    for p in model.pruner.pruned_weights:  # the one-shot zeros stay zero while training
        assert zeros(p.weight) == round(0.5 * np.prod(p.weight.shape))
        assert not np.asarray(p.weight)[~np.asarray(p.mask)].any()


def test_policy_excludes_and_sets_its_own_target():
    model = mlp()
    x = RNG.normal(size=(16, 12)).astype("float32")
    report = prunemix.prune_oneshot(
        model, x, method="magnitude",
        policy=[prunemix.Rule("out", exclude=True),
                prunemix.Rule("hidden", final_sparsity=0.25)])
    assert [(r.layer, r.zeros) for r in report] == [("hidden", 60)]
    assert zeros(model.get_layer("out").kernel) == 0


def test_bad_input_is_refused_before_anything_changes():
    model = mlp()
    before = [w.copy() for w in model.get_weights()]
    x = RNG.normal(size=(8, 12)).astype("float32")
    with pytest.raises(ValueError, match=r"`sparsity` must be a fraction in \[0, 1\), not a "
                                         r"percentage. Received: sparsity=1.5"):
        prunemix.prune_oneshot(model, x, sparsity=1.5)
    with pytest.raises(ValueError, match="Received: method='obs'"):
        prunemix.prune_oneshot(model, x, method="obs")
    with pytest.raises(ValueError, match="holds no batch"):
        prunemix.prune_oneshot(model, [])
    with pytest.raises(ValueError, match=r"NMSparsity\(1, 4\) prunes 0.25.*sparsity=0.5"):
        prunemix.prune_oneshot(model, x, pattern=prunemix.NMSparsity(1, 4))
    with pytest.raises(ValueError, match="Received: pattern=BlockSparsity"):
        prunemix.prune_oneshot(model, x, pattern=prunemix.BlockSparsity((2, 2)))
    with pytest.raises(ValueError, match=r"input axis of 'hidden/kernel' \(12\) to be a multiple"):
        prunemix.prune_oneshot(model, x, sparsity=0.5, pattern=prunemix.NMSparsity(4, 8))
    with pytest.raises(ValueError, match="policy rule 0 sets \\['schedule'\\]"):
        prunemix.prune_oneshot(model, x, policy=[
            prunemix.Rule("out", schedule=prunemix.ConstantSparsity(0.5))])
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_failure_midway_restores_every_kernel(monkeypatch):
    model = mlp()
    before = [w.copy() for w in model.get_weights()]
    real, calls = oneshot._prune, []

    def failing(target, *args):
        calls.append(target.path)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(target, *args)

    monkeypatch.setattr(oneshot, "_prune", failing)
    with pytest.raises(RuntimeError, match="boom"):
        prunemix.prune_oneshot(model, RNG.normal(size=(8, 12)).astype("float32"))
    assert len(calls) == 2
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_dead_inputs_are_damped_not_fatal():
    x = RNG.normal(size=(64, 12)).astype("float32")
    x[:, 5] = 0.0  # an input feature the calibration data never uses
    model = mlp()
    report = prunemix.prune_oneshot(model, x, method="sparsegpt")
    assert [r.zeros for r in report] == [120, 60]
    assert np.isfinite(np.asarray(model.get_layer("hidden").kernel)).all()


def test_input_feature_norms_in_call_order():
    x = RNG.normal(size=(24, 12)).astype("float32")
    model = mlp()
    norms = prunemix.oneshot.input_feature_norms(model, x, batch_size=5)
    assert list(norms) == ["hidden/kernel", "out/kernel"]
    np.testing.assert_allclose(norms["hidden/kernel"], np.linalg.norm(x, axis=0), rtol=1e-6)
    hidden = np.maximum(x @ np.asarray(model.get_layer("hidden").kernel)
                        + np.asarray(model.get_layer("hidden").bias), 0)
    np.testing.assert_allclose(norms["out/kernel"], np.linalg.norm(hidden, axis=0), rtol=1e-5)


class CosineDense(keras.layers.Dense):
    """A Dense subclass that computes something else than `x @ kernel`."""

    def call(self, x):
        return keras.ops.normalize(x) @ keras.ops.normalize(self.kernel, axis=0)


def test_layers_that_compute_otherwise_are_left_alone():
    inputs = keras.Input((12,))
    x = CosineDense(8, name="cosine")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(x))
    before = np.asarray(model.get_layer("cosine").kernel).copy()
    report = prunemix.prune_oneshot(model, RNG.normal(size=(16, 12)).astype("float32"))
    assert [r.layer for r in report] == ["out"]
    np.testing.assert_array_equal(np.asarray(model.get_layer("cosine").kernel), before)
