"""Channel dependency groups, ChannelGroups pruning and `shrink`."""

import keras
import numpy as np
import pytest

import prunemix

RNG = np.random.default_rng(0)
X = RNG.random((32, 8, 8, 3)).astype("float32")
Y = RNG.random((32, 5)).astype("float32")


def residual_cnn(cls=keras.Model, **kwargs):
    """conv-BN-relu, a residual Add, a Concatenate, a depthwise conv, Flatten."""
    x = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", name="c1")(x)
    a = keras.layers.BatchNormalization(name="bn1")(a)
    a = keras.layers.ReLU(name="relu")(a)
    b = keras.layers.Conv2D(6, 3, padding="same", name="c2")(a)
    s = keras.layers.Add(name="add")([a, b])
    c = keras.layers.Conv2D(4, 1, name="c3")(s)
    cat = keras.layers.Concatenate(name="cat")([s, c])
    d = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(cat)
    f = keras.layers.Flatten(name="flat")(keras.layers.MaxPooling2D(4, name="pool")(d))
    h = keras.layers.Dense(7, activation="relu", name="h")(f)
    return cls(x, keras.layers.Dense(5, name="out")(h), **kwargs)


def channel_pruned(sparsity=0.5, pattern=None, policy=()):
    return residual_cnn(
        prunemix.PrunedModel,
        pruning_schedule=prunemix.ConstantSparsity(sparsity, 0, frequency=1),
        pruning_policy=[*policy, prunemix.Rule("*", pattern=pattern or prunemix.ChannelGroups())],
    )


def dead_channels(model, layer, weight="kernel", axis=-1):
    value = np.asarray(getattr(model.get_layer(layer), weight))
    value = np.moveaxis(value, axis, -1).reshape(-1, value.shape[axis])
    return set(np.nonzero(~value.any(axis=0))[0].tolist())


def test_groups_follow_the_graph_not_the_layers():
    graph = prunemix.channel_graph(residual_cnn())
    sizes = sorted(len(g) for g in graph.groups)
    # input (3, kept), Add + Concatenate (6 + 4), hidden Dense (7), output (5, kept)
    assert sizes == [3, 5, 7, 10]
    blocked = {len([c for c in g if c in graph.blocked]) for g in graph.groups}
    assert blocked == {0, 3, 5}
    assert graph.ended_by == {}
    text = graph.summary()
    assert "4 groups" in text and "10 channels" in text


def transformer_block(heads=2):
    x = keras.Input((6, 16))
    a = keras.layers.MultiHeadAttention(heads, 8, name="mha")(x, x)
    a = keras.layers.LayerNormalization(name="ln")(keras.layers.Add()([x, a]))
    h = keras.layers.Dense(32, activation="gelu", name="ffn_in")(a)
    y = keras.layers.Dense(16, name="ffn_out")(h)
    return keras.Model(x, keras.layers.Add()([a, y]))


def test_layer_norm_ends_groups_and_attention_heads_and_ffn_units_are_free():
    model = transformer_block()
    graph = prunemix.channel_graph(model)
    assert "mha" not in graph.ended_by
    assert "normalizes over the channels" in graph.ended_by["ln"]
    free = [g for g in graph.groups if not any(c in graph.blocked for c in g)]
    assert [len(g) for g in free] == [2, 32]  # the heads and the FFN hidden units
    ffn = model.get_layer("ffn_in")
    kernel, bias = np.asarray(ffn.kernel), np.asarray(ffn.bias) + 0.1
    kernel[:, ::2], bias[::2] = 0.0, 0.0  # half the hidden units, by hand
    ffn.kernel.assign(kernel)
    ffn.bias.assign(bias)
    small = prunemix.shrink(model)
    assert small.get_layer("ffn_in").units == 16
    assert small.get_layer("ffn_out").kernel.shape[0] == 16
    data = RNG.random((3, 6, 16)).astype("float32")
    np.testing.assert_allclose(small(data), model(data), atol=1e-5)


