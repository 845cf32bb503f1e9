"""`make_interpreter`: a LiteRT interpreter, from `ai_edge_litert` or TensorFlow."""

from __future__ import annotations

import os
import pathlib
from typing import Any

from prunemix.litert.flatbuffer import DENSE, tflite_report

__all__ = ["make_interpreter"]


def make_interpreter(model: Any, num_threads: int = 1, xnnpack: bool | None = None) -> Any:
    """A LiteRT interpreter for `.tflite` bytes or a path, tensors allocated.

    Uses `ai_edge_litert.interpreter.Interpreter` (`pip install
    prunemix[litert]`) when installed, else `tf.lite.Interpreter`
    (deprecated in TF 2.21 but still there).

    Args:
        model: `.tflite` bytes, or a path.
        num_threads: CPU threads.
        xnnpack: whether LiteRT may apply its default XNNPack delegate (it
            runs dense float ops, while ops with sparse weights stay on
            LiteRT's own kernels). False runs every op on LiteRT's built-in
            kernels. None (default): on, unless the model has sparse int8
            weights (`to_tflite(quantize="int8")` of a pruned model), whose
            outputs XNNPack gets wrong (measured: NaN, or errors of 0.7 on
            outputs of 0.25).

    Returns:
        The interpreter (`invoke()`, `set_tensor`, `get_signature_runner()`).

    Raises:
        ValueError: for `xnnpack=True` and a model with sparse int8 weights.
    """
    data = model if isinstance(model, bytes | bytearray | memoryview) else \
        pathlib.Path(os.fspath(model)).read_bytes()
    sparse_int8 = [row.weight for row in tflite_report(data)
                   if row.dtype == "int8" and row.storage != DENSE]
    if xnnpack and sparse_int8:
        raise ValueError(
            f"make_interpreter: xnnpack=True, and the model has sparse int8 weights "
            f"({sparse_int8[0]!r}, ...), whose outputs LiteRT's XNNPack delegate gets "
            "wrong. Leave `xnnpack` at None (off for such models) or pass False."
        )
    if xnnpack is None:
        xnnpack = not sparse_int8
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
        OpResolverType = tf.lite.experimental.OpResolverType  # noqa: N806
    kwargs = {"model_content": bytes(data)}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(num_threads=num_threads, **kwargs)
    interpreter.allocate_tensors()
    return interpreter
