"""One-shot pruning from calibration data: magnitude, Wanda and SparseGPT.

`prune_oneshot` prunes the Dense, EinsumDense and Conv kernels of a built
model in place, from a few calibration batches and no training. Layers are
taken in the order the model calls them; each layer's statistics come from
inputs produced by the layers before it, already pruned (SparseGPT's
sequential mode). Only per-layer statistics are kept: the input Gram matrix
(`d_in x d_in`) for SparseGPT, the input feature norms for Wanda.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from prunemix import _validate
from prunemix import policy as policy_lib
from prunemix.axes import einsum_specs, kernel_input_axes, layer_input_axis
from prunemix.patterns import Magnitude, NMSparsity
from prunemix.prunable import locate_prunable_weights
from prunemix.report import SparsityReport, WeightSparsity

__all__ = ["METHODS", "input_feature_norms", "prune_oneshot"]

METHODS = ("magnitude", "wanda", "sparsegpt")
_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


class _Stop(Exception):  # noqa: N818 - control flow, not an error
    """Ends a calibration forward pass once the layers it was for have run."""


class _Target:
    """One kernel as a `(d_out, d_in)` matrix, and its inputs as `(n, d_in)` rows."""

    def __init__(self, layer, weight, path, sparsity, nm):
        self.layer, self.weight, self.path = layer, weight, path
        self.sparsity, self.nm = sparsity, nm
        shape = tuple(weight.shape)
        if isinstance(layer, _CONVS):
            if layer.groups != 1 or layer.data_format != "channels_last":
                raise ValueError(
                    f"prune_oneshot: layer '{layer.name}' ({type(layer).__name__}) has "
                    f"groups={layer.groups}, data_format={layer.data_format!r}; one-shot "
                    "pruning takes ungrouped channels_last convolutions. Exclude it with "
                    "`policy=[prunemix.Rule(...)]`."
                )
            self.d_in = math.prod(shape[:-1])
        else:
            axes = kernel_input_axes(layer, weight)
            if axes != tuple(range(len(axes))) or not axes or not self._trailing(layer, axes):
                raise ValueError(
                    f"prune_oneshot: layer '{layer.name}' ({type(layer).__name__}) sums its "
                    f"input over kernel axes {axes}, which are not the kernel's leading axes "
                    "in the input's trailing order; exclude it with `policy=`."
                )
            self.d_in = math.prod(shape[:len(axes)])
        self.shape = shape
        length = shape[layer_input_axis(layer, weight)]
        if nm is not None and length % nm[1]:
            # Groups run along the input axis, innermost in the flattened
            # inputs (a conv's input channels), as NMSparsity's do.
            raise ValueError(
                f"prune_oneshot: {nm[0]}:{nm[1]} sparsity needs the input axis of "
                f"'{path}' ({length}) to be a multiple of {nm[1]}."
            )
        self.gram = None
        self.sumsq = None
        self.rows = 0

    @staticmethod
    def _trailing(layer, axes) -> bool:
        if not isinstance(layer, keras.layers.EinsumDense):
            return True
        inputs, kernel, _ = einsum_specs(layer)
        return inputs.endswith(kernel[:len(axes)])

    def matrix(self) -> np.ndarray:
        value = np.asarray(keras.ops.convert_to_numpy(self.weight), np.float64)
        return value.reshape(self.d_in, -1).T

    def assign(self, matrix: np.ndarray) -> None:
        self.weight.assign(matrix.T.reshape(self.shape).astype(self.weight.dtype))

    def features(self, x) -> np.ndarray:
        """The layer's input as rows of `d_in` features (conv: its patches)."""
        if isinstance(self.layer, _CONVS):
            # im2col by a convolution with the identity: patches in the
            # kernel's own (spatial..., in) order.
            eye = np.eye(self.d_in, dtype="float32").reshape(*self.shape[:-1], self.d_in)
            x, padding = keras.ops.cast(x, "float32"), self.layer.padding
            if padding == "causal":
                left = self.layer.dilation_rate[0] * (self.shape[0] - 1)
                x, padding = keras.ops.pad(x, [[0, 0], [left, 0], [0, 0]]), "valid"
            x = keras.ops.conv(x, eye, strides=self.layer.strides, padding=padding,
                               dilation_rate=self.layer.dilation_rate,
                               data_format="channels_last")
        return np.asarray(keras.ops.convert_to_numpy(x), np.float32).reshape(-1, self.d_in)

    def collect(self, x, method: str) -> None:
        rows = self.features(x)
        self.rows += len(rows)
        if method == "sparsegpt":
            rows = rows.astype(np.float64)  # H^-1 amplifies float32 rounding
            gram = rows.T @ rows
            self.gram = gram if self.gram is None else self.gram + gram
        elif method == "wanda":
            sumsq = np.square(rows, dtype=np.float64).sum(axis=0)
            self.sumsq = sumsq if self.sumsq is None else self.sumsq + sumsq


