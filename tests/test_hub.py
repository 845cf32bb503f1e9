"""keras_hub tasks stay their own class when pruned (tiny random configs)."""

import keras
import numpy as np
import pytest

import prunemix

keras_hub = pytest.importorskip("keras_hub")

from tests.hub_models import MODELS, PROMPT, TOKENS, gpt2, llama  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
Y = np.random.default_rng(1).integers(0, 64, (4, 8))


def channels_masked(model):
    """A `prune_model` copy with `ChannelGroups` masks at 50 %, applied."""
    pruned = prunemix.prune_model(
        model, prunemix.ConstantSparsity(0.5, 0, frequency=1),
        pruning_policy=[prunemix.Rule("*", pattern=prunemix.ChannelGroups())])
    pruned.pruner.update_masks(step=1)
    pruned.pruner.apply_masks()
    return pruned


def paths(model):
    return [p.path for p in model.pruner.pruned_weights]


def assert_half_zero(model):
    report = prunemix.sparsity_report(model)
    assert [r.zeros for r in report] == [round(0.5 * r.size) for r in report]


def zeros_of(model):
    return [int((w == 0).sum()) for w in model.get_weights()]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pruned_task_stays_its_class_through_fit_save_strip_and_preset(name, tmp_path):
    make, x, y, generates = MODELS[name]
    task = make()
    before = [w.copy() for w in task.get_weights()]
    pruned = prunemix.prune_model(task, prunemix.ConstantSparsity(0.5, 0, frequency=1))
    assert isinstance(pruned, type(task)) and isinstance(pruned, prunemix.PrunedModel)
    assert len(pruned.weights) - len(pruned.pruner.weights) == len(task.weights)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), task.predict(x, verbose=0),
                               atol=1e-6)
    pruned.compile("adam", LOSS)
    pruned.fit(x, y, epochs=1, verbose=0)
    assert_half_zero(pruned)
    for weight, old in zip(task.get_weights(), before, strict=True):
        np.testing.assert_array_equal(weight, old)  # the original is untouched
    if generates:
        out = pruned.generate(PROMPT, max_length=12, stop_token_ids=None)
        assert out["token_ids"].shape == (1, 12)

    # .keras mid-pruning: same class, masks, step and predictions; fit goes on.
    pruned.save(tmp_path / "pruned.keras")
    loaded = prunemix.load_model(tmp_path / "pruned.keras")
    assert type(loaded) is type(pruned)
    for a, b in zip(loaded.pruner.pruned_weights, pruned.pruner.pruned_weights, strict=True):
        assert a.key == b.key
        np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               atol=1e-6)
    if name in ("gpt2", "llama"):  # fit goes on from the file
        loaded.compile("adam", LOSS)
        loaded.fit(x, y, epochs=1, verbose=0)
        assert int(loaded.pruner.pruning_step.numpy()) == 2
        assert_half_zero(loaded)

    # Stripped: a plain instance of the task's class; its preset loads with keras_hub alone.
    stripped = prunemix.strip_pruning(pruned)
    assert type(stripped) is type(task)
    assert not any("mask" in v.path or "pruning_step" in v.path for v in stripped.weights)
    stripped.save_to_preset(str(tmp_path / "preset"))
    reloaded = type(task).from_preset(str(tmp_path / "preset"))
    assert type(reloaded) is type(task)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               atol=1e-5)
    assert zeros_of(reloaded) == zeros_of(stripped)


def test_gpt2_ties_its_head_and_prunes_in_every_mode(mode):
    pruned = prunemix.prune_model(gpt2(), prunemix.ConstantSparsity(0.5, 0, frequency=1))
    # The tied embedding is one variable with one mask (input and LM head).
    assert paths(pruned).count("token_embedding/embeddings") == 1
    pruned.compile("adam", LOSS, **mode)
    pruned.fit(TOKENS, Y, epochs=2, verbose=0)
    assert_half_zero(pruned)


