import inspect
import pickle

import keras
import numpy as np
import pytest

import prunemix
from tests.layers import GatedDense, Scale, TfmotStyle


def built(layer, shape=(2, 6)):
    layer(np.ones(shape, "float32"))
    return layer


def names(weights):
    return [w.name for w in weights]


def test_mixin_declares_by_attribute_name():
    layer = built(GatedDense(4))
    assert names(layer.get_prunable_weights()) == ["kernel", "gate"]
    assert names(prunemix.prunable_weights_of(layer)) == ["kernel", "gate"]


def test_decorator_keeps_a_real_class():
    layer = built(Scale())
    assert isinstance(layer, Scale) and isinstance(layer, keras.layers.Layer)
    assert names(layer.get_prunable_weights()) == ["w"]

    class Sub(Scale):
        def call(self, x):
            return super().call(x) * 2.0

    sub = built(Sub())
    assert names(sub.get_prunable_weights()) == ["w"]
    np.testing.assert_allclose(sub(np.ones((1, 6)))[0], 2 * (sub.w.numpy() + 1), rtol=1e-6)
    assert inspect.signature(Scale.build).parameters.keys() == {"self", "input_shape"}


def test_decorated_layer_config_save_and_pickle(tmp_path):
    layer = Scale(name="scale")
    restored = Scale.from_config(layer.get_config())
    assert type(restored) is Scale and restored.name == "scale"

    model = keras.Sequential([keras.Input((6,)), Scale(), GatedDense(3)])
    x = np.random.default_rng(0).random((4, 6)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    unpickled = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(unpickled(x), model(x), rtol=1e-6)
    assert names(unpickled.layers[0].get_prunable_weights()) == ["w"]


def test_tfmot_style_layer_is_prunable_as_is():
    assert names(prunemix.prunable_weights_of(built(TfmotStyle()))) == ["kernel"]


@pytest.mark.parametrize(
    "layer,shape,want",
    [
        (keras.layers.Dense(3), (2, 4), ["kernel"]),
        (keras.layers.EinsumDense("ab,bc->ac", output_shape=3), (2, 4), ["kernel"]),
        (keras.layers.Conv1D(2, 3), (1, 8, 2), ["kernel"]),
        (keras.layers.Conv2D(2, 3), (1, 8, 8, 2), ["kernel"]),
        (keras.layers.Conv3D(2, 3), (1, 4, 4, 4, 2), ["kernel"]),
        (keras.layers.Conv2DTranspose(2, 3), (1, 8, 8, 2), ["kernel"]),
        (keras.layers.DepthwiseConv2D(3), (1, 8, 8, 2), ["kernel"]),
        (keras.layers.DepthwiseConv1D(3), (1, 8, 2), ["kernel"]),
        (keras.layers.SeparableConv2D(2, 3), (1, 8, 8, 2),
         ["depthwise_kernel", "pointwise_kernel"]),
        (keras.layers.Embedding(10, 4), None, ["embeddings"]),
        (keras.layers.BatchNormalization(), (2, 4), []),
        (keras.layers.LayerNormalization(), (2, 4), []),
    ],
)
def test_builtin_registry(layer, shape, want):
    if shape is None:
        layer(np.array([[1, 2]]))
    else:
        layer(np.ones(shape, "float32"))
    assert names(prunemix.prunable_weights_of(layer)) == want


@pytest.mark.parametrize("rnn", [keras.layers.SimpleRNN, keras.layers.LSTM, keras.layers.GRU])
def test_recurrent_layers_prune_kernel_and_recurrent_kernel(rnn):
    layer = rnn(3)
    layer(np.ones((2, 5, 4), "float32"))
    found = prunemix.find_prunable_weights(keras.Sequential([layer]))
    assert names(w for _, w in found) == ["kernel", "recurrent_kernel"]


def test_multi_head_attention_prunes_its_projections():
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    x = np.ones((1, 3, 8), "float32")
    mha(x, x)
    model = keras.Sequential([keras.layers.Dense(8)])
    model.mha = mha
    found = [w.path for _, w in prunemix.find_prunable_weights(mha)]
    assert len(found) == 4 and all(p.endswith("kernel") for p in found)


def test_misspelled_name_fails_at_build_naming_layer_and_weight():
    class Bad(prunemix.PrunableMixin, keras.layers.Layer):
        prunable_weights = ("kernal",)

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 2), name="kernel")

        def call(self, x):
            return x @ self.kernel

    with pytest.raises(ValueError, match=r"layer 'bad' \(Bad\).*'kernal'.*\['kernel'\]"):
        Bad(name="bad")(np.ones((1, 3), "float32"))


def test_non_float_weight_is_rejected():
    @prunemix.prunable("table")
    class Lookup(keras.layers.Layer):
        def build(self, input_shape):
            self.table = self.add_weight(shape=(4,), dtype="int32", initializer="zeros")

        def call(self, x):
            return x

    with pytest.raises(ValueError, match="'table' has dtype int32"):
        Lookup()(np.ones((1, 3), "float32"))


def test_attribute_that_is_not_a_weight_is_rejected():
    @prunemix.prunable("units")
    class NotWeight(keras.layers.Layer):
        units = 3

        def build(self, input_shape):
            self.k = self.add_weight(shape=(1,))

        def call(self, x):
            return x

    with pytest.raises(ValueError, match="'units', but `units` is a int, not a weight"):
        NotWeight()(np.ones((1, 3), "float32"))


