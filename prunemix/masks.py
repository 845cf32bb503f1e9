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
full sort; the selection runs in a nested XLA-compiled function, padded to
a few bucket sizes (weights over 512K entries: their own size).
`lowest_k_masks` selects many small weights in one segmented pass (three
passes of up to 2048 buckets per weight), so a model compiles it once.
`bench/` measures both against `tf.sort`.

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

from prunemix import _validate

__all__ = ["lowest_k_mask", "lowest_k_masks", "magnitude_mask", "pruned_count", "rank_bits"]

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
    _validate.fraction(value, "sparsity", closed=not upper_open)


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


def _lowest_k_mask_bits(bits, k):
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
    _lowest_k_mask_bits, jit_compile=True, reduce_retracing=True
)


def _lowest_k_mask_scores(scores, k):
    # The keys are made inside the compiled selection, so XLA fuses them into
    # each pass instead of writing and reading them once more.
    return _lowest_k_mask_bits(rank_bits(scores), k)


_lowest_k_mask_scores_xla = tf.function(
    _lowest_k_mask_scores, jit_compile=True, reduce_retracing=True
)
# Padding: above every real key (NaN's included), so never among the k lowest.
_PAD_BITS = 0x7FFFFFFF


def _bucket(size: int) -> int:
    """The padded length XLA compiles the selection for: the next of
    2^e * {1, 1.5} (at most 1.5x the entries), so a model's many weight
    sizes share a few compilations (MobileNetV2: 52 sizes, 20 buckets).
    Weights above `_BATCH_ENTRIES` entries are few and each costs a pass per
    update over every entry, padding included (a third more for GPT-2's
    embedding and feed-forward kernels): they compile for their own size."""
    if size > _BATCH_ENTRIES:
        return size
    if size <= 1024:
        return 1024
    power = 1 << (size - 1).bit_length()
    return power * 3 // 4 if size <= power * 3 // 4 else power


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
    flat = tf.reshape(scores, [-1])
    k = tf.clip_by_value(tf.cast(k, tf.int32), 0, tf.size(flat))
    size = flat.shape[0]
    if size is None or _bucket(size) == size:
        return tf.reshape(_lowest_k_mask_scores_xla(flat, k), tf.shape(scores))
    # One bit pattern for every NaN, above +inf's: NaNs rank last, by index.
    bits = rank_bits(flat)
    padded = tf.pad(bits, [[0, _bucket(size) - size]], constant_values=_PAD_BITS)
    return tf.reshape(_lowest_k_mask_xla(padded, k)[:size], tf.shape(scores))


# Many weights at once: three radix passes of at most 2048 buckets per weight,
# so the histograms of hundreds of weights stay small.
_SEGMENTED_PASSES = ((20, 11), (10, 10), (0, 10))
# Weights above this many entries get a selection of their own: the shared
# one costs more per entry (three passes, a concatenation), so it is kept to
# the many small weights whose sizes would each need a compilation.
_BATCH_ENTRIES = 1 << 19


