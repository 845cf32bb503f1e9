"""The one place prunemix touches private Keras API (checked on Keras 3.15).

Keep this module small: each helper names the private attribute it relies on.
"""

from __future__ import annotations

import functools
import inspect
import warnings

import keras

# Attributes of a layer that hold layers only as Keras's own bookkeeping
# (`Layer._layers`, `Functional._operations`) or prunemix's pruner: the walk
# below names a layer by the attribute its parent really assigned it to.
_BOOKKEEPING = frozenset({"_layers", "_operations", "_pruner", "_tracker"})


def nested_layers(model) -> list:
    """All layers below `model`, depth first, each once.

    Uses `Layer._flatten_layers` (Keras 3), which follows every tracked
    attribute: sublayers, nested models, and lists/dicts of layers.
    """
    return list(model._flatten_layers(include_self=False, recursive=True))


def _children(layer) -> list:
    """`(key, child)` for the layers directly below `layer`.

    Keys follow Keras's own saving (`keras.src.saving.saving_lib`, 3.15), so a
    mask always lands on the weight Keras restores the values of: a
    functional or Sequential model keys its layers by class and order
    (`dense`, `dense_1`: never by `layer.name`, which is generated and differs
    between two builds of the same model); any other layer by the attribute
    that holds the child (`encoder`, `blocks/0`, `named/scale`). Layers
    tracked only in `Layer._layers` fall back to their name.
    """
    found = []
    if isinstance(layer, functional_class() | keras.Sequential):
        from keras.src.utils.naming import to_snake_case

        used = {}
        for child in layer.layers:
            name = to_snake_case(type(child).__name__)
            used[name] = used.get(name, -1) + 1
            found.append((f"{name}_{used[name]}" if used[name] else name, child))
    for attr, value in vars(layer).items():
        if attr in _BOOKKEEPING or attr.startswith("_self_"):  # TF trackable bookkeeping
            continue
        if isinstance(value, keras.layers.Layer):
            found.append((attr, value))
        elif isinstance(value, list | tuple):
            found += [(f"{attr}/{i}", v) for i, v in enumerate(value)
                      if isinstance(v, keras.layers.Layer)]
        elif isinstance(value, dict):
            found += [(f"{attr}/{k}", v) for k, v in value.items()
                      if isinstance(v, keras.layers.Layer)]
    found += [(child.name, child) for child in getattr(layer, "_layers", ())]
    return found


def layer_paths(model) -> dict:
    """`{id(layer): (name_path, key_path)}` for every layer below `model`.

    `name_path` joins layer names from `model` down (what users see,
    relative to the model: `"encoder/dense_1"`); `key_path` joins the keys of
    `_children` (stable across `.keras` reload, `clone_model` and nesting the
    model in another). A layer reached twice keeps its first path.
    """
    paths = {id(model): ("", "")}
    pending = [model]
    while pending:
        parent = pending.pop(0)
        names, keys = paths[id(parent)]
        for key, child in _children(parent):
            if id(child) in paths or getattr(child, "_prunemix_is_pruner", False):
                continue
            paths[id(child)] = (f"{names}/{child.name}".lstrip("/"), f"{keys}/{key}".lstrip("/"))
            pending.append(child)
    del paths[id(model)]
    return paths


def attach_after_build(layer, name: str, value) -> None:
    """`setattr(layer, name, value)` even after `layer` is built.

    Keras 3 locks a layer's tracker (`Layer._tracker`) once built; a pruner
    attached later must still be tracked so its variables are saved.
    """
    tracker = getattr(layer, "_tracker", None)
    locked = bool(tracker is not None and tracker.locked)
    if locked:
        tracker.unlock()
    try:
        setattr(layer, name, value)
    finally:
        if locked:
            tracker.lock()


def inbound_count(layer) -> int:
    """How many times `layer` is called in functional graphs (`_inbound_nodes`)."""
    return len(layer._inbound_nodes)


def inbound_layers(layer) -> list:
    """The layers whose outputs `layer` takes at its first call in a graph
    (`Layer._inbound_nodes`, `Node.arguments`, `KerasTensor._keras_history`)."""
    if not layer._inbound_nodes:
        return []
    node = layer._inbound_nodes[0]
    return [t._keras_history.operation for t in node.arguments.keras_tensors]


def functional_class():
    """`keras.src.models.functional.Functional` (not exported by Keras 3)."""
    from keras.src.models.functional import Functional

    return Functional


def functional_of(model):
    """The functional model behind `model` (a Sequential's `_functional`,
    Keras 3.15), or `model` itself."""
    if isinstance(model, keras.Sequential):
        return model._functional
    return model