@pytest.mark.parametrize("silence", ["value", "output"])
def test_silent_attention_heads_are_removed_exactly(silence, tmp_path):
    model = transformer_block(heads=4)
    mha = model.get_layer("mha")
    if silence == "value":  # heads 1 and 3 project no value
        for variable in (mha._value_dense.kernel, mha._value_dense.bias):
            value = np.asarray(variable)
            value[(slice(None),) * (value.ndim - 2) + ([1, 3],)] = 0.0
            variable.assign(value)
    else:  # heads 1 and 3 have no output rows
        kernel = np.asarray(mha._output_dense.kernel)
        kernel[[1, 3]] = 0.0
        mha._output_dense.kernel.assign(kernel)
    small = prunemix.shrink(model)
    assert small.get_layer("mha").num_heads == 2
    assert small.get_layer("mha")._query_dense.kernel.shape == (16, 2, 8)
    data = RNG.random((3, 6, 16)).astype("float32")
    np.testing.assert_allclose(small(data), model(data), atol=1e-5)
    small.save(tmp_path / "small.keras")  # plain Keras layers: loads without prunemix
    again = keras.saving.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(again(data), model(data), atol=1e-5)


def test_channel_groups_prunes_whole_heads_in_fit_and_shrink_drops_them():
    model = transformer_block(heads=4)
    pruned = prunemix.prune_model(
        model, prunemix.ConstantSparsity(0.5, 0, frequency=1),
        pruning_policy=[prunemix.Rule("*", pattern=prunemix.ChannelGroups())])
    pruned.compile("adam", "mse")
    data = RNG.random((4, 6, 16)).astype("float32")
    pruned.fit(data, data, epochs=2, batch_size=2, verbose=0)
    mha = pruned.get_layer("mha")
    for dense, axis in ((mha._query_dense, 1), (mha._key_dense, 1), (mha._value_dense, 1),
                        (mha._output_dense, 0)):
        kernel = np.moveaxis(np.asarray(dense.kernel), axis, 0).reshape(4, -1)
        assert (~kernel.any(axis=1)).sum() == 2  # exactly half the heads, every slice
    small = prunemix.shrink(pruned)
    assert small.get_layer("mha").num_heads == 2 and small.get_layer("ffn_in").units == 16
    np.testing.assert_allclose(small(data), pruned(data), atol=1e-5)


def test_subclassed_model_says_shrinking_needs_a_graph():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b = keras.layers.Dense(4), keras.layers.Dense(2)

        def call(self, x):
            return self.b(self.a(x))

    net = Net()
    net(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="subclassed.*has none.*functionally"):
        prunemix.shrink(net)


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_channel_groups_prune_exact_channels_everywhere_and_shrink_keeps_predictions(
        mode, sparsity):
    model = channel_pruned(sparsity)
    model.compile("adam", "mse", **mode)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    # Residual + concat group: 10 channels; hidden: 7 (round half to even).
    expected = {0.5: (5, 4), 0.75: (8, 5)}[sparsity]
    shared = dead_channels(model, "dw", axis=-2)  # tied to the concat's channels
    assert len(shared) == expected[0]
    assert len(dead_channels(model, "h")) == expected[1]
    # Every coupled slice of a pruned channel is exactly zero.
    s_dead = {c for c in shared if c < 6}
    assert dead_channels(model, "c1") >= s_dead and dead_channels(model, "c2") >= s_dead
    assert dead_channels(model, "c2", axis=-2) >= s_dead
    for weight in ("gamma", "beta"):
        assert dead_channels(model, "bn1", weight, 0) >= s_dead
    assert dead_channels(model, "c1", "bias", 0) >= s_dead
    assert dead_channels(model, "dw", "bias", 0) == shared
    counts = dict(zip([p.path for p in model.pruner.pruned_weights],
                      np.asarray(model.pruner.pruned_counts), strict=True))
    assert counts["h/bias"] == expected[1]
    small = prunemix.shrink(model)
    assert isinstance(small, keras.Model) and not isinstance(small, prunemix.PrunedModel)
    np.testing.assert_allclose(small.predict(X, verbose=0), model.predict(X, verbose=0),
                               atol=1e-4)
    h = small.get_layer("h")
    assert h.units == 7 - expected[1]
    assert small.count_params() < model.count_params() - model.pruner.count_params()


