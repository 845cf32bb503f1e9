"""A small byte-level causal LM on CPython's documentation text (shared by
the keras_hub examples): the data ships with every Python, nothing is
downloaded, and no tokenizer file is needed (tokens are bytes)."""

from __future__ import annotations

import math

import keras
import keras_hub
import numpy as np

SEQUENCE = 64


def byte_windows(count: int, seed: int, validation: bool = False) -> dict:
    """`count` windows of `SEQUENCE + 1` bytes of pydoc's topics text: the
    first 90 % of the text for training, the rest for validation."""
    from pydoc_data.topics import topics

    text = np.frombuffer("\n".join(topics[k] for k in sorted(topics)).encode(), np.uint8)
    split = int(0.9 * len(text))
    text = text[split:] if validation else text[:split]
    starts = np.random.default_rng(seed).integers(0, len(text) - SEQUENCE - 1, count)
    windows = np.stack([text[s:s + SEQUENCE + 1] for s in starts]).astype("int32")
    x = {"token_ids": windows[:, :-1], "padding_mask": np.ones((count, SEQUENCE), bool)}
    return x, windows[:, 1:]


def dense_lm(width: int, layers: int) -> keras_hub.models.GPT2CausalLM:
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=256, num_layers=layers, num_heads=4, hidden_dim=width,
        intermediate_dim=4 * width, max_sequence_length=SEQUENCE, dropout=0.0)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def compile_lm(lm, learning_rate: float) -> None:
    lm.compile(keras.optimizers.Adam(learning_rate),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def perplexity(lm, data) -> float:
    x, y = data
    return math.exp(lm.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)["loss"])