def test_keras_load_model_works_once_the_class_exists_and_prunemix_recreates_it(tmp_path):
    from keras.src.saving import object_registration

    from prunemix import model as model_module

    pruned = prunemix.prune_model(gpt2(), prunemix.ConstantSparsity(0.5, 0, frequency=1))
    pruned.save(tmp_path / "p.keras")
    assert type(keras.saving.load_model(tmp_path / "p.keras")) is type(pruned)
    # As in a fresh process: the pruned class is made again from the file's name for it.
    name = keras.saving.get_registered_name(type(pruned))
    assert name == "prunemix>Pruned:keras_hub>GPT2CausalLM"
    del object_registration.GLOBAL_CUSTOM_OBJECTS[name]
    del model_module._PRUNED_CLASSES[keras_hub.models.GPT2CausalLM]
    loaded = prunemix.load_model(tmp_path / "p.keras")
    assert isinstance(loaded, keras_hub.models.GPT2CausalLM)
    assert paths(loaded) == paths(pruned)


class PrunedGPT2(prunemix.PrunedModel, keras_hub.models.GPT2CausalLM):
    """The subclassing path: the task's own arguments plus `pruning_schedule=`."""

    def first_tokens(self, n):
        return n


def test_subclassing_a_task_with_pruned_model_prunes_fits_and_generates(tmp_path):
    backbone = gpt2().backbone
    lm = PrunedGPT2(backbone=backbone, preprocessor=None,
                    pruning_schedule=prunemix.ConstantSparsity(0.5, 0, frequency=1))
    assert isinstance(lm, prunemix.PrunedModel)
    assert isinstance(lm, keras_hub.models.GPT2CausalLM) and lm.first_tokens(3) == 3
    lm.compile("adam", LOSS)
    lm.fit(TOKENS, Y, epochs=2, verbose=0)
    assert_half_zero(lm)
    assert lm.generate(PROMPT, max_length=12, stop_token_ids=None)["token_ids"].shape == (1, 12)
    scores = lm.score(TOKENS["token_ids"], TOKENS["padding_mask"], scoring_mode="loss",
                      target_ids=Y)
    assert scores.shape == (4, 8)
    # PrunedModel's own class hierarchy is untouched: other models still work.
    inputs = keras.Input((4,))
    assert type(prunemix.PrunedModel(inputs, keras.layers.Dense(2)(inputs),
                                     pruning_schedule=prunemix.ConstantSparsity(0.5))
                ).__name__ == "FunctionalPrunedModel"

    lm.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras",
                                     custom_objects={"PrunedGPT2": PrunedGPT2})
    assert type(loaded) is PrunedGPT2
    assert int(loaded.pruner.pruning_step.numpy()) == 2
    np.testing.assert_allclose(loaded.predict(TOKENS, verbose=0), lm.predict(TOKENS, verbose=0),
                               atol=1e-6)
    stripped = prunemix.strip_pruning(lm)
    assert type(stripped) is PrunedGPT2 and stripped.pruner is None
    np.testing.assert_allclose(stripped.predict(TOKENS, verbose=0),
                               lm.predict(TOKENS, verbose=0), atol=1e-6)
    stripped.compile("adam", LOSS)
    stripped.fit(TOKENS, Y, epochs=1, verbose=0)  # trains without pruning, no error


@keras.saving.register_keras_serializable(package="prunemix_tests")
class Scorer(keras.Model):
    """A user's own subclassed model with its own config and other methods."""

    def __init__(self, width=8, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.hidden = keras.layers.Dense(width, activation="relu")
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))

    def score(self, x):
        return keras.ops.argmax(self(x), axis=-1)

    def get_config(self):
        return {**super().get_config(), "width": self.width}


def test_prune_model_keeps_a_subclassed_models_class_and_methods(tmp_path):
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32")
    y = np.arange(16) % 3
    model = Scorer(width=8)
    model(x[:1])
    pruned = prunemix.prune_model(model, prunemix.ConstantSparsity(0.5, 0, frequency=1))
    assert isinstance(pruned, Scorer) and pruned.width == 8
    np.testing.assert_allclose(pruned(x), model(x), atol=1e-6)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=2, verbose=0)
    assert_half_zero(pruned)
    assert pruned.score(x).shape == (16,)
    pruned.save(tmp_path / "s.keras")
    loaded = prunemix.load_model(tmp_path / "s.keras")
    assert isinstance(loaded, Scorer) and int(loaded.pruner.pruning_step.numpy()) == 2
    np.testing.assert_allclose(loaded(x), pruned(x), atol=1e-6)
    stripped = prunemix.strip_pruning(pruned)
    assert type(stripped) is Scorer
    np.testing.assert_allclose(stripped(x), pruned(x), atol=1e-6)


