"""Argument checks shared by the public functions, with one wording:
"`name` must be ... Received: name=value", prefixed by where it was given.

>>> integer(0, "frequency", where="ConstantSparsity")
Traceback (most recent call last):
...
ValueError: ConstantSparsity: `frequency` must be a positive int. Received: frequency=0
>>> fraction(50, "sparsity")
Traceback (most recent call last):
...
ValueError: `sparsity` must be a fraction in [0, 1), not a percentage. Received: sparsity=50
"""

from __future__ import annotations

import math
import numbers
import os

import keras


def say(where: str, name: str, must: str, value) -> str:
    """The one wording of an argument error."""
    return f"{where + ': ' if where else ''}`{name}` must be {must}. Received: {name}={value!r}"


def integer(value, name: str, *, minimum: int = 1, where: str = "",
            error: type = ValueError) -> int:
    """`value` as an int if it is one (not a bool) and `>= minimum`; else
    `error` (not an int) or `ValueError` (too small)."""
    must = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(say(where, name, must, value))
    if value < minimum:
        raise ValueError(say(where, name, must, value))
    return int(value)


def fraction(value, name: str, *, where: str = "", closed: bool = False,
             error: type = ValueError) -> float:
    """`value` as a float in [0, 1) (`closed`: [0, 1]); `error` if it is not a
    real number, `ValueError` if it is out of range (a percentage, NaN)."""
    must = f"a fraction in [0, 1{']' if closed else ')'}, not a percentage"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(say(where, name, must, value))
    number = float(value)
    if math.isnan(number) or not (0.0 <= number <= 1.0 if closed else 0.0 <= number < 1.0):
        raise ValueError(say(where, name, must, value))
    return number


def one_of(value, name: str, options: tuple, *, where: str = ""):
    """`value` if it is one of `options`, else `ValueError`."""
    if value not in options:
        raise ValueError(say(where, name, "one of " + ", ".join(map(repr, options)), value))
    return value


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