def test_decorator_errors_are_raised_at_decoration():
    with pytest.raises(TypeError, match="not|subclasses of `keras.layers.Layer`"):
        prunemix.prunable("kernel")(object)
    with pytest.raises(TypeError, match="subclasses of `keras.layers.Layer`"):
        prunemix.prunable("kernel")(lambda x: x)
    with pytest.raises(TypeError, match="needs the names"):
        prunemix.prunable(keras.layers.Layer)
    with pytest.raises(TypeError, match="at least one"):
        prunemix.prunable()
    with pytest.raises(ValueError, match="repeat"):
        prunemix.prunable("k", "k")
    with pytest.raises(TypeError, match="non-empty strings"):
        prunemix.prunable("")


def test_decorating_twice_is_an_error():
    with pytest.raises(ValueError, match="decorate it once"):
        @prunemix.prunable("w")
        @prunemix.prunable("w")
        class Twice(keras.layers.Layer):
            pass
    with pytest.raises(ValueError, match="already declares"):
        prunemix.prunable("kernel")(GatedDense)
    with pytest.raises(ValueError, match="get_prunable_weights"):
        prunemix.prunable("kernel")(TfmotStyle)


# -- classes you do not own, and ConvLSTM ----------------------------------------------


class ThirdParty(keras.layers.Layer):
    """A layer from "another library": no declaration of its own."""

    def build(self, input_shape):
        self.proj = self.add_weight(shape=(input_shape[-1], 8), name="proj")
        self.scale = self.add_weight(shape=(8,), initializer="ones", name="scale")

    def call(self, x):
        return (x @ self.proj) * self.scale


@pytest.fixture
def registered():
    import importlib

    declarations = importlib.import_module("prunemix.prunable")  # the module, not the decorator
    before = list(declarations._REGISTERED)
    yield
    declarations._REGISTERED[:] = before


def test_register_prunable_declares_weights_of_a_class_you_do_not_own(registered, mode):
    assert prunemix.register_prunable(ThirdParty, "proj", pattern=prunemix.NMSparsity(2, 4)) \
        is ThirdParty
    inputs = keras.Input((12,))
    model = prunemix.PrunedModel(inputs, ThirdParty(name="tp")(inputs),
                                 pruning_schedule=prunemix.ConstantSparsity(0.5, frequency=1))
    (pruned,) = model.pruner.pruned_weights
    assert pruned.path == "tp/proj" and pruned.pattern == prunemix.NMSparsity(2, 4, axis=0)
    model.compile("adam", "mse", **mode)
    model.fit(np.ones((8, 12)), np.ones((8, 8)), verbose=0)
    assert (~pruned.mask.numpy()).sum() == 48
    assert np.count_nonzero(model.layers[-1].scale.numpy() == 0) == 0  # undeclared: untouched


def test_register_prunable_errors(registered):
    with pytest.raises(TypeError, match="Layer` subclass"):
        prunemix.register_prunable(object, "x")
    with pytest.raises(TypeError, match="at least one weight name"):
        prunemix.register_prunable(ThirdParty)
    with pytest.raises(ValueError, match="own `get_prunable_weights"):
        prunemix.register_prunable(TfmotStyle, "kernel")
    prunemix.register_prunable(ThirdParty, "missing")
    layer = ThirdParty(name="tp")
    layer(np.ones((1, 4), "float32"))
    with pytest.raises(ValueError, match="layer 'tp'.*'missing'"):
        prunemix.prunable_weights_of(layer)


def test_conv_lstm_kernels_are_prunable(mode):
    inputs = keras.Input((3, 6, 6, 2))
    outputs = keras.layers.ConvLSTM2D(4, 3, name="convlstm")(inputs)
    model = prunemix.PrunedModel(inputs, outputs,
                                 pruning_schedule=prunemix.ConstantSparsity(0.5, frequency=1))
    assert [p.path for p in model.pruner.pruned_weights] == [
        "convlstm/kernel", "convlstm/recurrent_kernel"]
    model.compile("adam", "mse", **mode)
    model.fit(np.ones((4, 3, 6, 6, 2)), np.ones((4, 4, 4, 4)), verbose=0)
    for p in model.pruner.pruned_weights:
        assert (p.weight.numpy() == 0).sum() >= p.mask.numpy().size // 2


@pytest.mark.parametrize("tied", [True, False])
def test_reversible_embedding_prunes_an_untied_lm_head_too(tied):
    tokens = keras.Input((5,), dtype="int32")
    embedding = keras.layers.ReversibleEmbedding(50, 8, tie_weights=tied, name="emb")
    logits = embedding(embedding(tokens), reverse=True)  # keras_hub's LM head
    model = prunemix.PrunedModel(tokens, logits,
                                 pruning_schedule=prunemix.ConstantSparsity(0.5, frequency=1))
    expected = ["emb/embeddings"] + ([] if tied else ["emb/reverse_embeddings"])
    assert [p.path for p in model.pruner.pruned_weights] == expected
    model.pruner.update_masks(1)
    model.pruner.apply_masks()
    for p in model.pruner.pruned_weights:
        assert (p.weight.numpy() == 0).sum() == 200  # round(0.5 * 400)
