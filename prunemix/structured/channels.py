"""`ChannelGroups`: prune whole channels group by group, as they will be removed.

The pattern is planned over the model's graph at build time
(`prunemix.structured.graph`): every weight slice of a removable channel (the
producing kernels' output slices, biases, BatchNormalization scale and
offset, depthwise kernels, and the reading layers' input slices) is masked
together, so a pruned channel is exactly zero everywhere and `shrink()`
removes it without changing a prediction.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from prunemix import _validate, masks, policy
from prunemix.patterns import PruningPattern
from prunemix.prunable import locate_weights
from prunemix.structured.graph import ChannelGraph, weight_value

__all__ = ["ChannelGroups", "plan"]


@keras.saving.register_keras_serializable(package="prunemix")
class ChannelGroups(PruningPattern):
    """Whole channels, pruned by dependency group (needs a functional graph).

    Channels that must go together (a layer's outputs and the inputs of the
    layers reading them, both branches of a residual `Add`, the inputs of a
    `Concatenate`, BatchNormalization and depthwise convolutions in between)
    form one *class*; classes that share a tensor form a *group*. In each
    group exactly `round(sparsity * n)` of its `n` removable channels are
    pruned (at least one is kept), those of lowest importance:

        importance(channel) = reduction over its coupled weight slices of
                              the slice's L1 (`sum |w|`) or L2 (`sqrt(sum w^2)`)
                              norm

    with `reduction="mean"` (default; a channel read by many layers does not
    outrank one read by few) or `"sum"`. The schedule's sparsity is the
    fraction of *channels* removed; weight sparsity is higher (a kernel loses
    rows and columns).

    Apply it to every layer (`Rule("*", pattern=ChannelGroups())`, or
    `pattern="channels"`). A group is pruned only when every prunable
    weight coupled in it uses this pattern: excluding a layer keeps its
    channels, and those of every layer coupled to it. Channels next to model
    inputs and outputs and to layers the graph does not understand are
    kept (`prunemix.channel_graph(model).summary()` says which).

    Args:
        norm: `"l2"` (default) or `"l1"`.
        reduction: `"mean"` (default) or `"sum"` over the coupled slices.
        round_to: keep a multiple of this many channels per group (e.g. 8 for
            hardware); rounded up, so at most that many more are kept.

    Raises:
        ValueError: for a bad argument; at build time, for a subclassed
            model (no graph), per-weight `min_sparsity`/`max_sparsity`, or
            two different channel schedules in one model.
    """

    alias = "channels"
    needs_graph = True

    def __init__(self, norm: str = "l2", reduction: str = "mean", round_to: int = 1):
        _validate.one_of(norm, "norm", ("l1", "l2"), where="ChannelGroups")
        _validate.one_of(reduction, "reduction", ("mean", "sum"), where="ChannelGroups")
        _validate.integer(round_to, "round_to", where="ChannelGroups")
        self.norm, self.reduction, self.round_to = norm, reduction, round_to
        self._plan = None

    def check_target(self, final_sparsity, bounds, where: str) -> None:
        if tuple(bounds) != (0.0, 1.0):
            raise ValueError(
                f"{where}: ChannelGroups prunes whole channel groups; per-weight "
                f"min_sparsity/max_sparsity {tuple(bounds)} do not apply. Use a rule's "
                "`final_sparsity` or exclude the layer."
            )

    def planned(self, groups: list, keys: list) -> ChannelGroups:
        copy = ChannelGroups(self.norm, self.reduction, self.round_to)
        copy._plan = (groups, list(keys))
        return copy

    @property
    def keys(self) -> list | None:
        """Keys of the planned weights, in the order `group_masks` takes them."""
        return None if self._plan is None else self._plan[1]

    def group_masks(self, scores: list, target, bounds: list) -> tuple:
        if self._plan is None:
            raise ValueError("ChannelGroups is planned over the model's graph when it is built.")
        groups, _ = self._plan
        power = 1.0 if self.norm == "l1" else 2.0
        sums = {}

        def axis_sums(i, axis):
            if (i, axis) not in sums:
                s = ops.abs(ops.cast(scores[i], "float32")) ** power
                others = [a for a in range(len(s.shape)) if a != axis]
                sums[(i, axis)] = ops.sum(s, axis=others) if others else s
            return sums[(i, axis)]

        axis_keep = {}
        for group in groups:
            n, blocked, members, touched = group
            importance = ops.zeros([n], "float32")
            for i, axis, positions, classes in members:
                local = ops.segment_sum(
                    ops.take(axis_sums(i, axis), positions), classes, num_segments=n
                )
                importance += local if power == 1.0 else ops.sqrt(local)
            if self.reduction == "mean":
                importance /= touched
            pruned = masks.pruned_count(target, n)
            if self.round_to > 1:
                total = n + blocked
                kept = -(-(total - pruned) // self.round_to) * self.round_to
                pruned = ops.maximum(total - kept, 0)
            pruned = ops.minimum(pruned, n - (blocked == 0))
            keep = masks.lowest_k_mask(importance, pruned)
            for i, axis, positions, classes in members:
                size = scores[i].shape[axis]
                axis_keep[(i, axis)] = ops.scatter_update(
                    ops.ones([size], "bool"), positions[:, None], ops.take(keep, classes)
                )
        keeps, counts = [], []
        for i, score in enumerate(scores):
            rank = len(score.shape)
            keep = ops.ones(score.shape, "bool")
            for (j, axis), vector in axis_keep.items():
                if j == i:
                    shape = [1] * rank
                    shape[axis] = -1
                    keep = keep & ops.reshape(vector, shape)
            keeps.append(keep)
            counts.append(ops.sum(ops.cast(ops.logical_not(keep), "int32")))
        return keeps, counts

    def get_config(self) -> dict:
        return {"norm": self.norm, "reduction": self.reduction, "round_to": self.round_to}


def _zeroed(graph: ChannelGraph, statistic: float):
    """Weight values with every masked channel weight zero: what each channel
    carries once its class is pruned. Statistics that training moves
    (BatchNormalization's moving mean and variance) read as `statistic`:
    the plan must not depend on their values today (a `.keras` reload plans
    before the saved values are read), so `plan` asks with two of them."""
    spaces = [s for s in graph.spaces if s.kind == "weight"]
    masked = {id(s.ref) for s in spaces if s.role == "mask"}
    moving = {id(s.ref): abs(statistic) if s.ref is getattr(s.layer, "moving_variance", None)
              else statistic for s in spaces if s.role == "slice" and id(s.ref) not in masked}

    def value_of(variable):
        value = weight_value(variable)
        if id(variable) in masked:
            return np.zeros_like(value)
        return np.full_like(value, moving[id(variable)]) if id(variable) in moving else value

    return value_of


def plan(model, located: list, specs: dict) -> tuple:
    """Plans the `ChannelGroups` specs of a model over its graph.

    Returns `(located, specs)`: with the coupled weights that are not
    prunable on their own (biases, BatchNormalization scale and offset)
    added, every planned weight given one planned pattern, and the chosen
    weights that are in no pruned group dropped. Without a `ChannelGroups`
    spec, both come back unchanged.
    """
    chosen = {k: s for k, s in specs.items() if s.pattern.needs_graph}
    if not chosen:
        return located, specs
    pairs = {(id(s.schedule), repr(s.pattern), id(s.score)) for s in chosen.values()}
    if len(pairs) > 1:
        raise ValueError(
            f"Model '{model.name}': every weight pruned with ChannelGroups must share one "
            "schedule, one ChannelGroups and one `score` (channels are coupled across "
            f"layers); these differ: {sorted(chosen)}."
        )
    first = next(iter(chosen.values()))
    graph = ChannelGraph(model)
    registry = {id(w) for _, w, _, _ in located}
    chosen_ids = {id(w) for _, w, _, k in located if k in chosen}
    # Removable whatever sign the moving statistics take: a channel whose
    # BatchNormalization (scale=False) outputs -mean/std must not be pruned
    # where only a zero can be removed (before a "same" convolution).
    removable = graph.removable(_zeroed(graph, 1.0)) & graph.removable(_zeroed(graph, -1.0))
    cls_of = graph.element_class
    weight_spaces = [s for s in graph.spaces if s.kind == "weight" and s.role == "mask"]
    by_class: dict = {}
    for space in weight_spaces:
        for c in np.unique(cls_of[space.elements]):
            by_class.setdefault(int(c), []).append(space)
    groups, planned_vars = [], {}
    for classes in graph.groups:
        spaces = {id(s): s for c in classes for s in by_class.get(c, [])}.values()
        if any(id(s.ref) in registry and id(s.ref) not in chosen_ids for s in spaces):
            continue  # a coupled weight is pruned another way, or excluded
        prunable = [c for c in classes if c in removable]
        if not prunable:
            continue
        index = {c: i for i, c in enumerate(prunable)}
        members, touched = [], np.zeros(len(prunable), "float32")
        for space in spaces:
            local = np.array([index.get(int(c), -1) for c in cls_of[space.elements]])
            positions = np.nonzero(local >= 0)[0]
            if not len(positions):
                continue
            var_index = planned_vars.setdefault(id(space.ref), (len(planned_vars), space))[0]
            members.append((var_index, space.axis, positions.astype("int32"),
                            local[positions].astype("int32")))
            touched[np.unique(local[positions])] += 1
        groups.append((len(prunable), len(classes) - len(prunable), members,
                       np.maximum(touched, 1)))
    if not groups:
        raise ValueError(
            f"ChannelGroups: model '{model.name}' has no channel group it can prune (every "
            "group touches a model input or output, a layer the graph does not understand, "
            "or a weight pruned another way). `prunemix.channel_graph(model).summary()` "
            "says why each is kept."
        )
    extra = [(s.layer, s.ref) for _, s in planned_vars.values() if id(s.ref) not in registry]
    located = located + locate_weights(model, extra)
    order = [entry for entry in located if id(entry[1]) in planned_vars]
    # Renumber the members in `located` order: the pruner hands scores so.
    renumber = {planned_vars[id(e[1])][0]: i for i, e in enumerate(order)}
    groups = [(n, b, [(renumber[i], a, p, c) for i, a, p, c in members], t)
              for n, b, members, t in groups]
    pattern = first.pattern.planned(groups, [e[3] for e in order])
    specs = {k: s for k, s in specs.items() if k not in chosen and
             not s.pattern.needs_graph}
    for _, _, _, key in order:
        # The rule's `score` ranks every coupled slice, the biases and
        # BatchNormalization weights the plan adds included.
        specs[key] = policy.Spec(key, first.schedule, pattern, first.score, (0.0, 1.0))
    return located, specs

