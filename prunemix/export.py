"""After training: strip the pruning state and ship (`.keras`, LiteRT)."""

from __future__ import annotations

import tempfile
from typing import Any

import keras
import numpy as np

from prunemix import _keras_compat, _validate
from prunemix.model import FunctionalPrunedModel, PrunedModel
from prunemix.report import model_weights

__all__ = ["copy_weights", "strip_pruning", "to_tflite"]


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


def copy_weights(source: keras.Model, target: keras.Model) -> keras.Model:
    """Copies the weights of `source` into `target`, matched by weight path.

    Every weight of `target` gets the value of the weight of `source` with
    the same path (`variable.path` relative to its model, e.g.
    `"token_embedding/embeddings"`); pruned entries stay exactly zero.

    For getting pruned weights into a model of another class with the same
    layers: e.g. a model pruned in place with `PrunedModel(lm.inputs,
    lm.outputs)` and stripped (a flat functional copy) back into a task.
    Pruning masks and state are not copied.

    Args:
        source: a model (a `PrunedModel`, stripped or not).
        target: a built model whose weight paths all exist in `source`.

    Returns:
        `target`, with the weights of `source`.

    Raises:
        TypeError: if `source` or `target` is not a `keras.Model`.
        ValueError: if either model is not built, or naming the paths of
            `target` that `source` lacks, or whose shapes differ; nothing is
            copied then.

    Example:

    ```python
    stripped = prunemix.strip_pruning(pruned_in_place)
    prunemix.copy_weights(stripped, keras_hub.models.GPT2CausalLM.from_preset(path))
    ```
    """
    def path(variable, model):  # relative to the model, when Keras prefixed its name
        prefix = f"{model.name}/"
        return variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path

    for role, model in (("source", source), ("target", target)):
        if not isinstance(model, keras.Model):
            raise TypeError(f"copy_weights: `{role}` must be a keras.Model. Received: {model!r}")
        if not model.built or not model.weights:
            raise ValueError(
                f"copy_weights: {role} model '{model.name}' has no weights yet (it is not "
                "built); build it first (call it once on data, or `model.build(shape)`)."
            )
    values = _masked_values(source)
    # The pruners' own variables (masks, step) are state, not weights: never copied.
    by_path = {path(v, source): v for v in model_weights(source)}
    wanted = {path(v, target): v for v in model_weights(target)}
    missing = [p for p in wanted if p not in by_path]
    wrong = [f"{p} {tuple(v.shape)} vs {tuple(by_path[p].shape)}"
             for p, v in wanted.items() if p in by_path and v.shape != by_path[p].shape]
    if missing or wrong:
        raise ValueError(
            f"copy_weights: model '{target.name}' has weights that model '{source.name}' "
            + (f"lacks: {missing}" if missing else "")
            + (f"{'; and ' if missing else ''}shaped otherwise: {wrong}" if wrong else "") + "."
        )
    for name, variable in wanted.items():
        found = by_path[name]
        variable.assign(values.get(id(found), keras.ops.convert_to_numpy(found)))
    return target


@_keras_compat.copies_live_layers
def strip_pruning(model: keras.Model) -> keras.Model:
    """Returns a copy of a pruned model with no prunemix state.

    The copy has the same layers and weights (pruned entries exactly zero,
    masks applied once more), no masks, no pruning step, and the same
    predictions. A `PrunedModel` built the functional way becomes a plain
    `keras.Model` whose `.keras` file loads with Keras alone, without
    prunemix (as long as its layers are built-in or importable). A copy made
    by `prune_model` from a model of its own class (a keras_hub task, say)
    becomes a plain instance of that class, re-created from its config:
    `save_to_preset` and `from_preset` work with keras_hub alone.

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
        TypeError: if `model` is not a `keras.Model`.
        ValueError: if a subclassed model cannot be recreated from its config.
    """
    _validate.keras_model(model, "strip_pruning")
    if not isinstance(model, PrunedModel):
        return model
    masked = _masked_values(model)
    source = model_weights(model)
    if isinstance(model, FunctionalPrunedModel) and _keras_compat.shared_across_nesting(model):
        # A layer of a nested model called again outside it (a tied LM head,
        # pruned in place): Keras's `from_config` would create it twice, so
        # the copy is of the flattened graph, which calls it once per use.
        flat = keras.Model(*_keras_compat.inline_nested(model), name=model.name)
        stripped = keras.models.clone_model(flat)
        source = flat.weights
    elif isinstance(model, _keras_compat.functional_class()):
        stripped = model._stripped_copy()
    else:
        try:
            stripped = model._stripped_copy()
            build_config = {
                k: v for k, v in (model.get_build_config() or {}).items() if k != "prunemix"
            }
            if build_config:
                stripped.build_from_config(build_config)
                _keras_compat.call_once(stripped, build_config)
        except (NotImplementedError, TypeError) as error:
            raise ValueError(
                f"Cannot strip '{model.name}': {type(model).__name__} cannot be "
                f"recreated from its config ({error}). Implement `get_config()` "
                "so that `from_config(get_config())` rebuilds the model."
            ) from error
    target = model_weights(stripped)
    if len(target) != len(source):
        raise ValueError(
            f"Cannot strip '{model.name}': the recreated model has {len(target)} "
            f"weights, the original {len(source)}."
        )
    for dst, src in zip(target, source, strict=False):
        dst.assign(masked.get(id(src), src))
    return stripped