def test_in_place_pruning_of_a_tied_task_strips():
    lm = gpt2()
    with pytest.warns(UserWarning, match="token_embedding.*prune_model"):
        pruned = prunemix.PrunedModel(lm.inputs, lm.outputs,
                                      pruning_schedule=prunemix.ConstantSparsity(0.5, 0, 1))
    pruned.compile("adam", LOSS)
    pruned.fit(TOKENS, Y, epochs=1, verbose=0)
    stripped = prunemix.strip_pruning(pruned)
    assert len(stripped.weights) == len(lm.weights)
    np.testing.assert_allclose(stripped.predict(TOKENS, verbose=0),
                               pruned.predict(TOKENS, verbose=0), atol=1e-6)
    # The task shares the pruned layers: it generates with them.
    assert lm.generate(PROMPT, max_length=12, stop_token_ids=None)["token_ids"].shape == (1, 12)


def test_llama_untied_lm_head_is_pruned_by_default():
    pruned = prunemix.prune_model(llama(), prunemix.ConstantSparsity(0.5, 0, 1))
    assert "token_embedding/reverse_embeddings" in paths(pruned)
    assert "token_embedding/embeddings" in paths(pruned)


def test_copy_weights_names_what_is_missing():
    small = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="a")])
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="b")])
    with pytest.raises(ValueError, match=r"lacks: \['b/kernel', 'b/bias'\]"):
        prunemix.copy_weights(small, other)


def test_pruned_gpt2_backbone_converts_to_tflite():
    backbone = gpt2().backbone
    pruned = prunemix.prune_model(backbone, prunemix.ConstantSparsity(0.5, 0, frequency=1))
    assert isinstance(pruned, keras_hub.models.GPT2Backbone)
    pruned.pruner.update_masks(1)
    pruned.pruner.apply_masks()
    stripped = prunemix.strip_pruning(pruned)
    assert type(stripped) is keras_hub.models.GPT2Backbone
    runner = prunemix.make_interpreter(prunemix.to_tflite(stripped)).get_signature_runner()
    inputs = {"token_ids": TOKENS["token_ids"][:1], "padding_mask": TOKENS["padding_mask"][:1]}
    details = runner.get_input_details()
    (got,) = runner(**{k: v.astype(details[k]["dtype"]) for k, v in inputs.items()}).values()
    np.testing.assert_allclose(got, stripped.predict(inputs, verbose=0), atol=1e-5)


def test_pruned_class_refuses_what_is_not_a_model_class():
    with pytest.raises(TypeError, match="keras.Model subclass. Received: <class 'int'>"):
        prunemix.pruned_class(int)
    with pytest.raises(TypeError, match="already prunes"):
        prunemix.pruned_class(prunemix.PrunedModel)


def test_a_task_with_a_preprocessor_keeps_its_vocabulary(tmp_path):
    # The preprocessor's vocabulary lives in its assets, not in its config.
    tokens = ["<|endoftext|>", "Ġ", "a", "i", "r", "p", "l", "n", "e", "t", "o", "ai", "air"]
    vocabulary = {token: i for i, token in enumerate(tokens)}
    merges = ["a i", "ai r"]
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=8)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(tokens), num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
    pruned = prunemix.prune_model(lm, prunemix.ConstantSparsity(0.5, 0, frequency=1))
    assert pruned.preprocessor.tokenizer.vocabulary_size() == len(tokens)
    pruned.fit(["airplane at airport", "airport at airplane"], epochs=1, verbose=0)
    assert isinstance(pruned.generate("airplane at", max_length=8), str)
    # One-shot from text: the task's own preprocessor makes the token ids.
    report = prunemix.prune_oneshot(pruned, ["airplane at airport", "air at airport"],
                                    method="wanda")
    assert [r.zeros for r in report] == [round(0.5 * r.size) for r in report] and report
    pruned.save(tmp_path / "lm.keras")
    loaded = prunemix.load_model(tmp_path / "lm.keras")
    assert loaded.preprocessor.tokenizer.vocabulary_size() == len(tokens)
    stripped = prunemix.strip_pruning(pruned)
    assert stripped.preprocessor.tokenizer.vocabulary_size() == len(tokens)
    stripped.save_to_preset(str(tmp_path / "preset"))
    reloaded = keras_hub.models.GPT2CausalLM.from_preset(str(tmp_path / "preset"))
    assert reloaded.generate("airplane at", max_length=8) == \
        stripped.generate("airplane at", max_length=8)