def _lowest_k_masks_bits(bits, starts, k):
    """Segmented `_lowest_k_mask_bits`: `bits` holds one run per weight, run
    i beginning at `starts[i]` (`starts[0] == 0`; a run may be empty at the
    end), with `k[i]` entries to prune in it."""
    count = tf.shape(k)[0]
    # Run ids from the run starts (a small vector, not an N-long constant);
    # a start at the very end marks nothing.
    inner = tf.minimum(starts[1:], tf.size(bits))
    marks = tf.tensor_scatter_nd_add(tf.zeros(tf.size(bits) + 1, tf.int32), inner[:, None],
                                     tf.ones_like(inner))
    segment = tf.cumsum(marks[:-1])
    prefix = tf.zeros_like(k)
    rank = tf.maximum(k, 1)
    for shift, width in _SEGMENTED_PASSES:
        digits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, shift), (1 << width) - 1)
        if shift + width < 31:
            above = tf.bitwise.right_shift(bits, shift + width)
            ones = tf.cast(tf.equal(above, tf.gather(prefix, segment)), tf.int32)
        else:
            ones = tf.ones_like(bits)
        hist = tf.math.unsorted_segment_sum(ones, segment * (1 << width) + digits,
                                            count * (1 << width))
        hist = tf.reshape(hist, [count, 1 << width])
        below = tf.cumsum(hist, axis=1, exclusive=True)
        digit = tf.argmax(tf.cast(below + hist >= rank[:, None], tf.int32), axis=1,
                          output_type=tf.int32)
        rank = rank - tf.gather(below, digit, batch_dims=1)
        prefix = tf.bitwise.bitwise_or(tf.bitwise.left_shift(prefix, width), digit)
        ties = tf.gather(hist, digit, batch_dims=1)
    kth = tf.gather(prefix, segment)

    def break_ties():
        # Ties by flat index within each run: the first `rank` entries equal to kth.
        at_kth = tf.equal(bits, kth)
        seen = tf.cumsum(tf.cast(at_kth, tf.int32))
        before = tf.gather(tf.pad(seen, [[1, 0]]), starts)
        within = seen - tf.gather(before, segment)
        return tf.logical_or(tf.less(bits, kth),
                             tf.logical_and(at_kth, within <= tf.gather(rank, segment)))

    prune = tf.cond(tf.reduce_all(tf.equal(ties, rank)),
                    lambda: tf.less_equal(bits, kth), break_ties)
    return tf.logical_not(tf.logical_and(prune, tf.gather(k, segment) > 0))


_lowest_k_masks_xla = tf.function(_lowest_k_masks_bits, jit_compile=True, reduce_retracing=True)


def lowest_k_masks(scores: list, ks) -> list:
    """`[lowest_k_mask(s, k) for s, k in zip(scores, ks)]`, in few compilations.

    Weights of up to 512K entries are selected together, in runs of one
    concatenated, padded tensor: one XLA compilation (and one trace) for a
    model's many weight sizes instead of one each, the cost of a model's
    first pruned step. Larger weights get their own selection. The masks are
    identical to `lowest_k_mask`'s (same ties, same NaN order).

    Args:
        scores: float tensors of known shapes.
        ks: the number to prune in each, ints in [0, size] (a list, or an
            int vector tensor).

    Returns:
        A list of bool keep-masks shaped like `scores`.
    """
    ks = tf.cast(tf.convert_to_tensor(ks), tf.int32)
    out = [None] * len(scores)
    chunks, entries = [[]], 0
    for i, score in enumerate(scores):
        size = score.shape.num_elements()
        if size is None or size > _BATCH_ENTRIES:
            out[i] = lowest_k_mask(score, ks[i])
            continue
        if entries + size > 4 * _BATCH_ENTRIES:
            chunks.append([])
            entries = 0
        chunks[-1].append((i, size))
        entries += size
    for chunk in filter(None, chunks):
        index = [i for i, _ in chunk]
        sizes = [size for _, size in chunk]
        total = sum(sizes)
        pad = _bucket(total) - total
        flat = tf.concat([tf.reshape(tf.cast(scores[i], tf.float32), [-1]) for i in index], 0)
        bits = tf.pad(rank_bits(flat), [[0, pad]], constant_values=_PAD_BITS)
        starts = [0]
        for size in sizes:
            starts.append(starts[-1] + size)
        # The padding is one more run, with nothing to prune.
        k = tf.concat([tf.clip_by_value(tf.gather(ks, index), 0, sizes), [0]], 0)
        keep = _lowest_k_masks_xla(bits, tf.constant(starts, tf.int32), k)
        for i, part in zip(index, tf.split(keep, sizes + [pad])[:-1], strict=True):
            out[i] = tf.reshape(part, scores[i].shape)
    return out


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
