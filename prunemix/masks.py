"""Masks: weights and a sparsity in, a boolean keep-mask out.

Written with `keras.ops`, so the same kernels run on every Keras backend
(TensorFlow and JAX are tested); the selection is compiled with XLA on both.

The zero count is exact: a weight of `n` entries and a sparsity `s` give a
mask with exactly `pruned_count(s, n)` False entries, by one rule on every
backend, with or without float64 (JAX runs float64 as float32 unless
`jax_enable_x64` is set): the sparsity is read to six decimals,
`q = round(s * 10**6)`, and the count is `q * n / 10**6` rounded half to
even, in exact int32 arithmetic. For every sparsity written with up to six
decimals (0.5, 0.8, 0.4375, 0.015625) that is exactly `round(s * n)`; a
schedule's value in between is read to 1e-6.

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
`bench/` measures both against a full sort.

Example:

>>> import numpy as np
>>> w = np.array([[0.5, -0.1], [0.3, -0.9]], dtype="float32")
>>> np.asarray(magnitude_mask(w, 0.5)).tolist()
[[True, False], [False, True]]
>>> int(pruned_count(0.25, 10))  # 2.5: half to even
2
>>> int(pruned_count(0.4375, 216))  # 94.5, the same without float64
94
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from prunemix import _backend, _validate

__all__ = ["lowest_k_mask", "lowest_k_masks", "magnitude_mask", "pruned_count", "rank_bits"]

# (shift, width) of each radix pass over the 31 value bits of a float32 >= 0.
# Two passes of 16 and 15 bits: each pass is one scatter-add over every entry
# (the cost), and a 65536-bucket histogram is still cheap to scan.
_PASSES = ((15, 16), (0, 15))
_TIE_BLOCK = 1024
_NAN_BITS = 0x7FC00000
# The sparsity's resolution in `pruned_count`: six decimals.
_SCALE = 10**6


def pruned_count(sparsity, size):
    """Number of entries to prune: `round(sparsity * size)`, half to even.

    The sparsity is read to six decimals (`round(sparsity * 10**6)`) and the
    product is exact integer arithmetic, so every backend gives the same
    count, with or without float64.

    Args:
        sparsity: scalar in [0, 1]. A value known outside (a percentage such
            as 50, or NaN) is an error; inside a traced function, where it is
            not known, values outside are clipped and NaN prunes nothing, so
            the count is never negative.
        size: number of entries (below 2**31), a Python int, integer scalar
            tensor or a list of them (one count each).

    Returns:
        An int32 tensor in [0, size], shaped like `size`.

    Raises:
        ValueError: for a known sparsity outside [0, 1] or NaN.

    Example:

    >>> int(pruned_count(0.5, 7))  # 3.5 rounds to even
    4
    >>> np.asarray(pruned_count(0.1, [5, 15])).tolist()  # 0.5 and 1.5
    [0, 2]
    """
    _check_fraction(sparsity, upper_open=False)
    sparsity = ops.convert_to_tensor(sparsity)
    if not str(sparsity.dtype).startswith("float"):
        sparsity = ops.cast(sparsity, "float32")
    sparsity = ops.where(ops.isnan(sparsity), ops.zeros_like(sparsity), sparsity)
    q = ops.cast(ops.round(ops.clip(sparsity, 0.0, 1.0) * _SCALE), "int32")
    n = ops.cast(ops.convert_to_tensor(size), "int32")
    # q * n / 10**6 with every intermediate below 2**31: n = a * 10**6 + b,
    # b = b1 * 1000 + b0, so q * n / 10**6 = q*a + (q*b1) / 1000 + (q*b0) / 10**6.
    a, b = n // _SCALE, n % _SCALE
    b1, b0 = b // 1000, b % 1000
    t1 = q * b1
    whole = q * a + t1 // 1000
    rest = (t1 % 1000) * 1000 + q * b0
    whole, rest = whole + rest // _SCALE, rest % _SCALE
    up = (rest > _SCALE // 2) | ((rest == _SCALE // 2) & (whole % 2 == 1))
    return ops.minimum(whole + ops.cast(up, "int32"), n)


def _check_fraction(sparsity, upper_open: bool) -> None:
    """Rejects a sparsity whose value is known (Python or eager) and not a fraction."""
    if _backend.is_symbolic(sparsity):
        return  # symbolic: checked where the value is known
    try:
        value = float(sparsity)
    except Exception:  # noqa: BLE001 - symbolic or not a scalar: the backend reports it
        return
    _validate.fraction(value, "sparsity", closed=not upper_open)


def rank_bits(scores):
    """Int32 keys that order `|scores|` as every pattern ranks them (NaN last)."""
    scores = ops.cast(scores, "float32")
    return ops.where(ops.isnan(scores), _NAN_BITS, _int32_bits(ops.abs(scores)))


def _int32_bits(x):
    """The bit patterns of float32 `x` as int32 (`ops.view`; on TensorFlow,
    `tf.bitcast`, which also takes a shape known only at run time)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.bitcast(x, tf.int32)
    return ops.view(x, "int32")


