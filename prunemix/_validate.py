"""Argument checks shared by the public functions: one wording ("Received:")."""

from __future__ import annotations

import os

import keras


def keras_model(model, where: str) -> None:
    """Raises `TypeError` unless `model` is a `keras.Model`; a path gets a hint."""
    if isinstance(model, keras.Model):
        return
    hint = ""
    if isinstance(model, str | os.PathLike):
        hint = " A path: load the model first, with `prunemix.load_model(path)`."
    elif isinstance(model, keras.layers.Layer):
        hint = " A layer: build a model around it (`keras.Sequential([layer])`)."
    raise TypeError(f"{where} takes a keras.Model. Received: {model!r}.{hint}")