def _batches(data, batch_size: int) -> Iterable:
    """Model inputs, batch by batch, from arrays, dicts, a dataset or an iterable."""
    if isinstance(data, list | tuple) and data and all(isinstance(s, str) for s in data):
        data = np.asarray(data, dtype=object)  # texts, for a task's preprocessor
    if isinstance(data, np.ndarray) or (
        isinstance(data, dict) and all(isinstance(v, np.ndarray) for v in data.values())
    ):
        n = len(data) if isinstance(data, np.ndarray) else len(next(iter(data.values())))
        for start in range(0, n, batch_size):
            yield keras.tree.map_structure(lambda v, s=start: v[s:s + batch_size], data)
        return
    for batch in data:
        if isinstance(batch, tuple) and len(batch) in (2, 3):
            batch = batch[0]  # (x, y) or (x, y, sample_weight), as `fit` takes them
        yield batch


def _counts(total_rows: int, per_row: int, sparsity: float) -> np.ndarray:
    """Pruned entries per row, summing to exactly `round(sparsity * size)`."""
    edges = np.round(sparsity * per_row * np.arange(total_rows + 1)).astype(np.int64)
    return np.diff(edges)


def _lowest(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Row-wise masks (True = pruned) of the `counts[i]` lowest scores of row i,
    ties by index."""
    order = np.argsort(scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None], axis=1)
    return ranks < counts[:, None]


def _nm_lowest(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Masks (True = pruned) of the `n` lowest scores in each group of `m`
    consecutive inputs of every row."""
    rows, cols = scores.shape
    grouped = scores.reshape(rows * cols // m, m)
    return _lowest(grouped, np.full(len(grouped), n)).reshape(rows, cols)


def _select(scores: np.ndarray, target: _Target, per_output: bool) -> np.ndarray:
    if target.nm is not None:
        return _nm_lowest(scores, *target.nm)
    if per_output:
        return _lowest(scores, _counts(scores.shape[0], scores.shape[1], target.sparsity))
    flat = scores.reshape(1, -1)
    return _lowest(flat, np.array([round(target.sparsity * flat.size)])).reshape(scores.shape)


def _sparsegpt(w: np.ndarray, target: _Target, damping: float, block: int) -> tuple:
    """SparseGPT (Frantar & Alistarh 2023): masks chosen column block by
    column block from `w^2 / diag(H^-1)^2`, each pruned column's error spread
    over the columns after it. Returns `(new w, pruned mask)`."""
    gram = 2.0 * target.gram / max(target.rows, 1)
    dead = np.diag(gram) == 0
    gram[dead, dead] = 1.0  # inputs never seen: any weight there is as good
    gram[np.diag_indices_from(gram)] += damping * np.mean(np.diag(gram))
    try:
        inverse = np.linalg.inv(np.linalg.cholesky(gram))
        hinv = np.linalg.cholesky(inverse.T @ inverse).T  # upper Cholesky of H^-1
    except np.linalg.LinAlgError as error:
        raise ValueError(
            f"prune_oneshot: the calibration Hessian of '{target.path}' is singular even "
            f"with damping={damping}; raise `damping` or give more calibration data."
        ) from error
    w = w.copy()
    rows, cols = w.shape
    pruned = np.zeros_like(w, dtype=bool)
    per_block = None
    if target.nm is None:
        edges = np.round(target.sparsity * rows * np.minimum(
            np.arange(0, cols + block, block), cols)).astype(np.int64)
        per_block = np.diff(edges)
    for b, i1 in enumerate(range(0, cols, block)):
        i2 = min(i1 + block, cols)
        w1, h1 = w[:, i1:i2].copy(), hinv[i1:i2, i1:i2]
        err = np.zeros_like(w1)
        mask = np.zeros_like(w1, dtype=bool)
        if per_block is not None:
            scores = (w1 / np.diag(h1)[None]) ** 2
            mask = _lowest(scores.reshape(1, -1), per_block[b:b + 1]).reshape(w1.shape)
        for i in range(i2 - i1):
            if target.nm is not None and i % target.nm[1] == 0:
                n, m = target.nm
                scores = (w1[:, i:i + m] / np.diag(h1)[i:i + m][None]) ** 2
                mask[:, i:i + m] = _nm_lowest(scores, n, m)
            column = w1[:, i]
            q = np.where(mask[:, i], 0.0, column)
            err[:, i] = (column - q) / h1[i, i]
            w1[:, i:] -= np.outer(err[:, i], h1[i, i:])
            w1[:, i] = q
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ hinv[i1:i2, i2:]
        pruned[:, i1:i2] = mask
    w[pruned] = 0.0
    return w, pruned


def _prune(target: _Target, method: str, damping: float, block: int) -> np.ndarray:
    """Prunes one kernel in place; returns its keep-mask shaped like the kernel."""
    w = target.matrix()
    if method == "sparsegpt":
        w, pruned = _sparsegpt(w, target, damping, block)
    else:
        scores = np.abs(w)
        if method == "wanda":
            scores = scores * np.sqrt(target.sumsq)[None]
        pruned = _select(scores, target, per_output=method == "wanda")
        w = np.where(pruned, 0.0, w)
    target.assign(w)
    return (~pruned).T.reshape(target.shape)


def _targets(model, sparsity: float, nm, rules: list) -> list:
    found = []
    for layer, weight, path, _ in locate_prunable_weights(model):
        if not _known(layer) or weight is not getattr(layer, "kernel", None):
            continue
        target, pattern = sparsity, nm
        rule = next((r for r in rules if r.matches(layer, weight, path)), None)
        if rule is not None:
            if rule.exclude:
                continue
            if rule.final_sparsity is not None:
                target = rule.final_sparsity
            if rule.pattern is not None:
                pattern = _nm_of(rule.pattern, target)
        found.append(_Target(layer, weight, path, target, pattern))
    if not found:
        raise ValueError(
            f"prune_oneshot: model '{model.name}' has no Dense, EinsumDense or Conv kernel "
            "to prune (or the policy excludes them all)."
        )
    return found


def _known(layer) -> bool:
    """Whether `layer` computes `x @ kernel` (+ bias, activation) as its Keras
    class does: a subclass with its own `call` (or `convolution_op`), or a
    LoRA-enabled layer, computes something else and is left as it is."""
    base = next((c for c in (keras.layers.Dense, keras.layers.EinsumDense, *_CONVS)
                 if isinstance(layer, c)), None)
    if base is None or getattr(layer, "lora_enabled", False):
        return False
    return all(getattr(type(layer), name, None) is getattr(base, name, None)
               for name in ("call", "convolution_op"))


def _nm_of(pattern, sparsity: float):
    if pattern is None or isinstance(pattern, Magnitude):
        return None
    if not isinstance(pattern, NMSparsity) or pattern.axis is not None:
        raise ValueError(
            "prune_oneshot: `pattern` must be None (unstructured) or "
            f"prunemix.NMSparsity(n, m) along the input axis. Received: pattern={pattern!r}"
        )
    if not math.isclose(sparsity, pattern.n / pattern.m):
        raise ValueError(
            f"prune_oneshot: NMSparsity({pattern.n}, {pattern.m}) prunes "
            f"{pattern.n / pattern.m:g} of each weight. Received: sparsity={sparsity}; "
            f"pass sparsity={pattern.n / pattern.m:g}."
        )
    return pattern.n, pattern.m


def _check_rules(rules: list) -> None:
    for i, rule in enumerate(rules):
        own = [name for name, value in (("schedule", rule.schedule), ("score", rule.score))
               if value is not None]
        if own or (rule.min_sparsity, rule.max_sparsity) != (0.0, 1.0):
            raise ValueError(
                f"prune_oneshot: policy rule {i} sets {own or ['min/max_sparsity']}, which "
                "one-shot pruning does not use; a rule may exclude, or set "
                "`final_sparsity` or an N:M `pattern`."
            )


def _order(model, targets: list, batches: list) -> list:
    """Groups of targets, in the order the model calls them; consecutive
    targets called on the same input tensor (q, k and v) share a group."""
    calls = []

    def spy(target, call):
        def wrapped(*args, **kwargs):
            if not any(t is target for t, _ in calls):
                calls.append((target, _first_input(args, kwargs)))  # held: no id reuse
            return call(*args, **kwargs)
        return wrapped

    with _patched(targets, spy):
        model(batches[0], training=False)
    missing = [t.path for t in targets if not any(t is c for c, _ in calls)]
    if missing:
        raise ValueError(
            f"prune_oneshot: the calibration data never reaches {missing}; they would "
            "be pruned without statistics. Exclude them with `policy=` or pass data that "
            "runs them."
        )
    groups = []
    for target, source in calls:
        if groups and groups[-1][1] is source:
            groups[-1][0].append(target)
        else:
            groups.append(([target], source))
    return [group for group, _ in groups]


def _first_input(args, kwargs):
    return args[0] if args else kwargs.get("inputs", next(iter(kwargs.values()), None))


class _patched:  # noqa: N801 - a context manager used like a function
    """Replaces each target layer's `call` on the instance while inside."""

    def __init__(self, targets, make):
        self.targets, self.make = targets, make

    def __enter__(self):
        for target in self.targets:
            object.__setattr__(target.layer, "call", self.make(target, target.layer.call))

    def __exit__(self, *exc):
        for target in self.targets:
            if "call" in vars(target.layer):
                object.__delattr__(target.layer, "call")


def prune_oneshot(
    model: keras.Model,
    calibration_data: Any,
    sparsity: float = 0.5,
    method: str = "sparsegpt",
    pattern: Any = None,
    policy: Any = None,
    *,
    batch_size: int = 32,
    damping: float = 0.01,
    block_size: int = 128,
) -> SparsityReport:
    """Prunes a built model in place from calibration data, without training.

    Every prunable Dense, EinsumDense and Conv1D/2D/3D kernel is pruned to
    exactly `round(sparsity * size)` zeros (or `n` zeros in every group of
    `m` inputs with `pattern=NMSparsity(n, m)`), layer after layer in the
    order the model calls them. Each layer's statistics come from the
    calibration inputs as the already pruned layers before it produce them.
    Layers called on the same input (an attention block's query, key and
    value) share one calibration pass. Embeddings, RNNs and custom layers
    are left as they are.

    Methods:
    - `"magnitude"`: the lowest `|w|` of each kernel.
    - `"wanda"` (Sun et al. 2023): the lowest `|w_ij| * ||x_j||_2`, compared
      within each output (the input feature norms over all calibration rows).
    - `"sparsegpt"` (Frantar & Alistarh 2023): `H = 2 X^T X / n + λI`
      (`λ = damping * mean(diag H)`), masks chosen per block of
      `block_size` input columns from `w^2 / diag(H^-1)^2`, and the kept
      weights updated to make up for each pruned column (the OBS update
      through the Cholesky factor of `H^-1`). Inputs never seen in the
      calibration data get a unit diagonal.

    On a `PrunedModel` the pruner's masks are set to the one-shot masks and
    its counts updated, so `fit` continues from them (one-shot, then
    gradual recovery).

    Args:
        model: a built Keras model (functional, Sequential, subclassed, a
            keras_hub task or backbone).
        calibration_data: what `model(x)` takes: an array or dict of
            arrays (split into `batch_size` batches), a `tf.data.Dataset` or
            any iterable of batches (`(x, y)` tuples use `x`). For a
            keras_hub task with a preprocessor, also a list or array of
            strings, which go through the preprocessor first.
        sparsity: fraction of each kernel to prune, in [0, 1).
        method: `"magnitude"`, `"wanda"` or `"sparsegpt"`.
        pattern: None (unstructured) or `prunemix.NMSparsity(n, m)` along
            each layer's input axis (then `sparsity` must be `n / m`).
        policy: optional `prunemix.Rule`s: exclude layers (e.g. the LM
            head), or give them their own `final_sparsity` or N:M `pattern`.
        batch_size: batch size for array calibration data.
        damping: SparseGPT's dampening fraction λ.
        block_size: SparseGPT's column block size.

    Returns:
        A `SparsityReport` of the pruned kernels.

    Raises:
        ValueError: for a sparsity outside [0, 1), an unknown method, a
            pattern the method cannot honour, no calibration batch, a model
            with nothing to prune, or a singular Hessian; nothing is changed
            then. A failure midway restores every kernel it had changed.

    Example:

    ```python
    report = prunemix.prune_oneshot(model, x_calibration[:256], sparsity=0.5,
                                    method="sparsegpt")
    print(report)
    ```
    """
    _validate.fraction(sparsity, "sparsity")
    _validate.one_of(method, "method", METHODS)
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(
            f"prune_oneshot takes a built keras.Model. Received: {getattr(model, 'name', model)!r}"
        )
    if pattern is not None and isinstance(pattern, NMSparsity) and block_size % pattern.m:
        raise ValueError(
            f"`block_size` must be a multiple of m={pattern.m} for N:M groups. "
            f"Received: block_size={block_size}"
        )
    rules = policy_lib.get_policy(policy)
    _check_rules(rules)
    targets = _targets(model, float(sparsity), _nm_of(pattern, sparsity), rules)
    batches = [_preprocessed(model, b) for b in _batches(calibration_data, batch_size)]
    if not batches:
        raise ValueError("prune_oneshot: `calibration_data` holds no batch.")
    groups = _order(model, targets, batches)
    saved = {id(t): np.asarray(keras.ops.convert_to_numpy(t.weight)) for t in targets}
    keeps = {}
    try:
        for group in groups:
            if method != "magnitude":
                _calibrate(model, group, batches, method)
            for target in group:
                keeps[id(target.weight)] = _prune(target, method, damping, block_size)
                target.gram = target.sumsq = None
    except BaseException:
        for target in targets:
            target.weight.assign(saved[id(target)])
        raise
    _seed_pruner(model, keeps)
    return SparsityReport(
        WeightSparsity(layer=t.path.rpartition("/")[0], weight=t.path.rpartition("/")[2],
                       shape=t.shape, zeros=int((~keeps[id(t.weight)]).sum()),
                       size=math.prod(t.shape))
        for t in targets
    )


def input_feature_norms(model: keras.Model, calibration_data: Any,
                        batch_size: int = 32) -> dict:
    """The L2 norm of each input feature of every one-shot-prunable kernel.

    What Wanda weighs `|w|` by: a layer whose largest norm is many times its
    median has outlier features, where Wanda beats magnitude.

    Args:
        model: a built Keras model.
        calibration_data: as for `prune_oneshot`.
        batch_size: batch size for array calibration data.

    Returns:
        `{weight path: float64 array of d_in norms}`, in the order the model
        calls the layers.
    """
    targets = _targets(model, 0.0, None, [])
    batches = list(_batches(calibration_data, batch_size))
    if not batches:
        raise ValueError("input_feature_norms: `calibration_data` holds no batch.")
    order = [t for group in _order(model, targets, batches) for t in group]
    _calibrate(model, order, batches, "wanda")
    norms = {t.path: np.sqrt(t.sumsq) for t in order}
    for t in order:
        t.sumsq = None
    return norms


def _preprocessed(model, batch):
    """Texts through a keras_hub task's own preprocessor (its `x`); anything
    else as it is."""
    preprocessor = getattr(model, "preprocessor", None)
    texts = isinstance(batch, np.ndarray) and batch.dtype.kind in "OUS"
    if preprocessor is None or not texts:
        return batch
    out = preprocessor([s.decode() if isinstance(s, bytes) else str(s) for s in batch.tolist()])
    return out[0] if isinstance(out, tuple) else out


def _calibrate(model, group: list, batches: list, method: str) -> None:
    """Runs the calibration batches up to the group's last layer, collecting
    each group layer's input statistics."""
    last = group[-1]

    def collect(target, call):
        def wrapped(*args, **kwargs):
            target.collect(_first_input(args, kwargs), method)
            if target is last:
                raise _Stop
            return call(*args, **kwargs)
        return wrapped

    with _patched(group, collect):
        for batch in batches:
            try:
                model(batch, training=False)
            except _Stop:
                pass


def _seed_pruner(model, keeps: dict) -> None:
    """Sets a `PrunedModel`'s masks and counts to the one-shot ones."""
    from prunemix.model import PrunedModel

    if not isinstance(model, PrunedModel) or model._stripped:
        return
    pruner = model.build_pruning()
    counts = np.asarray(pruner.pruned_counts.numpy())
    for i, p in enumerate(pruner.pruned_weights):
        keep = keeps.get(id(p.weight))
        if keep is not None:
            p.mask.assign(keep)
            counts[i] = int(keep.size - keep.sum())
    pruner.pruned_counts.assign(counts)