def _first_reaching(totals, rank, axis=-1):
    """Index of the first entry of the running `totals` that reaches `rank`."""
    return ops.cast(ops.argmax(ops.cast(totals >= rank, "int32"), axis=axis), "int32")


def _kth_smallest(bits, k):
    """Bit pattern of the k-th smallest (1-based) of non-negative int32 `bits`.

    Returns the pattern, how many entries equal to it fall within the k
    smallest, and how many entries equal it in all.
    """
    prefix = ops.convert_to_tensor(0, "int32")
    rank = k
    for shift, width in _PASSES:
        digits = ops.bitwise_and(ops.right_shift(bits, shift), (1 << width) - 1)
        if shift + width < 31:
            ones = ops.cast(ops.right_shift(bits, shift + width) == prefix, "int32")
        else:
            ones = ops.ones_like(bits)
        hist = ops.segment_sum(ones, digits, num_segments=1 << width)
        through = ops.cumsum(hist)
        digit = _first_reaching(through, rank)
        rank = rank - (ops.take(through, digit) - ops.take(hist, digit))
        prefix = ops.bitwise_or(ops.left_shift(prefix, width), digit)
    return prefix, rank, ops.take(hist, digit)


def _last_tie_index(at_kth, rank):
    """Flat index of the `rank`-th True of `at_kth` (1-based).

    A prefix sum over blocks of 1024 entries, then within one block: a few
    vectorized passes instead of a prefix sum over every entry.
    """
    size = ops.shape(at_kth)[0]
    padded = ops.pad(ops.cast(at_kth, "int32"), [[0, (-size) % _TIE_BLOCK]])
    blocks = ops.reshape(padded, [-1, _TIE_BLOCK])
    per_block = ops.sum(blocks, axis=1)
    through_block = ops.cumsum(per_block)
    block = _first_reaching(through_block, rank)
    rank_in_block = rank - (ops.take(through_block, block) - ops.take(per_block, block))
    within = ops.cumsum(ops.take(blocks, block, axis=0))
    return block * _TIE_BLOCK + _first_reaching(within, rank_in_block)


def _lowest_k_mask_bits(bits, k):
    kth, ties_to_prune, ties = _kth_smallest(bits, ops.maximum(k, 1))

    def break_ties():
        # Some, not all, entries equal to the k-th value are pruned: those
        # up to the flat index of the `ties_to_prune`-th of them.
        at_kth = bits == kth
        last = _last_tie_index(at_kth, ties_to_prune)
        first_ones = ops.arange(ops.shape(bits)[0], dtype="int32") <= last
        return (bits < kth) | (at_kth & first_ones)

    prune = ops.cond(ties == ties_to_prune, lambda: bits <= kth, break_ties)
    return ops.logical_not(prune & (k > 0))


_lowest_k_mask_xla = _backend.Compiled(_lowest_k_mask_bits)


def _lowest_k_mask_scores(scores, k):
    # The keys are made inside the compiled selection, so XLA fuses them into
    # each pass instead of writing and reading them once more.
    return _lowest_k_mask_bits(rank_bits(scores), k)


_lowest_k_mask_scores_xla = _backend.Compiled(_lowest_k_mask_scores)
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


def _size(x):
    """Entries of `x`: a Python int when its shape is known, else a tensor."""
    shape = ops.shape(x)
    if all(isinstance(d, int) for d in shape):
        return int(np.prod(shape, dtype="int64"))
    return ops.prod(ops.convert_to_tensor(shape, "int32"))


