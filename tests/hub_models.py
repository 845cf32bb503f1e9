"""Tiny keras_hub models (random weights, nothing downloaded) and their data."""

import keras_hub
import numpy as np

RNG = np.random.default_rng(0)
VOCAB = 64
TOKENS = {"token_ids": RNG.integers(0, VOCAB, (4, 8)), "padding_mask": np.ones((4, 8), bool)}
PROMPT = {"token_ids": np.zeros((1, 12), "int32"),
          "padding_mask": np.array([[True] * 3 + [False] * 9])}


def _lm(task, backbone):
    return task(backbone=backbone, preprocessor=None)


def gpt2():
    return _lm(keras_hub.models.GPT2CausalLM, keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=16))


def llama():
    return _lm(keras_hub.models.LlamaCausalLM, keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32, tie_word_embeddings=False))


def gemma():
    return _lm(keras_hub.models.GemmaCausalLM, keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32, head_dim=8))


def mistral():
    return _lm(keras_hub.models.MistralCausalLM, keras_hub.models.MistralBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32, sliding_window=8))


def qwen():
    return _lm(keras_hub.models.QwenCausalLM, keras_hub.models.QwenBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32))


def bert():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=16)
    return keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=3,
                                               preprocessor=None)


def vit():
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
        mlp_dim=32)
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=3,
                                               preprocessor=None)


# name -> (factory, inputs, targets, whether it generates)
MODELS = {
    "gpt2": (gpt2, TOKENS, RNG.integers(0, VOCAB, (4, 8)), True),
    "llama": (llama, TOKENS, RNG.integers(0, VOCAB, (4, 8)), True),
    "gemma": (gemma, TOKENS, RNG.integers(0, VOCAB, (4, 8)), True),
    "mistral": (mistral, TOKENS, RNG.integers(0, VOCAB, (4, 8)), True),
    "qwen": (qwen, TOKENS, RNG.integers(0, VOCAB, (4, 8)), True),
    "bert": (bert, {**TOKENS, "segment_ids": np.zeros((4, 8), "int32")},
             RNG.integers(0, 3, (4,)), False),
    "vit": (vit, RNG.normal(size=(4, 16, 16, 3)).astype("float32"),
            RNG.integers(0, 3, (4,)), False),
}