@keras.saving.register_keras_serializable(package="prunemix_tests")
class PrunedScorer(prunemix.PrunedModel, Scorer):
    """The subclassing path on a user's own subclassed model."""


def test_subclassing_a_users_own_model_with_pruned_model(tmp_path):
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32")
    model = PrunedScorer(width=8, pruning_schedule=prunemix.ConstantSparsity(0.5, 0, 1))
    assert isinstance(model, prunemix.PrunedModel) and isinstance(model, Scorer)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.arange(16) % 3, epochs=2, verbose=0)
    assert_half_zero(model)
    assert model.score(x).shape == (16,)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded) is PrunedScorer and loaded.width == 8
    assert int(loaded.pruner.pruning_step.numpy()) == 2
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


def test_every_keras_hub_layer_named_by_the_handlers_exists():
    import importlib

    for qualified in prunemix.structured.handlers._BY_NAME:
        module, name = qualified.rsplit(".", 1)
        layer_class = getattr(importlib.import_module(module), name)
        handler, _ = prunemix.structured.handlers.handler_for(
            layer_class.__new__(layer_class))  # found by name, without building one
        assert handler is prunemix.structured.handlers._BY_NAME[qualified]


# Mistral and Qwen use the Llama handler's layout (gate, up, down): named above.
@pytest.mark.parametrize("name", ["gpt2", "llama", "bert", "gemma"])
def test_shrink_removes_feed_forward_units_and_keeps_the_task_class(name, tmp_path):
    make, x = MODELS[name][:2]
    task = make()
    # GPT-2's and BERT's heads are kept (excluded): their config cannot say
    # fewer heads of the same width, and the task must stay its class.
    pruned = prunemix.prune_model(
        task, prunemix.ConstantSparsity(0.5, 0, frequency=1),
        pruning_policy=[prunemix.Rule("*attention*", exclude=True, required=False),
                        prunemix.Rule("*", pattern=prunemix.ChannelGroups())])
    pruned.pruner.update_masks(step=1)
    pruned.pruner.apply_masks()
    for layer in pruned.backbone.transformer_layers:  # exactly half the units, every layer
        handler, _ = prunemix.structured.handlers.handler_for(layer)
        up = np.asarray(getattr(layer, handler.up).kernel)
        down = np.asarray(getattr(layer, handler.down).kernel)
        units = up.shape[-1]  # 32 (Gemma: 16, half its intermediate_dim)
        assert (~up.any(axis=0)).sum() == units // 2 == (~down.any(axis=1)).sum()
    small = prunemix.shrink(pruned)
    assert type(small) is type(task) and type(small.backbone) is type(task.backbone)
    assert small.backbone.intermediate_dim == 16
    assert small.count_params() < task.count_params()
    want = prunemix.strip_pruning(pruned).predict(x, verbose=0)
    np.testing.assert_allclose(small.predict(x, verbose=0), want, atol=1e-5)
    small.save_to_preset(str(tmp_path / "preset"))  # keras_hub alone reloads it
    reloaded = type(task).from_preset(str(tmp_path / "preset"))
    assert reloaded.backbone.intermediate_dim == 16
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), want, atol=1e-5)
    if name == "gpt2":
        small.compile(sampler="greedy")
        pruned.compile(sampler="greedy")
        np.testing.assert_array_equal(
            small.generate(PROMPT, max_length=8, stop_token_ids=None)["token_ids"],
            pruned.generate(PROMPT, max_length=8, stop_token_ids=None)["token_ids"])


