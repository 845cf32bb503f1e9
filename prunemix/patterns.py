"""Sparsity patterns: which entries of a weight a mask may remove together.

A pattern turns a score tensor (by default `|w|`, the weight's magnitude)
and a target sparsity into a boolean keep-mask. Every pattern keeps its
count exact: `round(sparsity * units)` units are pruned, where a unit is an
entry, a block, or a whole output unit / input channel.

- `Magnitude()`: the entries of lowest score in each weight (the default).
- `GlobalMagnitude()`: one threshold across every weight that uses it.
- `BlockSparsity(block_shape, pooling)`: whole blocks of entries.
- `NMSparsity(n, m)`: n zeros in every group of m along the input axis.
- `StructuredSparsity(axis, norm)`: whole output units or input channels.

Axes come from each weight's layer (`layer_input_axis`,
`layer_output_axis`): the *input axis* is 0 for Dense `(in, out)`, the last
summed axis of an EinsumDense equation (attention q/k/v `(in, heads, dim)`:
0), -2 for convolutions `(..., in, out)` and -1 for conv-transposes
`(..., out, in)`; Embeddings `(vocab, dim)` use the vocabulary. Patterns with
a default axis fix it per weight at build time (`bind`), and the saved
resolution records it.

Example:

>>> import numpy as np
>>> w = np.array([[0.1, -2.0, 0.3, 4.0], [5.0, 0.2, -6.0, 0.05]], "float32")
>>> np.asarray(NMSparsity(2, 4, axis=1).mask(np.abs(w), 0.5)).astype(int).tolist()
[[0, 1, 0, 1], [1, 0, 1, 0]]
>>> np.asarray(BlockSparsity((1, 2)).mask(np.abs(w), 0.5)).astype(int).tolist()
[[0, 0, 0, 0], [1, 1, 1, 1]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from prunemix import _validate, masks
from prunemix.axes import input_axis, kernel_input_axes, layer_input_axis, layer_output_axis

__all__ = [
    "BlockSparsity",
    "GlobalMagnitude",
    "InputBlockSparsity",
    "Magnitude",
    "NMSparsity",
    "PruningPattern",
    "StructuredSparsity",
    "input_axis",
    "kernel_input_axes",
    "layer_input_axis",
    "layer_output_axis",
]


def _label(layer, weight) -> str:
    return f"weight '{weight.path}' of layer '{layer.name}' ({type(layer).__name__})"


_REGISTRY: dict = {}  # alias -> pattern class


class PruningPattern:
    """Base class: a rule that turns scores and a sparsity into a keep-mask.

    Subclasses implement `mask(scores, sparsity)` (or `mask_and_count`), and
    `check(layer, weight)` to reject weights they cannot handle (called at
    build time). Entries are ranked by `|scores|`, NaN above everything.

    The pruner talks to every pattern through one call, `group_masks`: the
    scores of a group of weights that share a schedule and this pattern, the
    target, and each weight's sparsity bounds in; a keep-mask and an exact
    pruned count per weight out. By default each weight is masked on its own
    at `clip(target, low, high)`; `GlobalMagnitude` pools the group.
    """

    #: The short name `prunemix.patterns.get` takes (e.g. "n:m"); subclasses
    #: that set one are registered, and found by it, when they are defined.
    alias: str | None = None
    #: Whether all weights using the pattern share one threshold.
    is_global = False
    #: Whether the pattern is planned over the model's graph when the pruner
    #: is built (`ChannelGroups`): `planned` gives the planned copy.
    needs_graph = False
    #: Keys of the weights a planned pattern's masks follow, in order (None:
    #: not planned).
    keys: list | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("alias"):
            _REGISTRY[cls.alias] = cls

    def planned(self, groups: list, keys: list) -> PruningPattern:
        """A copy planned over the model's graph (`needs_graph` patterns)."""
        raise NotImplementedError(f"{type(self).__name__} is not planned over a graph.")

    def check(self, layer, weight) -> None:
        """Raises `ValueError` if the pattern cannot handle `weight`."""

    def bind(self, layer, weight) -> PruningPattern:
        """The pattern for this one weight (called at build, after `check`).

        Most patterns return themselves; a pattern whose shape depends on the
        layer (`InputBlockSparsity`) returns a concrete one, which is what the
        saved resolution records.
        """
        del layer, weight
        return self

    def check_target(self, final_sparsity, bounds, where: str) -> None:
        """Raises `ValueError` if the pattern cannot honour a rule's own
        `final_sparsity` or `(min_sparsity, max_sparsity)` bounds."""

    def mask(self, scores, sparsity):
        """Keep-mask (bool, shaped like `scores`) for a target `sparsity`."""
        return self.mask_and_count(scores, sparsity)[0]

    def mask_and_count(self, scores, sparsity):
        """`(keep_mask, number of pruned entries as an int32 scalar)`."""
        if type(self).mask is PruningPattern.mask:
            raise NotImplementedError(f"{type(self).__name__} must implement `mask()`.")
        keep = self.mask(scores, sparsity)
        return keep, _zeros(keep)

    def group_masks(self, scores: list, target, bounds: list) -> tuple:
        """`(keep_masks, pruned_counts)` for a group of weights.

        Args:
            scores: one score tensor per weight.
            target: the schedule's sparsity (float scalar tensor).
            bounds: one `(min_sparsity, max_sparsity)` per weight.

        Returns:
            Two lists: bool keep-masks shaped like `scores`, int32 counts.
        """
        keeps, counts = [], []
        for score, (low, high) in zip(scores, bounds, strict=True):
            keep, count = self.mask_and_count(score, ops.clip(target, low, high))
            keeps.append(keep)
            counts.append(count)
        return keeps, counts

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))


