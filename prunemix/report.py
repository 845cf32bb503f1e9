"""Reports: how sparse a model's prunable weights are, and how small they compress."""

from __future__ import annotations

import dataclasses
import gzip
import io

import keras
import numpy as np

from prunemix.prunable import locate_prunable_weights

__all__ = ["SparsityReport", "WeightSparsity", "compressed_size", "model_weights", "table",
           "sparsity_report"]


def table(header: tuple, rows: list, footer: str = "") -> str:
    """The text table every report prints: left-aligned columns two spaces
    apart, a dashed rule under the header, then `footer` after a blank line.

    >>> print(table(("op", "rows"), [("FULLY_CONNECTED", 3), ("CONV_2D", 12)]))
    op               rows
    ---------------  ----
    FULLY_CONNECTED  3
    CONV_2D          12
    """
    cells = [tuple(map(str, row)) for row in [header, *rows]]
    widths = [max(len(c) for c in col) for col in zip(*cells, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + (f"\n\n{footer}" if footer else "")


def model_weights(model) -> list:
    """The model's variables, without its pruner's (if it has one)."""
    pruner = getattr(model, "pruner", None)
    skip = {id(v) for v in pruner.weights} if pruner is not None else set()
    return [v for v in model.weights if id(v) not in skip]


@dataclasses.dataclass(frozen=True)
class WeightSparsity:
    """One row of a `SparsityReport`."""

    layer: str
    weight: str
    shape: tuple
    zeros: int
    size: int
    note: str = ""

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0


class SparsityReport(list):
    """Rows of `WeightSparsity`, one per prunable weight; `str()` is a table."""

    @property
    def zeros(self) -> int:
        return sum(row.zeros for row in self)

    @property
    def size(self) -> int:
        return sum(row.size for row in self)

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all rows."""
        return self.zeros / self.size if self.size else 0.0

    def __str__(self) -> str:
        notes = any(r.note for r in self)
        header = ("layer", "weight", "shape", "zeros", "sparsity") + (("note",) if notes else ())
        rows = [
            (r.layer, r.weight, "x".join(map(str, r.shape)), f"{r.zeros}/{r.size}",
             f"{r.sparsity:.2%}") + ((r.note,) if notes else ())
            for r in self
        ]
        rows.append(("total", "", "", f"{self.zeros}/{self.size}", f"{self.sparsity:.2%}")
                    + (("",) if notes else ()))
        return table(header, rows)


def sparsity_report(model: keras.Model) -> SparsityReport:
    """Counts the zeros of every prunable weight of `model`.

    Works on any built Keras model: a `PrunedModel`, a stripped copy, or a
    plain model (the same layers are considered prunable as in
    `PrunedModel`).

    Args:
        model: a built Keras model or layer.

    Returns:
        A `SparsityReport`: a list of `WeightSparsity` rows (layer path
        relative to the model, weight name, shape, zeros, size, sparsity, and
        a note for weights that cannot be pruned, such as empty ones) with
        totals; print it for a table.

    Example:

    ```python
    print(prunemix.sparsity_report(model))
    ```
    """
    report = SparsityReport()
    for _, weight, path, _ in locate_prunable_weights(model):
        value = np.asarray(keras.ops.convert_to_numpy(weight))
        layer_path, _, name = path.rpartition("/")
        report.append(
            WeightSparsity(
                layer=layer_path,
                weight=name,
                shape=tuple(value.shape),
                zeros=int(value.size - np.count_nonzero(value)),
                size=int(value.size),
                note="" if value.size else "empty: not pruned",
            )
        )
    return report


def compressed_size(model: keras.Model) -> int:
    """Bytes of the model's weights (without prunemix state) after gzip.

    Args:
        model: a Keras model.

    Returns:
        Size in bytes of all weight arrays, concatenated and gzipped at level 9.
    """
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as f:
        for variable in model_weights(model):
            f.write(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return buffer.tell()