_HALF = ("float16", "bfloat16", "mixed_float16", "mixed_bfloat16")


def _float32_copy(model: keras.Model) -> keras.Model:
    """`model`, or a copy computing in float32 when a layer computes in
    float16/bfloat16 (`mixed_float16` training): LiteRT's builtin kernels
    take no float16 compute ops (its float16 path stores the weights of a
    float32 model). The copy is made from the model's config with every
    dtype policy float32, and holds the same weights, cast."""
    layers = [model, *_keras_compat.nested_layers(model)]
    if not any(getattr(layer, "compute_dtype", "float32") in _HALF for layer in layers):
        return model

    def float32(config):
        if isinstance(config, dict):
            if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and \
                    isinstance(config.get("config"), dict):
                return {**config, "config": {**config["config"], "name": "float32"}}
            return {k: "float32" if k == "dtype" and v in _HALF else float32(v)
                    for k, v in config.items()}
        return [float32(v) for v in config] if isinstance(config, list) else config

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = type(model).from_config(float32(model.get_config()))
        _keras_compat.build_like(copy, model)
    except Exception as error:
        raise ValueError(
            f"to_tflite: model '{model.name}' computes in float16 (a mixed-precision "
            "policy), which LiteRT's kernels do not run, and a float32 copy cannot be made "
            f"from its config ({type(error).__name__}: {error}). Rebuild it under the "
            "float32 policy and copy the weights in (`prunemix.copy_weights`)."
        ) from error
    finally:
        keras.config.set_dtype_policy(previous)
    if [tuple(v.shape) for v in copy.weights] != [tuple(v.shape) for v in model.weights]:
        raise ValueError(f"to_tflite: the float32 copy of model '{model.name}' has other "
                         "weights than the model; its config does not describe it.")
    for target, source in zip(copy.weights, model.weights, strict=True):
        target.assign(keras.ops.cast(source, target.dtype))
    return copy


def to_tflite(
    model: keras.Model,
    sparse: bool = True,
    quantize: str | None = None,
    representative_dataset: Any = None,
) -> bytes:
    """Converts a (pruned) model to a LiteRT / TFLite flatbuffer.

    A `PrunedModel` is stripped first. The model is exported as a SavedModel
    (`model.export`, the supported path from Keras 3) and converted with
    `tf.lite.TFLiteConverter.from_saved_model`; with `sparse=True` the
    converter's `EXPERIMENTAL_SPARSITY` optimization stores sparse weights
    in a compressed format. `prunemix.tflite_report` says, op by op, whether
    LiteRT then runs a sparse kernel or densifies the weight at load; prune
    with `latency_policy()` for the former. Run the result with
    `prunemix.make_interpreter` (LiteRT from PyPI, or `tf.lite.Interpreter`).

    Args:
        model: a built Keras model.
        sparse: whether to ask the converter for the sparse encoding.
        quantize: None (float32), or `"int8"`: post-training dynamic-range
            quantization of the weights, or full-integer quantization when
            `representative_dataset` is given.
        representative_dataset: for `quantize="int8"`, a callable yielding
            lists of sample inputs (the converter's argument).

    Returns:
        The `.tflite` file contents.

    Raises:
        ValueError: for an unknown `quantize`, or a `representative_dataset`
            without `quantize="int8"`.

    Example:

    ```python
    open("model.tflite", "wb").write(prunemix.to_tflite(model))
    ```
    """
    import tensorflow as tf

    if quantize not in (None, "int8"):
        raise ValueError(f"`quantize` must be None or 'int8'. Received: quantize={quantize!r}")
    if representative_dataset is not None and quantize != "int8":
        raise ValueError("`representative_dataset` needs `quantize='int8'`.")
    model = _float32_copy(strip_pruning(model))
    with tempfile.TemporaryDirectory() as directory:
        model.export(directory, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
        if quantize == "int8":
            optimizations.append(tf.lite.Optimize.DEFAULT)
            if representative_dataset is not None:
                converter.representative_dataset = representative_dataset
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.optimizations = optimizations
        return converter.convert()
