"""keras_hub causal LMs end to end (tiny random configs, no preprocessor)."""

import keras
import numpy as np
import pytest

import prunemix

keras_hub = pytest.importorskip("keras_hub")

RNG = np.random.default_rng(0)
X = {"token_ids": RNG.integers(0, 64, (4, 8)), "padding_mask": np.ones((4, 8), bool)}
Y = RNG.integers(0, 64, (4, 8))
PROMPT = {"token_ids": np.zeros((1, 12), "int32"),
          "padding_mask": np.array([[True] * 3 + [False] * 9])}


def gpt2():
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=16)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def llama():
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=64, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32, tie_word_embeddings=False)
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def paths(model):
    return [p.path for p in model.pruner.pruned_weights]


def test_gpt2_causal_lm_prunes_trains_saves_strips_and_generates(tmp_path, mode):
    lm = gpt2()
    before = [w.copy() for w in lm.get_weights()]
    pruned = prunemix.prune_model(lm, prunemix.ConstantSparsity(0.5, 0, frequency=1))
    # The tied embedding is copied once, with one mask (input and LM head).
    assert len(pruned.weights) - len(pruned.pruner.weights) == len(lm.weights)
    assert paths(pruned).count("token_embedding/embeddings") == 1
    np.testing.assert_allclose(pruned.predict(X, verbose=0), lm.predict(X, verbose=0),
                               atol=1e-6)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), **mode)
    pruned.fit(X, Y, epochs=2, verbose=0)
    for weight, old in zip(lm.get_weights(), before, strict=True):
        np.testing.assert_array_equal(weight, old)  # the original is untouched
    report = prunemix.sparsity_report(pruned)
    assert [r.zeros for r in report] == [round(0.5 * r.size) for r in report]

    pruned.save(tmp_path / "pruned.keras")
    loaded = prunemix.load_model(tmp_path / "pruned.keras")
    for a, b in zip(loaded.pruner.pruned_weights, pruned.pruner.pruned_weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
    loaded.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), **mode)
    loaded.fit(X, Y, epochs=1, verbose=0)
    assert int(loaded.pruner.pruning_step.numpy()) == 3

    stripped = prunemix.strip_pruning(pruned)
    stripped.save(tmp_path / "stripped.keras")
    plain = keras.saving.load_model(tmp_path / "stripped.keras")
    np.testing.assert_allclose(plain.predict(X, verbose=0), pruned.predict(X, verbose=0),
                               atol=1e-5)
    # generate() lives on the task class: copy the pruned weights into one.
    task = prunemix.copy_weights(stripped, gpt2())
    np.testing.assert_allclose(task.predict(X, verbose=0), pruned.predict(X, verbose=0),
                               atol=1e-5)
    out = task.generate(PROMPT, max_length=12, stop_token_ids=None)
    assert out["token_ids"].shape == (1, 12)


def test_llama_untied_lm_head_is_pruned_by_default():
    lm = llama()
    # keras_hub 0.32's LlamaTransformerDecoder.get_config fails (it reads
    # `rope_scaling_factor`), so no copy: prune the task's own layers in place.
    with pytest.warns(UserWarning, match="prune_model"):
        pruned = prunemix.PrunedModel(lm.inputs, lm.outputs,
                                      pruning_schedule=prunemix.ConstantSparsity(0.5, 0, 1))
    assert "token_embedding/reverse_embeddings" in paths(pruned)
    assert "token_embedding/embeddings" in paths(pruned)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(X, Y, epochs=1, verbose=0)
    head = next(p for p in pruned.pruner.pruned_weights if p.path.endswith("reverse_embeddings"))
    assert int((head.weight.numpy() == 0).sum()) == round(0.5 * head.weight.numpy().size)
    # The task shares the pruned layers: it generates with them.
    np.testing.assert_allclose(lm.predict(X, verbose=0), pruned.predict(X, verbose=0),
                               atol=1e-6)
    assert lm.generate(PROMPT, max_length=12, stop_token_ids=None)["token_ids"].shape == (1, 12)


def test_pruned_model_over_a_tied_head_warns_and_points_to_prune_model():
    lm = gpt2()
    with pytest.warns(UserWarning, match="token_embedding.*prune_model"):
        prunemix.PrunedModel(lm.inputs, lm.outputs,
                             pruning_schedule=prunemix.ConstantSparsity(0.5))


def test_copy_weights_names_what_is_missing():
    small = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="a")])
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="b")])
    with pytest.raises(ValueError, match=r"lacks: \['b/kernel', 'b/bias'\]"):
        prunemix.copy_weights(small, other)


def test_pruned_gpt2_backbone_converts_to_tflite():
    backbone = gpt2().backbone
    pruned = prunemix.prune_model(backbone, prunemix.ConstantSparsity(0.5, 0, frequency=1))
    pruned.pruner.update_masks(1)
    pruned.pruner.apply_masks()
    stripped = prunemix.strip_pruning(pruned)
    runner = prunemix.make_interpreter(prunemix.to_tflite(stripped)).get_signature_runner()
    inputs = {"token_ids": X["token_ids"][:1], "padding_mask": X["padding_mask"][:1]}
    details = runner.get_input_details()
    (got,) = runner(**{k: v.astype(details[k]["dtype"]) for k, v in inputs.items()}).values()
    np.testing.assert_allclose(got, stripped.predict(inputs, verbose=0), atol=1e-5)