def graph_of(model):
    """`(inputs, outputs, [(layer, input tensors, output tensors), ...])` of a
    functional or Sequential model, calls in topological order; None for a
    subclassed model. Reads `Functional._nodes_by_depth`, `Node.operation`,
    `Node.input_tensors`, `Node.outputs` and a Sequential's `_functional`
    (Keras 3.15)."""
    model = functional_of(model)
    if not isinstance(model, functional_class()):
        return None
    calls = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            calls.append((node.operation, list(node.input_tensors), list(node.outputs)))
    return list(model.inputs), list(model.outputs), calls


def _source_has(function, text: str) -> bool:
    try:
        return text in inspect.getsource(function)
    except (OSError, TypeError):
        return False


def multi_worker_fit_bugs(strategy) -> tuple:
    """`(batch_reduce, scalar_reduce)`: whether `fit` under `strategy` meets
    keras-team/keras#20585 (checked on Keras 3.15 / TF 2.21), each False on a
    Keras that fixed it or for any other strategy.

    - `TensorFlowTrainer._maybe_symbolic_build` averages the first batch with
      `strategy.reduce("MEAN", batch, axis=None)`, which a tuple of
      `PerReplica` values fails in a multi-worker strategy;
    - `trainer.reduce_per_replica` reduces every log of a multi-worker step
      with `strategy.reduce("MEAN", v, axis=0)`: a scalar has no axis 0.

    Found by reading Keras's own source for the two calls, so the workaround
    turns itself off once Keras changes them.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    multi = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        trainer._collective_all_reduce_multi_worker(strategy)
    )
    return _keras_fit_bugs() if multi else (False, False)


@functools.cache
def _keras_fit_bugs() -> tuple:
    from keras.src.backend.tensorflow import trainer

    return (
        _source_has(trainer.TensorFlowTrainer._maybe_symbolic_build, "axis=None"),
        _source_has(trainer.reduce_per_replica, 'strategy.reduce("MEAN", v, axis=0)'),
    )


def first_batch_for_build(model, iterator, data_batch) -> tuple:
    """`(iterator, data_batch)` for `TensorFlowTrainer._maybe_symbolic_build`.

    While keras#20585 is in Keras (`multi_worker_fit_bugs`), the first batch
    of the epoch iterator is taken here, each distributed value replaced by
    its first local replica's value: the symbolic build needs its shapes, and
    Keras's own mean over a tuple of `PerReplica` values fails. The batch is
    consumed as Keras's own code does. Otherwise both come back unchanged.
    """
    import tensorflow as tf

    strategy = model.distribute_strategy
    if iterator is None or not multi_worker_fit_bugs(strategy)[0]:
        return iterator, data_batch
    for _, _, it in iterator:
        batch = next(it)
        return None, keras.tree.map_structure(
            lambda v: strategy.experimental_local_results(v)[0]
            if isinstance(v, tf.distribute.DistributedValues) else v,
            batch,
        )
    return None, data_batch


def shared_across_nesting(model) -> list:
    """`[(layer name, nested model name)]`: layers that a nested functional
    model holds and `model`'s own graph also calls (keras_hub's tied LM head:
    the backbone's token embedding, called again in reverse). Keras's
    `clone_model` and functional `from_config` create such a layer twice, so
    the copy has more weights than the original and does not reload.
    Reads `Functional._operations` (Keras 3.15)."""
    model = functional_of(model)
    if not isinstance(model, functional_class()):
        return []
    own = {id(op): op for op in model._operations}
    found = []
    for op in model._operations:
        if isinstance(op, functional_class() | keras.Sequential):
            for inner in nested_layers(op):
                if id(inner) in own:
                    found.append((inner.name, op.name))
    return found


def graph_structs(model) -> tuple:
    """`(inputs, outputs)` of a functional model as it was built: dicts stay
    dicts (`Function._inputs_struct`, `_outputs_struct`)."""
    return model._inputs_struct, model._outputs_struct


def inline_nested(model) -> tuple:
    """`(inputs, outputs)` of `model`'s graph with every nested functional or
    Sequential model's own graph called in its place, on new inputs: one flat
    graph, each layer once (shared layers called at several nodes). Runs
    `Functional._run_through_graph` (Keras 3.15)."""

    def inline(functional, inputs):
        def operation(op):
            if isinstance(op, functional_class() | keras.Sequential):
                inner = functional_of(op)
                return lambda *args, **kwargs: inline(inner, args[0] if len(args) == 1 else args)
            return op

        return functional._run_through_graph(inputs, operation_fn=operation)

    model = functional_of(model)
    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name),
        model._inputs_struct,
    )
    return inputs, inline(model, inputs)


def is_functional_call(args, kwargs) -> bool:
    """Whether constructor arguments are functional-API `(inputs, outputs)`."""
    from keras.src.models.model import functional_init_arguments

    return bool(functional_init_arguments(args, kwargs))


def keras_default(method):
    """Marks `method` as Keras's own default (`keras.src.utils.python_utils.default`,
    Keras 3.15): a `get_config` that only adds to its parent's must not stop
    `Operation.get_config` from generating a subclassed model's config."""
    from keras.src.utils.python_utils import default

    return default(method)


