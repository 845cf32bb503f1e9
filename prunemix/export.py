"""After training: strip the pruning state, report sparsity and size."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import tempfile
import zipfile

import keras
import numpy as np

from prunemix import _keras_compat
from prunemix.model import PrunedModel
from prunemix.pruner import find_prunable_weights

__all__ = [
    "SparsityReport",
    "WeightSparsity",
    "compressed_size",
    "load_model",
    "sparsity_report",
    "strip_pruning",
    "to_tflite",
]


def _masked_values(model) -> dict:
    """Weight values with the masks applied, keyed by variable identity."""
    pruner = model.pruner if isinstance(model, PrunedModel) else None
    if pruner is None:
        return {}
    return {
        id(p.weight): np.where(np.asarray(p.mask), np.asarray(p.weight), 0).astype(
            p.weight.dtype
        )
        for p in pruner.pruned_weights
    }


def _model_weights(model) -> list:
    """The model's variables, without the pruner's."""
    pruner = model.pruner if isinstance(model, PrunedModel) else None
    skip = {id(v) for v in pruner.weights} if pruner is not None else set()
    return [v for v in model.weights if id(v) not in skip]


def _call_once(model, build_config: dict) -> None:
    """Runs a rebuilt subclassed model once on zeros of its recorded shapes,
    as `model.export()` requires a model that has been called."""

    def zeros(shape):
        return keras.ops.zeros([1 if d is None else d for d in shape], dtype=model.input_dtype)

    if "input_shape" in build_config:
        model(keras.tree.map_shape_structure(zeros, build_config["input_shape"]))
    elif "shapes_dict" in build_config:
        model(**{
            k.removesuffix("_shape"): keras.tree.map_shape_structure(zeros, v)
            for k, v in build_config["shapes_dict"].items()
        })


def strip_pruning(model: keras.Model) -> keras.Model:
    """Returns a copy of a pruned model with no prunemix state.

    The copy has the same layers and weights (pruned entries exactly zero,
    masks applied once more), no masks, no pruning step, and the same
    predictions. A `PrunedModel` built the functional way becomes a plain
    `keras.Model` whose `.keras` file loads with Keras alone, without
    prunemix (as long as its layers are built-in or importable).

    A subclassed `PrunedModel` is recreated from its config (its class and
    `get_config()` must allow that, as for any Keras save) and marked
    stripped: it has no pruner, trains without pruning, and exports
    (`model.export`) like any Keras model.

    A model that is not a `PrunedModel` is returned unchanged.

    Args:
        model: the model to strip.

    Returns:
        A `keras.Model` with the same predictions and no pruning state.

    Raises:
        ValueError: if a subclassed model cannot be recreated from its config.
    """
    if not isinstance(model, PrunedModel):
        return model
    masked = _masked_values(model)
    source = _model_weights(model)
    if isinstance(model, _keras_compat.functional_class()):
        config = model.get_config()
        for key in ("pruning_schedule", "pruning_policy", "prunemix_format"):
            config.pop(key, None)
        stripped = keras.Model.from_config(config)
    else:
        try:
            stripped = type(model).from_config(model.get_config())
            stripped._prunemix_stripped = True
            build_config = model.get_build_config()
            if build_config:
                stripped.build_from_config(build_config)
                _call_once(stripped, build_config)
        except (NotImplementedError, TypeError) as error:
            raise ValueError(
                f"Cannot strip '{model.name}': {type(model).__name__} cannot be "
                f"recreated from its config ({error}). Implement `get_config()` "
                "so that `from_config(get_config())` rebuilds the model."
            ) from error
    target = _model_weights(stripped)
    if len(target) != len(source):
        raise ValueError(
            f"Cannot strip '{model.name}': the recreated model has {len(target)} "
            f"weights, the original {len(source)}."
        )
    for dst, src in zip(target, source, strict=False):
        dst.assign(masked.get(id(src), src))
    return stripped


@dataclasses.dataclass(frozen=True)
class WeightSparsity:
    """One row of a `SparsityReport`."""

    layer: str
    weight: str
    shape: tuple
    zeros: int
    size: int

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
        header = ("layer", "weight", "shape", "zeros", "sparsity")
        rows = [
            (r.layer, r.weight, "x".join(map(str, r.shape)), f"{r.zeros}/{r.size}",
             f"{r.sparsity:.2%}")
            for r in self
        ]
        rows.append(("total", "", "", f"{self.zeros}/{self.size}", f"{self.sparsity:.2%}"))
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
                 for row in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def sparsity_report(model: keras.Model) -> SparsityReport:
    """Counts the zeros of every prunable weight of `model`.

    Works on any built Keras model: a `PrunedModel`, a stripped copy, or a
    plain model (the same layers are considered prunable as in
    `PrunedModel`).

    Args:
        model: a built Keras model or layer.

    Returns:
        A `SparsityReport`: a list of `WeightSparsity` rows (layer path,
        weight name, shape, zeros, size, sparsity) with totals; print it for
        a table.

    Example:

    ```python
    print(prunemix.sparsity_report(model))
    ```
    """
    report = SparsityReport()
    for layer, weight in find_prunable_weights(model):
        value = np.asarray(keras.ops.convert_to_numpy(weight))
        report.append(
            WeightSparsity(
                layer=layer.path or layer.name,
                weight=weight.name,
                shape=tuple(value.shape),
                zeros=int(value.size - np.count_nonzero(value)),
                size=int(value.size),
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
        for variable in _model_weights(model):
            f.write(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return buffer.tell()


def to_tflite(model: keras.Model, sparse: bool = True) -> bytes:
    """Converts a (pruned) model to a LiteRT / TFLite flatbuffer.

    A `PrunedModel` is stripped first. The model is exported as a SavedModel
    (`model.export`, the supported path from Keras 3) and converted with
    `tf.lite.TFLiteConverter.from_saved_model`; with `sparse=True` the
    converter's `EXPERIMENTAL_SPARSITY` optimization stores sparse weights
    in a compressed format. Run the result with `tf.lite.Interpreter` or
    `ai_edge_litert.interpreter.Interpreter` (LiteRT from PyPI).

    Args:
        model: a built Keras model.
        sparse: whether to ask the converter for the sparse encoding.

    Returns:
        The `.tflite` file contents.

    Example:

    ```python
    open("model.tflite", "wb").write(prunemix.to_tflite(model))
    ```
    """
    import tensorflow as tf

    model = strip_pruning(model)
    with tempfile.TemporaryDirectory() as directory:
        model.export(directory, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        if sparse:
            converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        return converter.convert()


def load_model(filepath, **kwargs) -> keras.Model:
    """`keras.saving.load_model` with clear errors for files that are not models.

    Keras reports a truncated `.keras` file as "File not found"; this checks
    the file first, then loads it with Keras (prunemix's classes are
    registered, so `keras.saving.load_model` itself works on good files).

    Args:
        filepath: path to a `.keras` file.
        **kwargs: passed to `keras.saving.load_model` (`compile`,
            `custom_objects`, `safe_mode`).

    Returns:
        The model.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if the file is not a complete `.keras` archive (not a
            zip, truncated, or without `config.json`), or was saved with a
            newer prunemix layout.

    Example:

    ```python
    model = prunemix.load_model("pruned.keras")
    ```
    """
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path}")
    problem = None
    if not zipfile.is_zipfile(path):
        problem = "it is not a zip archive (truncated, or not written by `model.save`)"
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                bad = archive.testzip()
            if bad is not None:
                problem = f"its member {bad!r} is corrupt (truncated or damaged)"
            elif "config.json" not in names:
                problem = "it has no config.json (not written by `model.save`)"
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            problem = f"it cannot be read as a zip archive ({error})"
    if problem:
        raise ValueError(f"{path} is not a complete Keras model file: {problem}.")
    return keras.saving.load_model(path, **kwargs)