@keras.saving.register_keras_serializable(package="prunemix")
class Magnitude(PruningPattern):
    """Unstructured: prune the entries of lowest score in each weight.

    Each weight gets exactly `round(sparsity * size)` zeros.
    """

    alias = "magnitude"

    def mask_and_count(self, scores, sparsity):
        scores = ops.convert_to_tensor(scores)
        count = masks.pruned_count(sparsity, math.prod(scores.shape))
        return masks.lowest_k_mask(scores, count), count

    def group_masks(self, scores: list, target, bounds: list) -> tuple:
        # One selection for the group's weights (`lowest_k_masks`): a model's
        # first pruned step compiles once, not once per weight size. A
        # subclass with its own masks keeps the weight-by-weight path.
        own = type(self)
        if own.mask_and_count is not Magnitude.mask_and_count or own.mask is not \
                PruningPattern.mask:
            return super().group_masks(scores, target, bounds)
        scores = [ops.convert_to_tensor(s) for s in scores]
        target = ops.convert_to_tensor(target)
        lows, highs = (ops.convert_to_tensor(b, target.dtype) for b in zip(*bounds, strict=True))
        sparsity = ops.minimum(ops.maximum(target, lows), highs)
        counts = masks.pruned_count(sparsity, [math.prod(s.shape) for s in scores])
        return masks.lowest_k_masks(scores, counts), [counts[i] for i in range(len(scores))]


@keras.saving.register_keras_serializable(package="prunemix")
class GlobalMagnitude(Magnitude):
    """Unstructured with one threshold shared by every weight that uses it.

    The model-wide count is exact (`round(sparsity * total)` zeros over the
    weights in the pool) while layers end up with different sparsities. A
    `Rule`'s `min_sparsity` / `max_sparsity` bound each weight's share, so
    no layer is pruned to death. All weights in the pool must follow the
    same schedule.
    """

    alias = "global"

    is_global = True

    def group_masks(self, scores: list, target, bounds: list) -> tuple:
        keeps = global_masks(scores, target, bounds)
        counts = [_zeros(k) for k in keeps]
        return keeps, counts


def _check_rank(pattern, layer, weight, minimum: int) -> None:
    if len(weight.shape) < minimum:
        raise ValueError(
            f"{type(pattern).__name__} needs weights of rank >= {minimum}, but "
            f"{_label(layer, weight)} has shape {tuple(weight.shape)}. Give it "
            "another pattern or exclude it with a `prunemix.Rule`."
        )