def is_default_build(cls) -> bool:
    """Whether `cls.build` is `Layer.build` itself (marked `_is_default`)."""
    return bool(getattr(cls.build, "_is_default", False))


def variable_strategy(variable):
    """The `tf.distribute` strategy a Keras variable was created under, or None.

    Reads `DistributedValues._distribute_strategy` (TensorFlow).
    """
    import tensorflow as tf

    value = variable.value
    if isinstance(value, tf.distribute.DistributedValues):
        return value._distribute_strategy
    return None


def capture_init_config(instance, cls, args, kwargs, serialize: dict) -> None:
    """Sets Keras's automatic config (`Operation._auto_config`, Keras 3) of a
    subclassed model whose constructor got non-JSON arguments that prunemix
    knows how to serialize (`serialize`: argument name -> function).

    `keras.Model.__new__` hands `Operation.__new__` no constructor arguments,
    so the automatic config of a subclassed model records only the defaults:
    a schedule passed as `Net(pruning_schedule=...)` would be lost on save.
    This records the arguments given. Nothing changes when an argument is not
    a plain value (the class then needs its own `get_config`, as in Keras).
    """
    try:
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    except TypeError:
        return
    spec = inspect.getfullargspec(cls.__init__)
    if spec.varargs and bound.arguments.get(spec.varargs):
        return
    bound.apply_defaults()
    config = dict(bound.arguments)
    config.pop(spec.args[0], None)
    config.pop(spec.varargs, None)
    config |= config.pop(spec.varkw, {}) if spec.varkw else {}
    config.pop("name", None)
    try:
        # Keras warns about lambdas when the model is saved; not here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for key, function in serialize.items():
                if config.get(key) is not None:
                    config[key] = function(config[key])
    except Exception:  # noqa: BLE001 - not serializable: the class needs its own get_config
        return
    plain = (str, int, float, bool, type(None))
    try:
        if not all(isinstance(v, plain) for v in keras.tree.flatten(config)):
            return
    except TypeError:
        return
    from keras.src.saving import serialization_lib

    instance._lock = False
    instance._auto_config = serialization_lib.SerializableDict(**config)
    instance._lock = True


def call_once(model, build_config: dict) -> None:
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


def attention_projections(layer) -> tuple:
    """`(query, key, value, output)`: the EinsumDense sublayers of a built
    Keras `MultiHeadAttention` (`_query_dense`, `_key_dense`, `_value_dense`,
    `_output_dense`). Their kernels are `(width, heads, head_dim)`, and
    `(heads, head_dim, *output)` for the output projection."""
    return layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense


def build_like(copy, like) -> None:
    """Builds `copy` (made by `from_config`) as `like` was built (its build
    config), and calls it once, unless it is built already."""
    if not copy.built:
        build_config = like.get_build_config() or {}
        copy.build_from_config(build_config)
        call_once(copy, build_config)


__all__ = [
    "attach_after_build",
    "attention_projections",
    "build_like",
    "call_once",
    "capture_init_config",
    "first_batch_for_build",
    "functional_class",
    "functional_of",
    "graph_of",
    "graph_structs",
    "inbound_count",
    "inline_nested",
    "inbound_layers",
    "is_default_build",
    "is_functional_call",
    "keras_default",
    "layer_paths",
    "multi_worker_fit_bugs",
    "nested_layers",
    "shared_across_nesting",
    "variable_strategy",
]


def copies_live_layers(fn):
    """Decorator for functions that re-create layers from the configs of
    objects in this process (`clone_model`, `from_config(get_config())`),
    never from a file. Keras's safe mode guards files against code in them; a
    `Lambda` built here is the caller's own code, so it copies like any
    layer. Uses `serialization_lib.SafeModeScope` (private)."""
    from keras.src.saving.serialization_lib import SafeModeScope

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with SafeModeScope(False):
            return fn(*args, **kwargs)

    return wrapper
