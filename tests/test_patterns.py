"""Issue 4: per-layer policy, global, block, N:M, structured, custom scores."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import prunemix
from tests.conftest import MODES
from tests.layers import Scale
from tests.test_masks import VALUES, reference_lowest_k, reference_order

RNG = np.random.default_rng(1)
X = RNG.random((32, 8, 8, 4)).astype("float32")
Y = RNG.integers(0, 4, 32)
SCHEDULE = prunemix.ConstantSparsity(0.5, begin_step=0, frequency=2)


def convnet(policy=None, schedule=SCHEDULE, name="convnet"):
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    return prunemix.PrunedModel(
        inputs, outputs, pruning_schedule=schedule, pruning_policy=policy, name=name
    )


def fit(model, mode, epochs=1):
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), **mode
    )
    model.fit(X, Y, batch_size=8, epochs=epochs, verbose=0)
    return model


def masks_of(model) -> dict:
    return {p.layer.name: p.mask.numpy() for p in model.pruner.pruned_weights}


def assert_zeros_follow_masks(model):
    for p in model.pruner.pruned_weights:
        assert np.all(p.weight.numpy()[~p.mask.numpy()] == 0.0), p.path


# -- per-layer policy ------------------------------------------------------------


def test_policy_excludes_by_name_class_glob_and_callable():
    rules = [
        [prunemix.Rule("head", exclude=True)],
        [prunemix.Rule(keras.layers.Conv2D, exclude=True)],
        [prunemix.Rule("hid*/kernel", exclude=True)],
        [prunemix.Rule(lambda layer, weight: layer.name == "conv", exclude=True)],
    ]
    expected = [{"conv", "hidden"}, {"hidden", "head"}, {"conv", "head"}, {"hidden", "head"}]
    # The policy is resolved at build, the same in every mode: each policy fits
    # in one mode, and the four cycle through eager, graph and XLA.
    modes = [MODES[name] for name in sorted(MODES)] * 2
    for policy, names, mode in zip(rules, expected, modes[:4], strict=True):
        keras.backend.clear_session()
        model = fit(convnet(policy), mode)
        assert set(masks_of(model)) == names
        # Excluded weights stay dense; pruned ones have exactly half zeros.
        for row in prunemix.sparsity_report(model):
            layer = row.layer.split("/")[-1]
            assert row.zeros == (round(0.5 * row.size) if layer in names else 0), row


def test_policy_gives_layers_their_own_schedule_and_final_sparsity(mode):
    policy = [
        prunemix.Rule("conv", final_sparsity=0.25),
        prunemix.Rule("head", schedule=prunemix.ConstantSparsity(0.75, begin_step=2)),
    ]
    model = fit(convnet(policy), mode)
    zeros = {row.layer: row.zeros for row in prunemix.sparsity_report(model)}
    assert zeros == {"conv": round(0.25 * 288), "hidden": round(0.5 * 4608), "head": 48}
    assert_zeros_follow_masks(model)
    total = 288 + 4608 + 64
    assert float(model.pruner.sparsity.numpy()) == pytest.approx((72 + 2304 + 48) / total)


def test_policy_is_saved_with_the_model(tmp_path):
    policy = [
        prunemix.Rule("head", exclude=True),
        prunemix.Rule(keras.layers.Conv2D, pattern=prunemix.NMSparsity(2, 4)),
        prunemix.Rule(["hidden"], pattern=prunemix.BlockSparsity((1, 4), "max"),
                      final_sparsity=0.75),
    ]
    model = fit(convnet(policy), {})
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    rules = loaded.pruning_policy
    assert [r.get_config() for r in rules] == [r.get_config() for r in policy]
    assert rules[1].match is keras.layers.Conv2D
    for a, b in zip(model.pruner.pruned_weights, loaded.pruner.pruned_weights, strict=True):
        assert a.pattern == b.pattern
        np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
    # Training goes on with the restored patterns.
    fit(loaded, {})
    conv = masks_of(loaded)["conv"]
    assert np.all((~conv).reshape(3, 3, 1, 4, 8).sum(axis=3) >= 2)


def test_policy_errors_name_the_rule_and_the_layers():
    with pytest.raises(ValueError, match=r"rule 0 \(match='hiden'\) matches no prunable"):
        convnet([prunemix.Rule("hiden", exclude=True)])
    with pytest.raises(ValueError, match="conv/kernel, head/kernel, hidden/kernel"):
        convnet([prunemix.Rule(keras.layers.Embedding, final_sparsity=0.9)])
    with pytest.raises(ValueError, match="rule 1 .* earlier rule"):
        convnet([prunemix.Rule("*", exclude=False), prunemix.Rule("head", exclude=True)])
    with pytest.raises(ValueError, match="excludes every prunable weight"):
        convnet([prunemix.Rule("*", exclude=True)])
    with pytest.raises(ValueError, match="min_sparsity"):
        prunemix.Rule("head", min_sparsity=1.5)
    with pytest.raises(ValueError, match="max_sparsity"):
        prunemix.Rule("head", min_sparsity=0.5, max_sparsity=0.2)
    with pytest.raises(TypeError, match="`match`"):
        prunemix.Rule(3)
    with pytest.raises(TypeError, match="list of `prunemix.Rule`s"):
        convnet(["head"])
    with pytest.raises(ValueError, match="cannot be combined"):
        prunemix.Rule("head", exclude=True, final_sparsity=0.5)


# -- global magnitude ------------------------------------------------------------


def test_global_threshold_hits_the_model_wide_count_exactly(mode):
    schedule = prunemix.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=6, frequency=2)
    model = fit(convnet([prunemix.Rule("*", pattern="global")], schedule), mode, epochs=2)
    report = prunemix.sparsity_report(model)
    assert report.zeros == round(0.8 * report.size)
    assert len({round(r.sparsity, 3) for r in report}) == 3  # layers differ
    assert_zeros_follow_masks(model)
    # One threshold: right after an update, every pruned magnitude is <= every kept one.
    for p in model.pruner.pruned_weights:
        p.weight.assign(RNG.normal(size=p.weight.shape).astype("float32"))
    model.pruner.update_masks()
    weights = [(np.abs(p.weight.numpy()), p.mask.numpy()) for p in model.pruner.pruned_weights]
    pruned = np.concatenate([w[~m] for w, m in weights])
    kept = np.concatenate([w[m] for w, m in weights])
    assert pruned.size == round(0.8 * report.size) and pruned.max() <= kept.min()


def test_global_bounds_keep_every_layer_alive():
    model = convnet([
        prunemix.Rule("head", pattern="global", max_sparsity=0.3),
        prunemix.Rule("*", pattern=prunemix.GlobalMagnitude(), min_sparsity=0.6),
    ], prunemix.ConstantSparsity(0.8, begin_step=0, frequency=1))
    head = model.get_layer("head").kernel
    head.assign(head * 1e-3)  # would be pruned first without a ceiling
    model.pruner.update_masks(1)
    report = {r.layer: r for r in prunemix.sparsity_report(model)}
    masks = {p.layer.name: p.mask.numpy() for p in model.pruner.pruned_weights}
    zeros = {name: int((~m).sum()) for name, m in masks.items()}
    assert zeros["head"] == round(0.3 * 64)
    assert zeros["conv"] >= round(0.6 * 288) and zeros["hidden"] >= round(0.6 * 4608)
    assert sum(zeros.values()) == round(0.8 * sum(r.size for r in report.values()))


def test_global_scores_are_compared_across_layers():
    scores = [tf.constant([[0.1, 0.9], [0.2, 0.8]]), tf.constant([0.3, 0.05, 0.7])]
    keep = prunemix.patterns.global_masks(scores, 3 / 7, [(0.0, 1.0)] * 2)
    assert [k.numpy().tolist() for k in keep] == [[[False, True], [False, True]],
                                                 [True, False, True]]


def test_global_pool_needs_one_schedule():
    with pytest.raises(ValueError, match="same schedule"):
        convnet([
            prunemix.Rule("head", pattern="global", final_sparsity=0.3),
            prunemix.Rule("*", pattern="global"),
        ])


# -- block sparsity --------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_block_pruning_zeroes_whole_blocks_on_any_rank(pooling):
    weight = RNG.normal(size=(3, 3, 6, 10)).astype("float32")  # 6x10 not divisible by 4x4
    pattern = prunemix.BlockSparsity((4, 4), pooling)
    keep, count = pattern.mask_and_count(weight, 0.5)  # signed scores rank by |w|
    keep = keep.numpy()
    assert int(count) == int((~keep).sum())  # edge blocks counted by their real size
    blocks = keep.reshape(3, 3, 6, 10)
    n_blocks = 3 * 3 * 2 * 3
    pruned_blocks = 0
    for i in range(3):
        for j in range(3):
            for a in range(0, 6, 4):
                for b in range(0, 10, 4):
                    block = blocks[i, j, a:a + 4, b:b + 4]
                    assert block.all() or not block.any()  # whole blocks only
                    pruned_blocks += not block.any()
    assert pruned_blocks == round(0.5 * n_blocks)
    # The pruned blocks are the ones with the lowest pooled score.
    pad = np.pad(np.abs(weight), [(0, 0), (0, 0), (0, 2), (0, 2)], constant_values=np.nan)
    pooled = pad.reshape(3, 3, 2, 4, 3, 4)
    pooled = (np.nanmean if pooling == "avg" else np.nanmax)(pooled, axis=(3, 5))
    pruned = ~keep[:, :, ::4, ::4]
    assert pooled[pruned].max() <= pooled[~pruned].min()


def test_block_pruning_in_fit(mode):
    policy = [prunemix.Rule("*", pattern=prunemix.BlockSparsity((1, 4)))]
    model = fit(convnet(policy), mode)
    for p in model.pruner.pruned_weights:
        mask = p.mask.numpy()
        groups = mask.reshape(*mask.shape[:-1], -1, 4)
        assert np.all(groups.all(-1) | ~groups.any(-1)), p.path
        assert (~groups.any(-1)).sum() == round(0.5 * groups[..., 0].size)
    assert_zeros_follow_masks(model)


def test_block_errors():
    with pytest.raises(ValueError, match="larger than weight '.*head/kernel'"):
        convnet([prunemix.Rule("head", pattern=prunemix.BlockSparsity((32, 1)))])
    with pytest.raises(ValueError, match="has 3 axes"):
        convnet([prunemix.Rule("head", pattern=prunemix.BlockSparsity((1, 1, 2)))])
    with pytest.raises(ValueError, match="positive ints"):
        prunemix.BlockSparsity((0, 4))
    with pytest.raises(ValueError, match="pooling"):
        prunemix.BlockSparsity((1, 4), "mean")


# -- N:M sparsity ----------------------------------------------------------------


def assert_n_of_m(mask, n, m, axis):
    moved = np.moveaxis(~mask, axis, -1)
    groups = moved.reshape(-1, m)
    assert np.all(groups.sum(-1) >= n), groups.sum(-1).min()


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (1, 2)])
def test_n_of_m_every_group(n, m, mode):
    policy = [prunemix.Rule("*", pattern=prunemix.NMSparsity(n, m))]
    model = fit(convnet(policy), mode)
    masks = masks_of(model)
    assert_n_of_m(masks["conv"], n, m, axis=2)  # (h, w, in, out): input channels
    assert_n_of_m(masks["hidden"], n, m, axis=0)  # (in, out)
    assert_n_of_m(masks["head"], n, m, axis=0)
    assert model.pruner.sparsity.numpy() == pytest.approx(n / m)
    assert_zeros_follow_masks(model)


def test_n_of_m_is_recomputed_at_each_update():
    model = convnet([prunemix.Rule("*", pattern=prunemix.NMSparsity(2, 4))],
                    prunemix.ConstantSparsity(0.5, begin_step=0, frequency=1))
    model.pruner.update_masks(1)
    head = model.pruner.pruned_weights[-1]
    before = head.mask.numpy()
    head.weight.assign(np.where(before, 1e-3, 1.0).astype("float32"))
    model.pruner.update_masks(2)
    np.testing.assert_array_equal(head.mask.numpy(), ~before)


def test_n_of_m_keeps_the_largest_of_each_group():
    w = RNG.normal(size=(8, 3)).astype("float32")
    keep = prunemix.NMSparsity(2, 4).mask(np.abs(w), 0.5).numpy()
    for col in range(3):
        for g in range(2):
            values = np.abs(w[4 * g:4 * g + 4, col])
            kept = keep[4 * g:4 * g + 4, col]
            assert kept.sum() == 2 and values[kept].min() >= values[~kept].max()


def test_n_of_m_errors():
    with pytest.raises(ValueError, match=r"`n` \(4\) must be smaller than `m` \(4\)"):
        prunemix.NMSparsity(4, 4)
    with pytest.raises(ValueError, match="positive int"):
        prunemix.NMSparsity(0, 4)
    with pytest.raises(ValueError, match="NMSparsity: axis 5 is out of range for weight"):
        convnet([prunemix.Rule("head", pattern=prunemix.NMSparsity(2, 4, axis=5))])
    with pytest.raises(ValueError, match="'.*head/kernel' .* 16 entries along axis 0, not a "
                                         "multiple of 5"):
        convnet([prunemix.Rule("head", pattern=prunemix.NMSparsity(2, 5))])

    inputs = keras.Input((4,))
    outputs = Scale()(keras.layers.Dense(4, name="d")(inputs))
    with pytest.raises(ValueError, match="rank >= 2, but weight '.*scale.*' .* shape \\(4,\\)"):
        prunemix.PrunedModel(inputs, outputs, pruning_schedule=SCHEDULE, pruning_policy=[
            prunemix.Rule("*", pattern=prunemix.NMSparsity(2, 4))])


# -- structured ------------------------------------------------------------------


@pytest.mark.parametrize("axis,norm", [("output", "l1"), ("output", "l2"), ("input", "l2")])
def test_structured_prunes_whole_units(axis, norm, mode):
    policy = [prunemix.Rule("*", pattern=prunemix.StructuredSparsity(axis, norm))]
    model = fit(convnet(policy), mode)
    for p in model.pruner.pruned_weights:
        mask, rank = p.mask.numpy(), len(p.mask.shape)
        unit_axis = rank - 1 if axis == "output" else (0 if rank == 2 else rank - 2)
        units = np.moveaxis(mask, unit_axis, 0).reshape(mask.shape[unit_axis], -1)
        assert np.all(units.all(1) | ~units.any(1)), p.path
        assert (~units.any(1)).sum() == round(0.5 * len(units)), p.path
    assert_zeros_follow_masks(model)


def test_structured_picks_the_lowest_norm_units():
    w = np.array([[3.0, 0.1, 1.0], [-3.0, 0.1, -1.0]], "float32")
    keep = prunemix.StructuredSparsity("output", "l1").mask(np.abs(w), 1 / 3).numpy()
    assert keep.tolist() == [[True, False, True], [True, False, True]]


def test_structured_errors():
    with pytest.raises(ValueError, match="axis"):
        prunemix.StructuredSparsity("rows")
    with pytest.raises(ValueError, match="norm"):
        prunemix.StructuredSparsity(norm="l3")
    with pytest.raises(ValueError, match="out of range"):
        convnet([prunemix.Rule("head", pattern=prunemix.StructuredSparsity(3))])


# -- custom importance -----------------------------------------------------------


@keras.saving.register_keras_serializable(package="prunemix_tests")
def inverse_magnitude(pruned_weight):
    return 1.0 / (keras.ops.abs(pruned_weight.weight) + 1e-6)


def test_custom_score_decides_what_is_pruned(mode, tmp_path):
    policy = [prunemix.Rule("head", score=inverse_magnitude)]
    model = fit(convnet(policy), mode)
    head = model.pruner.pruned_weights[-1]
    assert head.score is inverse_magnitude
    assert model.pruner.pruned_weights[1].score is None
    mask, weight = head.mask.numpy(), np.abs(head.weight.numpy())
    assert (~mask).sum() == 32
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.pruning_policy[0].score is inverse_magnitude
    # 1/|w| ranks the zeroed entries highest: a fresh update keeps exactly them.
    loaded.pruner.update_masks()
    np.testing.assert_array_equal(loaded.pruner.pruned_weights[-1].mask.numpy(), ~mask)
    # And from fresh weights it prunes the largest magnitudes.
    head.weight.assign(RNG.normal(size=(16, 4)).astype("float32"))
    model.pruner.update_masks()
    mask, weight = head.mask.numpy(), np.abs(head.weight.numpy())
    assert weight[~mask].min() >= weight[mask].max()


def test_custom_score_must_be_callable():
    with pytest.raises(TypeError, match="`score` must be a callable"):
        prunemix.Rule("head", score=0.5)


# -- every method: one trace per fit, apply_pruning ------------------------------


@pytest.mark.parametrize("pattern", [
    "global", prunemix.BlockSparsity((1, 4)), prunemix.NMSparsity(2, 4),
    prunemix.StructuredSparsity(), prunemix.Magnitude(),
])
def test_one_trace_per_fit_and_apply_pruning(pattern):
    traces = []

    class Counted(prunemix.PrunedModel):
        def __init__(self):
            super().__init__(
                pruning_schedule=prunemix.PolynomialDecay(0.0, 0.5, 0, 8, frequency=2),
                pruning_policy=[prunemix.Rule("*", pattern=pattern)],
            )
            self.conv = keras.layers.Conv2D(8, 3)
            self.flat = keras.layers.Flatten()
            self.head = keras.layers.Dense(4)

        def call(self, x):
            return self.head(self.flat(self.conv(x)))

        def train_step(self, data):
            traces.append(1)
            x, y = data
            with tf.GradientTape() as tape:
                loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply(grads, self.trainable_variables)
            return {"loss": loss, "sparsity": self.apply_pruning()}

    model = Counted()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    model(X[:1])
    model.optimizer.build(model.trainable_variables)
    history = model.fit(X, Y, batch_size=8, epochs=3, verbose=0)
    assert len(traces) == 1
    assert history.history["sparsity"][-1] == pytest.approx(0.5, abs=0.02)
    for p in model.pruner.pruned_weights:
        expected = math.prod(p.weight.shape) * 0.5
        assert abs((~p.mask.numpy()).sum() - expected) <= 0.02 * expected + 1 or (
            pattern == "global"
        )
    assert_zeros_follow_masks(model)
    # The counts each pattern reports (no pass over the masks) are the masks' zeros.
    counts = model.pruner.pruned_counts.numpy().tolist()
    assert counts == [int((~p.mask.numpy()).sum()) for p in model.pruner.pruned_weights]
    total = sum(math.prod(p.weight.shape) for p in model.pruner.pruned_weights)
    assert float(model.pruner.sparsity.numpy()) == pytest.approx(sum(counts) / total)


# -- shrinking whole pruned units --------------------------------------------------


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_shrink_removes_structured_pruned_units_and_keeps_predictions(kind):
    x = RNG.random((32, 20)).astype("float32")
    y = RNG.integers(0, 4, 32)
    layers = [keras.layers.Dense(64, activation="relu", bias_initializer="ones", name="a"),
              keras.layers.Dense(48, activation="tanh", bias_initializer="ones", name="b"),
              keras.layers.Dense(4, name="c")]
    if kind == "sequential":
        dense = keras.Sequential([keras.Input((20,)), *layers])
    else:
        inputs = keras.Input((20,))
        dense = keras.Model(inputs, layers[2](layers[1](layers[0](inputs))))
    pruned = prunemix.prune_model(
        dense, prunemix.ConstantSparsity(0.5, frequency=2),
        pruning_policy=[prunemix.Rule("c", exclude=True),
                        prunemix.Rule("*", pattern=prunemix.StructuredSparsity("output"))],
    )
    fit_model = pruned
    fit_model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fit_model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    small = prunemix.shrink(pruned)
    assert [layer.units for layer in small.layers[1:]] == [32, 24, 4]
    # The removed units had non-zero biases: their constant output was folded.
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    assert small.count_params() == (20 * 32 + 32) + (32 * 24 + 24) + (24 * 4 + 4)


# -- per-class default patterns (decorator and mixin) -------------------------------


@prunemix.prunable("kernel", pattern=prunemix.NMSparsity(2, 4))
class NMDense(keras.layers.Dense):
    pass


class BlockDense(prunemix.PrunableMixin, keras.layers.Dense):
    prunable_weights = ("kernel",)
    pruning_pattern = prunemix.BlockSparsity((1, 4))


def test_layer_classes_carry_default_patterns():
    inputs = keras.Input((8,))
    x = NMDense(8, name="nm")(inputs)
    x = BlockDense(8, name="block")(x)
    x = NMDense(8, name="overridden")(x)
    model = prunemix.PrunedModel(
        inputs, keras.layers.Dense(4, name="plain")(x),
        pruning_schedule=prunemix.ConstantSparsity(0.5, frequency=1),
        pruning_policy=[prunemix.Rule("overridden", pattern=prunemix.Magnitude())],
    )
    patterns = {p.layer.name: p.pattern for p in model.pruner.pruned_weights}
    # The class default NMSparsity(2, 4) is bound to the Dense kernel's input axis.
    assert patterns == {"nm": prunemix.NMSparsity(2, 4, axis=0),
                        "block": prunemix.BlockSparsity((1, 4)),
                        "overridden": prunemix.Magnitude(), "plain": prunemix.Magnitude()}
    model.pruner.update_masks(1)
    assert_n_of_m(masks_of(model)["nm"], 2, 4, axis=0)
    block = masks_of(model)["block"].reshape(8, 2, 4)
    assert np.all(block.all(-1) | ~block.any(-1))


def test_bad_default_pattern_is_an_error_at_class_creation():
    with pytest.raises(TypeError, match="pruning_pattern"):
        @prunemix.prunable("kernel", pattern="diagonal")
        class Bad(keras.layers.Dense):
            pass
    with pytest.raises(TypeError, match="Bad `pruning_pattern` for BadMixin"):
        class BadMixin(prunemix.PrunableMixin, keras.layers.Dense):
            prunable_weights = ("kernel",)
            pruning_pattern = 3


# -- fuzzed against numpy references, NaN and ties included ---------------------------

def reference_nm(scores, n, m, axis):
    moved = np.moveaxis(np.asarray(scores, np.float32), axis, -1)
    keep = np.ones(moved.shape, bool).reshape(-1, m)
    for row, group in zip(keep, moved.reshape(-1, m), strict=True):
        row[reference_order(group)[:n]] = False
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_nm_sparsity_matches_numpy_reference(data):
    n, m = data.draw(st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4)]))
    axis = data.draw(st.sampled_from([0, 1]))
    shape = [data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))]
    shape[axis] *= m
    scores = data.draw(hnp.arrays(np.float32, tuple(shape), elements=VALUES))
    got = prunemix.NMSparsity(n, m, axis=axis).mask(scores, 0.5).numpy()
    np.testing.assert_array_equal(got, reference_nm(scores, n, m, axis))


def reference_blocks(scores, block, sparsity, pooling):
    scores = np.abs(np.asarray(scores, np.float32))
    rows, cols = -(-scores.shape[0] // block[0]), -(-scores.shape[1] // block[1])
    pooled = np.zeros((rows, cols), np.float32)
    for i in range(rows):
        for j in range(cols):
            part = scores[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]]
            if pooling == "max":
                pooled[i, j] = np.nan if np.isnan(part).any() else part.max()
            else:
                pooled[i, j] = part.sum(dtype=np.float32) / np.float32(part.size)
    keep_blocks = reference_lowest_k(pooled, round(sparsity * pooled.size))
    keep = np.repeat(np.repeat(keep_blocks, block[0], axis=0), block[1], axis=1)
    return keep[: scores.shape[0], : scores.shape[1]]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_block_sparsity_matches_numpy_reference(data):
    block = data.draw(st.sampled_from([(1, 2), (2, 1), (2, 2), (1, 4), (4, 1)]))
    pooling = data.draw(st.sampled_from(["avg", "max"]))
    shape = (data.draw(st.integers(block[0], 6)), data.draw(st.integers(block[1], 6)))
    scores = data.draw(hnp.arrays(np.float32, shape, elements=VALUES))
    sparsity = data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9]))
    got = prunemix.BlockSparsity(block, pooling).mask(scores, sparsity).numpy()
    np.testing.assert_array_equal(got, reference_blocks(scores, block, sparsity, pooling))


# -- axes from the layer, not the rank ------------------------------------------------


@pytest.mark.parametrize("heads", [2, 4, 8])
def test_nm_groups_attention_projections_along_their_input_features(heads):
    inputs = keras.Input((6, 16))
    outputs = keras.layers.MultiHeadAttention(heads, 8, name="mha")(inputs, inputs)
    model = prunemix.PrunedModel(
        inputs, outputs, pruning_schedule=prunemix.ConstantSparsity(0.5, frequency=1),
        pruning_policy=[prunemix.Rule("*", pattern=prunemix.NMSparsity(2, 4))],
    )
    axes = {p.path.split("/")[1]: p.pattern.axis for p in model.pruner.pruned_weights}
    # q/k/v (16 in, heads, 8): input axis 0; output (heads, 8, 16 out): axis 1 (head dim).
    assert axes == {"query": 0, "key": 0, "value": 0, "attention_output": 1}
    model.pruner.update_masks(step=1)
    for p in model.pruner.pruned_weights:
        pruned = np.moveaxis(~p.mask.numpy(), p.pattern.axis, -1).reshape(-1, 4)
        assert (pruned.sum(axis=1) == 2).all(), p.path  # 2 of every 4 inputs, in every group


def test_conv_transpose_input_and_output_axes():
    inputs = keras.Input((4, 4, 8))
    outputs = keras.layers.Conv2DTranspose(12, 3, name="up")(inputs)  # kernel (3, 3, 12, 8)
    model = prunemix.PrunedModel(
        inputs, outputs, pruning_schedule=prunemix.ConstantSparsity(0.5, frequency=1),
        pruning_policy=[prunemix.Rule("*", pattern=prunemix.NMSparsity(2, 4))],
    )
    assert model.pruner.pruned_weights[0].pattern == prunemix.NMSparsity(2, 4, axis=3)
    structured = prunemix.PrunedModel(
        inputs, outputs, pruning_schedule=prunemix.ConstantSparsity(0.5, frequency=1),
        pruning_policy=[prunemix.Rule("*", pattern=prunemix.StructuredSparsity("output"))],
    )
    assert structured.pruner.pruned_weights[0].pattern.axis == 2  # the 12 filters


def test_patterns_are_found_by_alias_from_one_registry():
    assert type(prunemix.patterns.get("channels")) is prunemix.ChannelGroups
    assert type(prunemix.patterns.get("n:m")) is prunemix.NMSparsity

    class Every2nd(prunemix.Magnitude):
        alias = "every2nd_test"

    assert type(prunemix.patterns.get("every2nd_test")) is Every2nd
    assert not prunemix.Magnitude.needs_graph and prunemix.ChannelGroups.needs_graph
    with pytest.raises(TypeError, match=r"one of \[.*'channels'.*\]\. Received: 'nope'"):
        prunemix.patterns.get("nope")