def test_round_to_keeps_a_multiple_of_channels_per_group():
    model = channel_pruned(0.5, prunemix.ChannelGroups(round_to=4))
    model.pruner.update_masks(1)
    model.pruner.apply_masks()
    # 10 channels, 5 pruned -> 5 kept -> 8 kept; hidden 7 -> 4 pruned -> 3 kept -> 4 kept.
    assert len(dead_channels(model, "dw", axis=-2)) == 2
    assert len(dead_channels(model, "h")) == 3


def test_importance_is_aggregated_over_the_group():
    model = channel_pruned(0.5, prunemix.ChannelGroups(norm="l1", reduction="sum"))
    h, out = model.get_layer("h"), model.get_layer("out")
    kernel = np.ones(h.kernel.shape, "float32")
    kernel[:, 0] = 0.01  # unit 0: tiny input weights ...
    h.kernel.assign(kernel)
    big = np.ones(out.kernel.shape, "float32") * 0.01
    big[0] = 100.0  # ... but read by the next layer with huge weights
    out.kernel.assign(big)
    model.pruner.update_masks(1)
    assert 0 not in dead_channels(model, "h")


def test_excluded_layer_keeps_its_coupled_channels():
    model = channel_pruned(0.5, policy=[prunemix.Rule("c3", exclude=True)])
    model.pruner.update_masks(1)
    model.pruner.apply_masks()
    # c3 reads the residual group and feeds the concat: both kept whole.
    assert dead_channels(model, "dw", axis=-2) == set()
    assert len(dead_channels(model, "h")) == 4
    assert "c3/kernel" not in [p.path for p in model.pruner.pruned_weights]


def test_channel_groups_errors_are_early_and_named():
    with pytest.raises(ValueError, match="round_to"):
        prunemix.ChannelGroups(round_to=0)
    with pytest.raises(ValueError, match="norm"):
        prunemix.ChannelGroups(norm="l3")
    with pytest.raises(ValueError, match="min_sparsity/max_sparsity"):
        channel_pruned(policy=[prunemix.Rule("h", pattern=prunemix.ChannelGroups(),
                                             max_sparsity=0.3)]).build_pruning()
    with pytest.raises(ValueError, match="share one schedule"):
        channel_pruned(policy=[prunemix.Rule("h", pattern=prunemix.ChannelGroups(),
                                             final_sparsity=0.3)]).build_pruning()


def test_saved_channel_pruning_reloads_and_trains_on(tmp_path, mode):
    model = channel_pruned(0.5)
    model.compile("adam", "mse", **mode)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = prunemix.load_model(path)
    before = {p.key: np.asarray(p.mask) for p in model.pruner.pruned_weights}
    after = {p.key: np.asarray(p.mask) for p in loaded.pruner.pruned_weights}
    assert before.keys() == after.keys()
    assert "bn1/gamma" in [p.path for p in loaded.pruner.pruned_weights]
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    loaded.compile("adam", "mse", **mode)
    loaded.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    assert len(dead_channels(loaded, "dw", axis=-2)) == 5