def _check_axis(pattern, axis: int, layer, weight) -> None:
    rank = len(weight.shape)
    if not -rank <= axis < rank:
        raise ValueError(
            f"{type(pattern).__name__}: axis {axis} is out of range for "
            f"{_label(layer, weight)} of shape {tuple(weight.shape)}."
        )


@keras.saving.register_keras_serializable(package="prunemix")
class BlockSparsity(PruningPattern):
    """Prune whole blocks of entries, scored by the average or max |w|.

    `block_shape` covers the trailing axes of the weight: `(1, 4)` on a Dense
    kernel `(in, out)` makes blocks of 4 consecutive output units for one
    input; on a Conv2D kernel `(h, w, in, out)` the same blocks lie on the
    `(in, out)` axes. Leading axes not covered get block size 1.

    Shapes that are not a multiple of the block: the last block along an
    axis is smaller; it is scored over its real entries only and counts as
    one block. Exactly `round(sparsity * number_of_blocks)` blocks are
    pruned, so the entry sparsity is exact in whole blocks.

    Args:
        block_shape: tuple of positive ints, at most the weight's rank.
        pooling: `"avg"` (default) or `"max"` of the scores in a block.

    Raises:
        ValueError: for a bad block shape or pooling; at build time, if a
            block is larger than the weight or has more axes than it.
    """

    alias = "block"

    def __init__(self, block_shape: Sequence[int] = (1, 4), pooling: str = "avg"):
        block_shape = tuple(block_shape)
        if not block_shape or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block_shape
        ):
            raise ValueError(
                "BlockSparsity: `block_shape` must be a tuple of positive ints. Received: "
                f"block_shape={block_shape!r}"
            )
        _validate.one_of(pooling, "pooling", ("avg", "max"), where="BlockSparsity")
        self.block_shape, self.pooling = block_shape, pooling

    def _full_block(self, rank: int) -> tuple:
        return (1,) * (rank - len(self.block_shape)) + self.block_shape

    def check(self, layer, weight) -> None:
        shape = tuple(weight.shape)
        if len(self.block_shape) > len(shape):
            raise ValueError(
                f"BlockSparsity{self.block_shape} has {len(self.block_shape)} axes, but "
                f"{_label(layer, weight)} has shape {shape}."
            )
        block = self._full_block(len(shape))
        if any(b > s for b, s in zip(block, shape, strict=True)):
            raise ValueError(
                f"BlockSparsity{self.block_shape} is larger than {_label(layer, weight)} "
                f"of shape {shape}."
            )

    def mask_and_count(self, scores, sparsity):
        scores = ops.abs(ops.cast(scores, "float32"))
        shape = tuple(scores.shape)
        block = self._full_block(len(shape))
        blocks = [-(-s // b) for s, b in zip(shape, block, strict=True)]
        pad = [[0, n * b - s] for s, b, n in zip(shape, block, blocks, strict=True)]
        split = [d for n, b in zip(blocks, block, strict=True) for d in (n, b)]
        inner = tuple(range(1, 2 * len(shape), 2))
        padded = ops.reshape(ops.pad(scores, pad), split)
        # Entries per block (edge blocks are smaller): known from the shapes.
        real = np.ones(shape, "int32")
        real = np.pad(real, pad).reshape(split).sum(axis=inner).astype("int32")
        if self.pooling == "max":
            # A block holding a NaN scores NaN (ranked last), as with "avg".
            pooled = ops.where(
                ops.any(ops.isnan(padded), axis=inner),
                float("nan"), ops.max(padded, axis=inner),
            )
        else:
            pooled = ops.sum(padded, axis=inner) / real.astype("float32")
        keep_blocks = Magnitude().mask(pooled, sparsity)
        count = ops.sum(ops.where(keep_blocks, 0, real))
        keep = keep_blocks
        for axis, b in enumerate(block):
            keep = ops.repeat(keep, b, axis=axis)
        return keep[tuple(slice(0, d) for d in shape)], count

    def get_config(self) -> dict:
        return {"block_shape": list(self.block_shape), "pooling": self.pooling}


@keras.saving.register_keras_serializable(package="prunemix")
class InputBlockSparsity(PruningPattern):
    """Blocks of `size` consecutive inputs per output unit, for sparse kernels.

    On a Dense kernel `(in, out)` this is `BlockSparsity((size, 1))`: what
    LiteRT's sparse FULLY_CONNECTED kernel runs (1x4 blocks in its `(out, in)`
    layout for float, 1x16 for int8). On an EinsumDense kernel the blocks lie
    along the last input axis of its equation. Each weight gets the concrete
    `BlockSparsity` at build time, so an exact number of blocks is pruned.

    Args:
        size: inputs per block (4 for float LiteRT, 16 for int8).

    Raises:
        ValueError: for a bad size; at build time, for a weight that is not a
            Dense or EinsumDense kernel, or whose input length is not a
            multiple of `size`.
    """

    alias = "input_blocks"

    def __init__(self, size: int = 4):
        self.size = _validate.integer(size, "size", where="InputBlockSparsity")

    def _axis(self, layer, weight) -> int:
        axes = kernel_input_axes(layer, weight)
        if not axes:
            raise ValueError(
                f"InputBlockSparsity needs a Dense or EinsumDense kernel; "
                f"{_label(layer, weight)} is not one."
            )
        return axes[-1]

    def check(self, layer, weight) -> None:
        axis = self._axis(layer, weight)
        if weight.shape[axis] % self.size:
            raise ValueError(
                f"InputBlockSparsity({self.size}): {_label(layer, weight)} has "
                f"{weight.shape[axis]} inputs along axis {axis}, not a multiple of "
                f"{self.size}. Exclude it with a `prunemix.Rule`."
            )

    def bind(self, layer, weight) -> PruningPattern:
        block = [1] * len(weight.shape)
        block[self._axis(layer, weight)] = self.size
        return BlockSparsity(tuple(block))

    def mask_and_count(self, scores, sparsity):
        raise ValueError("InputBlockSparsity is bound to each weight at build time.")

    def get_config(self) -> dict:
        return {"size": self.size}


@keras.saving.register_keras_serializable(package="prunemix")
class NMSparsity(PruningPattern):
    """N:M sparsity: `n` zeros in every group of `m` along the input axis.

    Groups are `m` consecutive entries along the input axis (2:4 is what
    sparse tensor cores run).

    The pattern fixes the sparsity at `n / m`; the schedule decides when the
    masks are recomputed (from `begin_step`, every `frequency` steps), and
    nothing is pruned while the schedule's target is 0. A rule's own
    `final_sparsity`, or bounds that exclude `n / m`, are rejected at build
    time: the pattern cannot honour them. The masks are recomputed at each
    update from the current scores, and saved and restored with the model.

    Args:
        n: zeros per group, `1 <= n < m`.
        m: group size.
        axis: the grouping axis; default: the weight's input axis, from its
            layer (`layer_input_axis`: Dense 0; EinsumDense from its equation,
            so attention projections group along their input features, never
            across heads; conv -2; conv-transpose -1; Embedding and RNN cells
            0), fixed per weight at build time. The weight's length along it
            must be a multiple of `m`.

    Raises:
        ValueError: if `n >= m` or either is not a positive int; at build
            time, for a weight of rank < 2 or whose axis is not a multiple
            of `m`.
    """

    alias = "n:m"

    def __init__(self, n: int = 2, m: int = 4, axis: int | None = None):
        for name, value in (("n", n), ("m", m)):
            _validate.integer(value, name, where="NMSparsity")
        if n >= m:
            raise ValueError(
                f"NMSparsity: `n` ({n}) must be smaller than `m` ({m}); n zeros are "
                "kept out of every m entries."
            )
        self.n, self.m, self.axis = n, m, axis

    def _axis(self, rank: int) -> int:
        axis = input_axis(rank) if self.axis is None else self.axis
        return axis % rank

    def bind(self, layer, weight) -> PruningPattern:
        if self.axis is not None:
            return self
        return NMSparsity(self.n, self.m, axis=layer_input_axis(layer, weight))

    def check(self, layer, weight) -> None:
        _check_rank(self, layer, weight, 2)
        rank = len(weight.shape)
        if self.axis is not None:
            _check_axis(self, self.axis, layer, weight)
        axis = self._axis(rank) if self.axis is not None else layer_input_axis(layer, weight)
        length = weight.shape[axis]
        if length % self.m:
            raise ValueError(
                f"NMSparsity({self.n}, {self.m}): {_label(layer, weight)} has {length} "
                f"entries along axis {axis}, not a multiple of {self.m}. "
                "Exclude it or give it another pattern with a `prunemix.Rule`."
            )

    def check_target(self, final_sparsity, bounds, where: str) -> None:
        fixed = self.n / self.m
        if final_sparsity is not None and final_sparsity != fixed:
            raise ValueError(
                f"{where}: NMSparsity({self.n}, {self.m}) prunes exactly {fixed:g}; it "
                f"cannot honour final_sparsity={final_sparsity}. Drop `final_sparsity` "
                "or use another pattern."
            )
        low, high = bounds
        if not low <= fixed <= high:
            raise ValueError(
                f"{where}: NMSparsity({self.n}, {self.m}) prunes exactly {fixed:g}, "
                f"outside min_sparsity={low}, max_sparsity={high}."
            )

    def mask_and_count(self, scores, sparsity=None):
        scores = ops.cast(scores, "float32")
        rank = len(scores.shape)
        axis = self._axis(rank)
        perm = [a for a in range(rank) if a != axis] + [axis]
        moved = ops.transpose(masks.rank_bits(scores), perm)
        groups = ops.reshape(moved, [-1, self.m])
        # The n lowest of each group (NaN last); `top_k` breaks ties by lower index.
        _, lowest = ops.top_k(-groups, k=self.n)
        pruned = ops.sum(ops.one_hot(lowest, self.m, dtype="int32"), axis=-2) > 0
        keep = ops.reshape(ops.logical_not(pruned), ops.shape(moved))
        keep = ops.transpose(keep, [int(a) for a in np.argsort(perm)])
        count = ops.convert_to_tensor(math.prod(scores.shape) // self.m * self.n, "int32")
        if sparsity is None:
            return keep, count
        # A fixed pattern: nothing is pruned while the target is 0.
        off = ops.convert_to_tensor(sparsity) <= 0
        return keep | off, ops.where(off, 0, count)

    def get_config(self) -> dict:
        return {"n": self.n, "m": self.m, "axis": self.axis}


@keras.saving.register_keras_serializable(package="prunemix")
class StructuredSparsity(PruningPattern):
    """Prune whole output units / filters, or whole input channels.

    Each unit is scored by the L1 or L2 norm of its scores (of `|w|` by
    default) over all other axes; exactly `round(sparsity * units)` units of
    lowest norm are zeroed.

    Args:
        axis: `"output"` (Dense units, Conv filters: axis -1), `"input"`
            (axis 0 for rank-2 kernels, -2 for conv kernels), or an int.
        norm: `"l1"` or `"l2"`.

    Raises:
        ValueError: for a bad axis or norm; at build time, for a weight of
            rank < 2.
    """

    alias = "structured"

    def __init__(self, axis: str | int = "output", norm: str = "l2"):
        named = axis in ("output", "input")
        if not named and (not isinstance(axis, int) or isinstance(axis, bool)):
            raise ValueError(
                "StructuredSparsity: `axis` must be 'output', 'input' or an int. Received: "
                f"axis={axis!r}"
            )
        _validate.one_of(norm, "norm", ("l1", "l2"), where="StructuredSparsity")
        self.axis, self.norm = axis, norm

    def _axis(self, rank: int) -> int:
        if self.axis == "output":
            return rank - 1
        if self.axis == "input":
            return input_axis(rank) % rank
        return self.axis % rank

    def check(self, layer, weight) -> None:
        _check_rank(self, layer, weight, 2)
        if isinstance(self.axis, int):
            _check_axis(self, self.axis, layer, weight)

    def bind(self, layer, weight) -> PruningPattern:
        if isinstance(self.axis, int):
            return self
        find = layer_input_axis if self.axis == "input" else layer_output_axis
        return StructuredSparsity(find(layer, weight), self.norm)

    def mask_and_count(self, scores, sparsity):
        scores = ops.cast(scores, "float32")
        rank = len(scores.shape)
        axis = self._axis(rank)
        others = [a for a in range(rank) if a != axis]
        if self.norm == "l1":
            norms = ops.sum(ops.abs(scores), axis=others)
        else:
            norms = ops.sqrt(ops.sum(ops.square(scores), axis=others))
        keep, units = Magnitude().mask_and_count(norms, sparsity)
        shape = [1] * rank
        shape[axis] = -1
        per_unit = math.prod(scores.shape) // scores.shape[axis]
        return ops.broadcast_to(ops.reshape(keep, shape), ops.shape(scores)), units * per_unit

    def get_config(self) -> dict:
        return {"axis": self.axis, "norm": self.norm}


def global_masks(scores: list, sparsity, bounds: list) -> list:
    """Keep-masks for weights sharing one threshold (`GlobalMagnitude`).

    Exactly `round(sparsity * total)` entries are pruned over all `scores`,
    the lowest first, while weight `i` loses between `bounds[i][0]` and
    `bounds[i][1]` (fractions) of its entries. The total is clipped into what
    the bounds allow.
    """
    sizes = [math.prod(s.shape) for s in scores]
    flat = [ops.reshape(ops.cast(s, "float32"), [-1]) for s in scores]
    k = masks.pruned_count(sparsity, sum(sizes))
    bounded = any(b != (0.0, 1.0) for b in bounds)
    if not bounded:
        return _split(masks.lowest_k_mask(ops.concatenate(flat, 0), k), scores)
    lows = [masks.pruned_count(lo, n) for (lo, _), n in zip(bounds, sizes, strict=True)]
    highs = [masks.pruned_count(hi, n) for (_, hi), n in zip(bounds, sizes, strict=True)]
    k = ops.clip(k, sum(lows), sum(highs))
    forced, candidates = [], []
    for f, lo, hi in zip(flat, lows, highs, strict=True):
        must = ops.logical_not(masks.lowest_k_mask(f, lo))  # the lo lowest: pruned
        may = ops.logical_not(masks.lowest_k_mask(f, hi))  # the hi lowest: allowed
        forced.append(must)
        candidates.append(ops.where(may & ops.logical_not(must), ops.abs(f), float("inf")))
    chosen = masks.lowest_k_mask(ops.concatenate(candidates, 0), k - sum(lows))
    return [keep & ops.logical_not(ops.reshape(must, s.shape))
            for must, keep, s in zip(forced, _split(chosen, scores), scores, strict=True)]


def _split(flat, scores) -> list:
    """`flat` cut into pieces shaped like `scores`, in order."""
    out, start = [], 0
    for s in scores:
        size = math.prod(s.shape)
        out.append(ops.reshape(flat[start:start + size], s.shape))
        start += size
    return out


def _zeros(keep):
    """Pruned entries of a keep-mask, an int32 scalar."""
    return ops.sum(ops.cast(ops.logical_not(keep), "int32"))


def get(identifier: Any) -> PruningPattern:
    """A pattern from a pattern, `None` (Magnitude), a name or a config."""
    if identifier is None:
        return Magnitude()
    if isinstance(identifier, PruningPattern):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _REGISTRY:
        return _REGISTRY[identifier.lower()]()
    if isinstance(identifier, dict):
        pattern = keras.saving.deserialize_keras_object(identifier)
        if isinstance(pattern, PruningPattern):
            return pattern
    classes = ", ".join(cls.__name__ for cls in _REGISTRY.values())
    raise TypeError(
        f"Expected a pruning pattern ({classes}) or one of {sorted(_REGISTRY)}. "
        f"Received: {identifier!r}"
    )