def lowest_k_mask(scores, k):
    """Keep-mask that prunes the `k` entries of lowest `|scores|`.

    Args:
        scores: float tensor of any shape (cast to float32; NaN ranks
            above +inf).
        k: number of entries to prune, int scalar in [0, size].

    Returns:
        A bool tensor shaped like `scores`, with exactly `k` False entries.
    """
    scores = ops.convert_to_tensor(scores)
    shape = ops.shape(scores)
    flat = ops.reshape(scores, [-1])
    size = _size(flat)
    k = ops.clip(ops.cast(k, "int32"), 0, size)
    if not isinstance(size, int) or _bucket(size) == size:
        return ops.reshape(_lowest_k_mask_scores_xla(flat, k), shape)
    # One bit pattern for every NaN, above +inf's: NaNs rank last, by index.
    bits = ops.pad(rank_bits(flat), [[0, _bucket(size) - size]], constant_values=_PAD_BITS)
    return ops.reshape(_lowest_k_mask_xla(bits, k)[:size], shape)


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
    count = ops.shape(k)[0]
    size = ops.shape(bits)[0]
    starts = _backend.opaque(starts)
    # Run ids from the run starts (a small vector, not an N-long constant);
    # a start at the very end marks nothing.
    inner = ops.minimum(starts[1:], size)
    marks = ops.scatter(inner[:, None], ops.ones_like(inner), (size + 1,))
    segment = ops.cumsum(marks[:-1])
    prefix = ops.zeros_like(k)
    rank = ops.maximum(k, 1)
    for shift, width in _SEGMENTED_PASSES:
        digits = ops.bitwise_and(ops.right_shift(bits, shift), (1 << width) - 1)
        if shift + width < 31:
            above = ops.right_shift(bits, shift + width)
            ones = ops.cast(above == ops.take(prefix, segment), "int32")
        else:
            ones = ops.ones_like(bits)
        hist = ops.segment_sum(ones, segment * (1 << width) + digits,
                               num_segments=count * (1 << width))
        hist = ops.reshape(hist, [count, 1 << width])
        through = ops.cumsum(hist, axis=1)
        digit = _first_reaching(through, rank[:, None], axis=1)
        at = digit[:, None]
        ties = ops.take_along_axis(hist, at, axis=1)[:, 0]
        rank = rank - (ops.take_along_axis(through, at, axis=1)[:, 0] - ties)
        prefix = ops.bitwise_or(ops.left_shift(prefix, width), digit)
    kth = ops.take(prefix, segment)

    def break_ties():
        # Ties by flat index within each run: the first `rank` entries equal to kth.
        at_kth = bits == kth
        seen = ops.cumsum(ops.cast(at_kth, "int32"))
        before = ops.take(ops.pad(seen, [[1, 0]]), starts)
        within = seen - ops.take(before, segment)
        return (bits < kth) | (at_kth & (within <= ops.take(rank, segment)))

    prune = ops.cond(ops.all(ties == rank), lambda: bits <= kth, break_ties)
    return ops.logical_not(prune & (ops.take(k, segment) > 0))


_lowest_k_masks_xla = _backend.Compiled(_lowest_k_masks_bits)


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
    ks = ops.cast(ops.convert_to_tensor(ks), "int32")
    out = [None] * len(scores)
    chunks, entries = [[]], 0
    for i, score in enumerate(scores):
        size = _size(score)
        if not isinstance(size, int) or size > _BATCH_ENTRIES:
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
        flat = ops.concatenate(
            [ops.reshape(ops.cast(scores[i], "float32"), [-1]) for i in index], 0)
        bits = ops.pad(rank_bits(flat), [[0, pad]], constant_values=_PAD_BITS)
        starts = np.cumsum([0] + sizes, dtype="int32")
        # The padding is one more run, with nothing to prune.
        k = ops.concatenate([ops.clip(ops.take(ks, index), 0, np.array(sizes, "int32")),
                             ops.zeros((1,), "int32")], 0)
        keep = _lowest_k_masks_xla(bits, ops.convert_to_tensor(starts), k)
        for i, start, size in zip(index, starts, sizes, strict=False):
            out[i] = ops.reshape(keep[int(start):int(start) + size], ops.shape(scores[i]))
    return out


def magnitude_mask(weights, sparsity):
    """Keep-mask pruning the `pruned_count(sparsity, size)` smallest-magnitude weights.

    Args:
        weights: float tensor or variable of any shape.
        sparsity: target fraction of zeros, scalar in [0, 1).

    Returns:
        A bool tensor shaped like `weights`; False marks pruned entries.

    Raises:
        ValueError: for a sparsity outside [0, 1) such as a percentage (50).

    Example:

    >>> np.asarray(magnitude_mask([1.0, -3.0, 2.0, 0.5], 0.5)).tolist()
    [False, True, True, False]
    """
    _check_fraction(sparsity, upper_open=True)
    weights = ops.convert_to_tensor(weights)
    return lowest_k_mask(weights, pruned_count(sparsity, _size(weights)))