def test_gemma_heads_shrink_to_the_same_task_class_through_its_config(tmp_path):
    task = MODELS["gemma"][0]()  # 2 query heads of 8, 1 key/value head
    pruned = channels_masked(task)
    for layer in pruned.backbone.transformer_layers:  # one query head of two, every layer
        query = np.asarray(layer.attention.query_dense.kernel)  # (heads, width, head_dim)
        output = np.asarray(layer.attention.output_dense.kernel)  # (heads, head_dim, width)
        assert [bool(query[h].any()) for h in range(2)].count(False) == 1
        assert [bool(output[h].any()) for h in range(2)].count(False) == 1
        assert np.asarray(layer.attention.key_dense.kernel).all()  # the shared head stays
    small = prunemix.shrink(pruned)
    assert type(small) is type(task)
    assert (small.backbone.num_query_heads, small.backbone.num_key_value_heads) == (1, 1)
    assert small.backbone.head_dim == 8 and small.backbone.intermediate_dim == 16
    want = prunemix.strip_pruning(pruned).predict(TOKENS, verbose=0)
    np.testing.assert_allclose(small.predict(TOKENS, verbose=0), want, atol=1e-5)
    small.save_to_preset(str(tmp_path / "preset"))
    reloaded = type(task).from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(reloaded.predict(TOKENS, verbose=0), want, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_keras_hub_heads_are_removed_from_a_backbone_rebuilt_from_its_parts(name, tmp_path):
    make, x = MODELS[name][:2]
    backbone = make().backbone  # 2 layers, 2 heads of 8, 32 feed-forward units
    pruned = channels_masked(backbone)
    for layer in pruned.transformer_layers:  # one head of two: q, k, v slices and output rows
        attention = layer._self_attention_layer
        for dense in (attention._query_dense, attention._key_dense, attention._value_dense):
            kernel = np.asarray(dense.kernel)  # (width, heads, head_dim)
            assert [bool(kernel[:, h].any()) for h in range(2)].count(False) == 1
        output = np.asarray(attention._output_dense.kernel)
        assert [bool(output[h].any()) for h in range(2)].count(False) == 1
    with pytest.warns(UserWarning, match=r"hidden_dim // num_heads \(2 -> 1 heads\)"):
        small = prunemix.shrink(pruned)
    assert not isinstance(small, keras_hub.models.Backbone)
    attention = [lay for lay in small.layers if isinstance(lay, keras.layers.MultiHeadAttention)]
    assert [(a.num_heads, a.key_dim) for a in attention] == [(1, 8), (1, 8)]
    units = [lay.units for lay in small.layers if "feedforward" in lay.name and
             isinstance(lay, keras.layers.Dense)]
    assert units == [16, 16, 16, 16]  # up and down of each layer (down: the width, 16)
    assert small.count_params() < backbone.count_params()

    def out(model, inputs):
        y = model.predict(inputs, verbose=0)
        return y["sequence_output"] if isinstance(y, dict) else y

    padded = {**x, "padding_mask": np.tril(np.ones((4, 8), bool))[:, ::-1]}  # some padding
    for inputs in (x, padded):
        want = out(prunemix.strip_pruning(pruned), inputs)
        np.testing.assert_allclose(out(small, inputs), want, rtol=1e-5, atol=1e-5)
    small.save(tmp_path / "small.keras")  # keras_hub alone reloads it
    reloaded = keras.saving.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(out(reloaded, padded), want, rtol=1e-5, atol=1e-5)
    if name == "gpt2":  # and LiteRT runs it
        runner = prunemix.make_interpreter(prunemix.to_tflite(small)).get_signature_runner()
        details = runner.get_input_details()
        one = {k: v[1:2].astype(details[k]["dtype"]) for k, v in padded.items()}
        (got,) = runner(**one).values()
        np.testing.assert_allclose(got, want[1:2], rtol=1e-5, atol=1e-5)


def test_a_task_keeps_heads_its_config_cannot_express_and_stays_its_class():
    task = gpt2()
    pruned = channels_masked(task)
    with pytest.warns(UserWarning, match=r"keep their zeroed heads \(as zeros\): keras_hub "
                                         r"derives .*shrink its backbone"):
        small = prunemix.shrink(pruned)
    assert type(small) is type(task) and small.backbone.num_heads == 2
    assert small.backbone.intermediate_dim == 16  # the feed-forward units go
    want = prunemix.strip_pruning(pruned).predict(TOKENS, verbose=0)
    np.testing.assert_allclose(small.predict(TOKENS, verbose=0), want, rtol=1e-5, atol=1e-5)


def test_grouped_query_heads_go_at_one_position_of_every_group():
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=64, num_layers=1, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=32, head_dim=4)
    pruned = channels_masked(backbone)
    attention = pruned.transformer_layers[0].attention
    query = np.asarray(attention.query_dense.kernel)  # (4 query heads, width, head_dim)
    gone = [h for h in range(4) if not query[h].any()]
    # Query head k * 2 + g reads key/value head k: one position g goes in both groups.
    assert len(gone) == 2 and gone[1] == gone[0] + 2
    assert np.asarray(attention.key_dense.kernel).all()
    small = prunemix.shrink(pruned)
    assert type(small) is keras_hub.models.GemmaBackbone
    assert (small.num_query_heads, small.num_key_value_heads) == (2, 2)
    want = prunemix.strip_pruning(pruned).predict(TOKENS, verbose=0)
    np.testing.assert_allclose(small.predict(TOKENS, verbose=0), want, rtol=1e-5, atol=1e-5)


