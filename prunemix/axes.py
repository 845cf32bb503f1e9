"""Which axes of a layer's weight are its inputs and outputs.

Patterns that prune along an axis (N:M groups, whole channels, input blocks)
ask the weight's layer, never its rank alone: an attention projection
`(in, heads, dim)` and a conv kernel `(h, w, in, out)` are both rank 3 or 4,
with their inputs on different axes.
"""

from __future__ import annotations

import keras

__all__ = ["TRANSPOSED_CONVS", "einsum_specs", "input_axis", "kernel_input_axes",
           "layer_input_axis", "layer_output_axis"]

#: Convolutions whose kernels are `(..., out, in)`.
TRANSPOSED_CONVS = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                    keras.layers.Conv3DTranspose)


def einsum_specs(layer) -> tuple:
    """`(input, kernel, output)` letters of an EinsumDense layer's equation
    (`"abc,cde->abde"` gives `("abc", "cde", "abde")`): the one parse of it."""
    inputs, rest = layer.equation.split(",")
    kernel, output = rest.split("->")
    return inputs, kernel, output


def input_axis(rank: int) -> int:
    """The input-channel axis of a Keras kernel of this rank (0 or -2)."""
    return 0 if rank <= 2 else -2


def kernel_input_axes(layer, weight) -> tuple:
    """The axes of a Dense or EinsumDense kernel that are summed with the input.

    Dense `(in, out)`: `(0,)`. EinsumDense: the kernel's letters that appear in
    the input spec and not in the output spec, from the layer's equation
    (`"abc,cde->abde"` gives `(0,)`; `"abcd,cde->abe"`, an attention output
    projection, gives `(0, 1)`). Other layers: `()`.
    """
    if isinstance(layer, keras.layers.EinsumDense) and weight is layer.kernel:
        inputs, kernel, output = einsum_specs(layer)
        return tuple(i for i, c in enumerate(kernel) if c in inputs and c not in output)
    if isinstance(layer, keras.layers.Dense) and len(weight.shape) == 2 and \
            weight is layer.kernel:
        return (0,)
    return ()


def layer_input_axis(layer, weight) -> int:
    """The input axis of `weight`, from its layer (non-negative).

    Dense and EinsumDense kernels: the last axis summed with the input (from
    the equation: `(in, heads, head_dim)` projections give 0, an attention
    output projection `(heads, head_dim, out)` gives 1). Conv*Transpose
    kernels `(..., out, in)`: the last axis. Other convolutions: -2, the input
    channels. Rank 2 (Embedding, RNN cells): 0.
    """
    rank = len(weight.shape)
    axes = kernel_input_axes(layer, weight)
    if axes:
        return axes[-1]
    if isinstance(layer, TRANSPOSED_CONVS) and rank >= 3:
        return rank - 1
    return input_axis(rank) % rank


def layer_output_axis(layer, weight) -> int:
    """The output axis of `weight` (non-negative): the last, or -2 for
    Conv*Transpose kernels `(..., out, in)`."""
    rank = len(weight.shape)
    return rank - 2 if isinstance(layer, TRANSPOSED_CONVS) and rank >= 3 else rank - 1
