"""`latency_policy`: prune in the block shape LiteRT's sparse kernels run."""

from __future__ import annotations

import keras

from prunemix import patterns
from prunemix.axes import kernel_input_axes
from prunemix.policy import Rule

__all__ = ["fits_litert_float_blocks", "fits_litert_int8_blocks", "latency_policy"]

_BLOCK = {False: 4, True: 16}


def _fits(layer, weight, size: int) -> bool:
    axes = kernel_input_axes(layer, weight)
    return bool(axes) and weight.shape[axes[-1]] % size == 0


@keras.saving.register_keras_serializable(package="prunemix")
def fits_litert_float_blocks(layer, weight) -> bool:
    """Whether `weight` is a Dense/EinsumDense kernel with inputs in blocks of 4."""
    return _fits(layer, weight, _BLOCK[False])


@keras.saving.register_keras_serializable(package="prunemix")
def fits_litert_int8_blocks(layer, weight) -> bool:
    """Whether `weight` is a Dense/EinsumDense kernel with inputs in blocks of 16."""
    return _fits(layer, weight, _BLOCK[True])


def latency_policy(runtime: str = "litert", quantized: bool = False) -> list:
    """Rules that prune for speed on a runtime's sparse kernels.

    For LiteRT: every Dense and EinsumDense kernel whose input length is a
    multiple of the block is pruned in blocks of 4 consecutive inputs per
    output unit (16 with `quantized=True`, for int8 models), the layout
    LiteRT's sparse FULLY_CONNECTED kernel runs; an exact number of blocks is
    pruned (`InputBlockSparsity`). Every other prunable weight (convolutions,
    embeddings, recurrent kernels, misfit shapes) stays dense: no LiteRT
    kernel would run it faster. Put your own rules first; the first match
    wins, and neither rule here is an error when it matches nothing.

    Args:
        runtime: `"litert"` (the only one so far).
        quantized: whether the model will be converted to int8.

    Returns:
        A list of two `Rule`s.

    Raises:
        ValueError: for an unknown runtime.

    Example:

    ```python
    model = prunemix.PrunedModel(
        inputs, outputs, pruning_schedule=prunemix.PolynomialDecay(0.0, 0.9, 0, 1000),
        pruning_policy=[prunemix.Rule("logits", exclude=True), *prunemix.latency_policy()],
    )
    ```
    """
    if runtime != "litert":
        raise ValueError(f"`runtime` must be 'litert'. Received: runtime={runtime!r}")
    fits = fits_litert_int8_blocks if quantized else fits_litert_float_blocks
    return [
        Rule(fits, pattern=patterns.InputBlockSparsity(_BLOCK[bool(quantized)]), required=False),
        Rule("*", exclude=True, required=False),
    ]