def test_llama_heads_prune_in_groups_and_shrink_keeps_them_with_a_warning():
    task = MODELS["llama"][0]()  # 2 query heads, 1 key/value head
    pruned = channels_masked(task)
    for layer in pruned.backbone.transformer_layers:
        attention = layer._self_attention_layer
        query = np.asarray(attention._query_dense.kernel)  # (width, heads, head_dim)
        output = np.asarray(attention._output_dense.kernel)  # (heads, head_dim, width)
        gone = [h for h in range(2) if not query[:, h].any()]
        assert len(gone) == 1 and not output[gone[0]].any()
    with pytest.warns(UserWarning, match=r"\['transformer_layer_0', 'transformer_layer_1'\] keep "
                                         r"their zeroed heads .*rotary embeddings"):
        small = prunemix.shrink(pruned)
    assert type(small) is type(task) and small.backbone.num_query_heads == 2
    assert small.backbone.intermediate_dim == 16
    want = prunemix.strip_pruning(pruned).predict(TOKENS, verbose=0)
    np.testing.assert_allclose(small.predict(TOKENS, verbose=0), want, rtol=1e-5, atol=1e-5)


def test_encoder_decoder_heads_with_cross_attention_are_rebuilt_exactly(tmp_path):
    encoder_in = keras.Input((6, 16), name="encoder_in")
    decoder_in = keras.Input((5, 16), name="decoder_in")
    padding = keras.Input((6,), dtype="int32", name="padding")
    encoded = keras_hub.layers.TransformerEncoder(32, 4, name="encoder")(
        encoder_in, padding_mask=padding)
    decoded = keras_hub.layers.TransformerDecoder(32, 4, name="decoder")(
        decoder_in, encoded, encoder_padding_mask=padding)
    model = keras.Model([encoder_in, decoder_in, padding], keras.layers.Dense(3)(decoded))
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(2, 6, 16)).astype("float32"),
         rng.normal(size=(2, 5, 16)).astype("float32"), np.array([[1] * 6, [1] * 4 + [0] * 2])]
    pruned = channels_masked(model)
    with pytest.warns(UserWarning, match=r"layers \['encoder', 'decoder'\] are rebuilt from "
                                         r"their parts: .*\(4 -> 2 heads\)"):
        small = prunemix.shrink(pruned)
    heads = {lay.name: lay.num_heads for lay in small.layers
             if isinstance(lay, keras.layers.MultiHeadAttention)}
    assert heads == {"encoder_self_attention_layer": 2, "decoder_self_attention": 2,
                     "decoder_cross_attention": 2}
    want = prunemix.strip_pruning(pruned).predict(x, verbose=0)
    np.testing.assert_allclose(small.predict(x, verbose=0), want, rtol=1e-5, atol=1e-5)
    small.save(tmp_path / "small.keras")
    reloaded = keras.saving.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), want, rtol=1e-5, atol=1e-5)
