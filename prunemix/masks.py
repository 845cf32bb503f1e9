"""Masks: weights and a sparsity in, a boolean keep-mask out.

The zero count is exact: a weight of `n` entries and a sparsity `s` give a
mask with exactly `pruned_count(s, n) == round(s * n)` False entries, where
`round` rounds half to even like Python's `round` (computed in float64).

Ties: entries of equal magnitude at the threshold are pruned in flat
(row-major) order, lowest index first, so the count stays exact even when
many weights share a value (for example weights that are already zero).

NaN: a NaN score ranks above every number, +inf included (NaNs among
themselves by flat index), so NaN entries are pruned last. Every pattern
ranks NaN this way.

How the threshold is found: non-negative float32 values sort like their
int32 bit patterns, so the k-th smallest magnitude is found with two
histogram passes over the bits (16 + 15 bits, a radix select) instead of a
full sort; the selection runs in a nested XLA-compiled function. `bench/`
measures it against `tf.sort`.

Example:

>>> import numpy as np
>>> w = np.array([[0.5, -0.1], [0.3, -0.9]], dtype="float32")
>>> magnitude_mask(w, 0.5).numpy().tolist()
[[True, False], [False, True]]
>>> int(pruned_count(0.25, 10))  # round(2.5) == 2, half to even
2
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["lowest_k_mask", "magnitude_mask", "pruned_count", "rank_bits"]

# (shift, width) of each radix pass over the 31 value bits of a float32 >= 0.
# Two passes of 16 and 15 bits: each pass is one scatter-add over every entry
# (the cost), and a 65536-bucket histogram is still cheap to scan.
_PASSES = ((15, 16), (0, 15))
_TIE_BLOCK = 1024
_NAN_BITS = 0x7FC00000


def pruned_count(sparsity, size):
    """Number of entries to prune: `round(sparsity * size)`, half to even.

    Args:
        sparsity: scalar in [0, 1]. A value known outside (a percentage such
            as 50, or NaN) is an error; inside a traced function, where it is
            not known, values outside are clipped and NaN prunes nothing, so
            the count is never negative.
        size: number of entries, a Python int or integer scalar tensor.

    Returns:
        An int32 scalar tensor in [0, size].

    Raises:
        ValueError: for a known sparsity outside [0, 1] or NaN.
    """
    _check_fraction(sparsity, upper_open=False)
    sparsity = tf.cast(tf.convert_to_tensor(sparsity, dtype_hint=tf.float64), tf.float64)
    sparsity = tf.where(tf.math.is_nan(sparsity), tf.zeros_like(sparsity), sparsity)
    sparsity = tf.clip_by_value(sparsity, 0.0, 1.0)
    return tf.cast(tf.round(sparsity * tf.cast(size, tf.float64)), tf.int32)


def _check_fraction(sparsity, upper_open: bool) -> None:
    """Rejects a sparsity whose value is known (Python or eager) and not a fraction."""
    if isinstance(sparsity, tf.Tensor) and not tf.executing_eagerly():
        return  # symbolic: checked where the value is known
    try:
        value = float(sparsity)
    except Exception:  # noqa: BLE001 - symbolic or not a scalar: tf reports it
        return
    upper = "1)" if upper_open else "1]"
    if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
        raise ValueError(
            f"`sparsity` must be a fraction in [0, {upper}, not a percentage. "
            f"Received: sparsity={value}"
        )


def rank_bits(scores):
    """Int32 keys that order `|scores|` as every pattern ranks them (NaN last)."""
    scores = tf.cast(scores, tf.float32)
    return tf.where(tf.math.is_nan(scores), _NAN_BITS, tf.bitcast(tf.abs(scores), tf.int32))


def _kth_smallest(bits, k):
    """Bit pattern of the k-th smallest (1-based) of non-negative int32 `bits`.

    Returns the pattern, how many entries equal to it fall within the k
    smallest, and how many entries equal it in all.
    """
    prefix = tf.constant(0, tf.int32)
    rank = k
    for shift, width in _PASSES:
        digits = tf.bitwise.bitwise_and(
            tf.bitwise.right_shift(bits, shift), (1 << width) - 1
        )
        if shift + width < 31:
            in_prefix = tf.equal(tf.bitwise.right_shift(bits, shift + width), prefix)
            ones = tf.cast(in_prefix, tf.int32)
        else:
            ones = tf.ones_like(bits)
        hist = tf.math.unsorted_segment_sum(ones, digits, 1 << width)
        below = tf.cumsum(hist, exclusive=True)
        digit = tf.argmax(tf.cast(below + hist >= rank, tf.int32), output_type=tf.int32)
        rank = rank - tf.gather(below, digit)
        prefix = tf.bitwise.bitwise_or(tf.bitwise.left_shift(prefix, width), digit)
    return prefix, rank, tf.gather(hist, digit)


def _last_tie_index(at_kth, rank):
    """Flat index of the `rank`-th True of `at_kth` (1-based).

    A prefix sum over blocks of 1024 entries, then within one block: a few
    vectorized passes instead of a prefix sum over every entry.
    """
    size = tf.size(at_kth)
    padded = tf.pad(tf.cast(at_kth, tf.int32), [[0, (-size) % _TIE_BLOCK]])
    blocks = tf.reshape(padded, [-1, _TIE_BLOCK])
    per_block = tf.reduce_sum(blocks, axis=1)
    through_block = tf.cumsum(per_block)
    block = tf.argmax(tf.cast(through_block >= rank, tf.int32), output_type=tf.int32)
    rank_in_block = rank - (tf.gather(through_block, block) - tf.gather(per_block, block))
    within = tf.cumsum(tf.gather(blocks, block))
    offset = tf.argmax(tf.cast(within >= rank_in_block, tf.int32), output_type=tf.int32)
    return block * _TIE_BLOCK + offset


def _lowest_k_mask_flat(scores, k):
    # One bit pattern for every NaN, above +inf's: NaNs rank last, by index.
    bits = rank_bits(scores)
    kth, ties_to_prune, ties = _kth_smallest(bits, tf.maximum(k, 1))

    def break_ties():
        # Some, not all, entries equal to the k-th value are pruned: those
        # up to the flat index of the `ties_to_prune`-th of them.
        at_kth = tf.equal(bits, kth)
        last = _last_tie_index(at_kth, ties_to_prune)
        first_ones = tf.less_equal(tf.range(tf.size(bits)), last)
        return tf.logical_or(tf.less(bits, kth), tf.logical_and(at_kth, first_ones))

    prune = tf.cond(
        tf.equal(ties, ties_to_prune), lambda: tf.less_equal(bits, kth), break_ties
    )
    return tf.logical_not(tf.logical_and(prune, k > 0))


_lowest_k_mask_xla = tf.function(
    _lowest_k_mask_flat, jit_compile=True, reduce_retracing=True
)


def lowest_k_mask(scores, k):
    """Keep-mask that prunes the `k` entries of lowest `|scores|`.

    Args:
        scores: float tensor of any shape (cast to float32; NaN ranks
            above +inf).
        k: number of entries to prune, int scalar in [0, size].

    Returns:
        A bool tensor shaped like `scores`, with exactly `k` False entries.
    """
    scores = tf.convert_to_tensor(scores)
    flat = tf.reshape(tf.cast(scores, tf.float32), [-1])
    k = tf.clip_by_value(tf.cast(k, tf.int32), 0, tf.size(flat))
    return tf.reshape(_lowest_k_mask_xla(flat, k), tf.shape(scores))


def magnitude_mask(weights, sparsity):
    """Keep-mask pruning the `round(sparsity * size)` smallest-magnitude weights.

    Args:
        weights: float tensor or variable of any shape.
        sparsity: target fraction of zeros, scalar in [0, 1).

    Returns:
        A bool tensor shaped like `weights`; False marks pruned entries.

    Raises:
        ValueError: for a sparsity outside [0, 1) such as a percentage (50).

    Example:

    >>> magnitude_mask([1.0, -3.0, 2.0, 0.5], 0.5).numpy().tolist()
    [False, True, True, False]
    """
    _check_fraction(sparsity, upper_open=True)
    weights = tf.convert_to_tensor(weights)
    return lowest_k_mask(weights, pruned_count(sparsity, tf.size(weights)))