def test_own_training_loop_with_a_pruner():
    import tensorflow as tf

    model = residual_cnn()
    pruner = prunemix.Pruner(prunemix.ConstantSparsity(0.5, 0, frequency=1),
                             [prunemix.Rule("*", pattern=prunemix.ChannelGroups())])
    pruner.track(model)
    optimizer = keras.optimizers.SGD(0.01)

    @tf.function(jit_compile=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = keras.ops.mean((model(x, training=True) - y) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        pruner.apply()

    for i in range(0, 32, 8):
        step(X[i:i + 8], Y[i:i + 8])
    assert len(dead_channels(model, "h")) == 4
    small = prunemix.shrink(model)
    np.testing.assert_allclose(small(X), model(X), atol=1e-4)


def test_shrink_folds_constants_and_keeps_what_it_cannot_fold(tmp_path):
    x = keras.Input((10,))
    a = keras.layers.Dense(8, activation="sigmoid", name="a")(x)  # sigmoid(b) != 0
    y = keras.layers.Dense(3, name="b")(a)
    img = keras.Input((6, 6, 2))
    c = keras.layers.Conv2D(4, 3, padding="same", activation="sigmoid", name="c")(img)
    z = keras.layers.Conv2D(2, 3, padding="same", name="d")(c)
    model = keras.Model([x, img], [y, z])
    for name, dead in (("a", [1, 4]), ("c", [0, 2])):
        kernel = np.asarray(model.get_layer(name).kernel)
        kernel[..., dead] = 0.0
        model.get_layer(name).kernel.assign(kernel)
        model.get_layer(name).bias.assign(np.full(kernel.shape[-1], 0.3, "float32"))
    small = prunemix.shrink(model)
    assert small.get_layer("a").units == 6  # folded into b's bias
    assert small.get_layer("c").filters == 4  # "same" padding: cannot fold, kept
    data = [RNG.random((4, 10)).astype("float32"), RNG.random((4, 6, 6, 2)).astype("float32")]
    for got, want in zip(small.predict(data, verbose=0), model.predict(data, verbose=0),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    small.save(tmp_path / "small.keras")
    reloaded = keras.saving.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(reloaded.predict(data, verbose=0)[0],
                               small.predict(data, verbose=0)[0], atol=1e-6)


def test_shrunk_model_converts_to_tflite():
    model = channel_pruned(0.5)
    model.pruner.update_masks(1)
    model.pruner.apply_masks()
    small = prunemix.shrink(model)
    flat = prunemix.to_tflite(small)
    interpreter = prunemix.make_interpreter(flat)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], X[:1])
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]), model(X[:1]), atol=1e-4)


def test_shrink_dense_is_shrink_and_warns():
    dense = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="a"),
                              keras.layers.Dense(2, name="b")])
    kernel = np.asarray(dense.layers[0].kernel)
    kernel[:, 1] = 0
    dense.layers[0].kernel.assign(kernel)
    dense.layers[0].bias.assign(np.zeros(4, "float32"))
    with pytest.warns(DeprecationWarning, match="prunemix.shrink"):
        small = prunemix.shrink_dense(dense)
    assert isinstance(small, keras.Sequential) and small.layers[0].units == 3


APPLICATIONS = {
    "MobileNet": lambda: keras.applications.MobileNet(
        input_shape=(32, 32, 3), weights=None, alpha=0.25, classifier_activation=None),
    "MobileNetV2": lambda: keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), weights=None, alpha=0.35, classifier_activation=None),
    "ResNet50": lambda: keras.applications.ResNet50(
        input_shape=(32, 32, 3), weights=None, classifier_activation=None),
    "EfficientNetB0": lambda: keras.applications.EfficientNetB0(
        input_shape=(32, 32, 3), weights=None, classifier_activation=None),
    "DenseNet121": lambda: keras.applications.DenseNet121(
        input_shape=(32, 32, 3), weights=None, classifier_activation=None),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications_shrink_at_half_the_channels(name):
    dense = APPLICATIONS[name]()
    pruned = prunemix.prune_model(
        dense, prunemix.ConstantSparsity(0.5, 0, frequency=1),
        pruning_policy=[prunemix.Rule("*", pattern=prunemix.ChannelGroups())])
    pruned.pruner.update_masks(1)
    pruned.pruner.apply_masks()
    small = prunemix.shrink(pruned)
    x = RNG.random((2, 32, 32, 3)).astype("float32") * 255
    want = pruned.predict(x, verbose=0)
    np.testing.assert_allclose(small.predict(x, verbose=0), want,
                               atol=1e-4 * max(1.0, float(np.abs(want).max())))
    assert small.count_params() < 0.5 * dense.count_params()
    graph = prunemix.channel_graph(dense)
    assert len(graph.groups) > 10


def test_a_model_with_nothing_to_prune_by_channel_says_why():
    x = keras.Input((6,))
    y = keras.layers.Dense(3, name="only")(x)
    with pytest.raises(ValueError, match="no channel group it can prune.*summary"):
        prunemix.PrunedModel(  # a functional model builds its pruner at once
            x, y, pruning_schedule=prunemix.ConstantSparsity(0.5),
            pruning_policy=[prunemix.Rule("*", pattern=prunemix.ChannelGroups())])
