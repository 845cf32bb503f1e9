"""How layers declare which of their weights may be pruned.

A layer is prunable when it has a `get_prunable_weights()` method returning a
list of its variables (tfmot's `PrunableLayer` protocol). Three ways to get
there:

- built-in Keras layers need nothing (see `prunable_weights_of`);
- mix `PrunableMixin` into a layer class and list attribute names in
  `prunable_weights`, or override `get_prunable_weights()`;
- decorate a layer class with `@prunable("kernel", ...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import wrapt

from prunemix import _keras_compat

__all__ = ["PrunableMixin", "default_pattern_of", "find_prunable_weights",
           "locate_prunable_weights", "prunable", "prunable_weights_of", "register_prunable"]

_DECLARED = "_prunemix_declared"


def _layer_label(layer) -> str:
    return f"layer '{layer.name}' ({type(layer).__name__})"


def _resolve(layer, name: str):
    """The variable a declared name refers to (dotted names reach sublayers)."""
    obj = layer
    for part in name.split("."):
        if not hasattr(obj, part):
            weights = sorted({w.path.split("/")[-1] for w in layer.weights})
            raise ValueError(
                f"{_layer_label(layer)} declares prunable weight '{name}', but it "
                f"has no attribute '{part}'"
                + ("" if layer.built else " (the layer is not built yet)")
                + f". Its weights: {weights}"
            )
        obj = getattr(obj, part)
    return obj


def _check_weight(layer, name: str, value) -> keras.Variable:
    if not isinstance(value, keras.Variable):
        raise ValueError(
            f"{_layer_label(layer)} declares prunable weight '{name}', but "
            f"`{name}` is a {type(value).__name__}, not a weight (keras.Variable)."
        )
    if not keras.backend.is_float_dtype(value.dtype):
        raise ValueError(
            f"{_layer_label(layer)}: prunable weight '{name}' has dtype "
            f"{value.dtype}; only float weights can be pruned."
        )
    return value


class PrunableMixin:
    """Mixin that makes a custom Keras layer prunable, with no wrapper layer.

    List the attribute names of the weights to prune in the class attribute
    `prunable_weights`, or override `get_prunable_weights()`. Weights that are
    not declared (biases, norms, anything else) are never touched. The names
    are checked right after the layer's `build()`: a name that is not a float
    weight of the layer raises `ValueError` naming the layer and the weight.

    The mixin adds no constructor arguments and no `get_config`, so Keras
    serialization of the layer is unchanged.

    Example:

    ```python
    class Gated(prunemix.PrunableMixin, keras.layers.Layer):
        prunable_weights = ("kernel", "gate")

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 8))
            self.gate = self.add_weight(shape=(input_shape[-1], 8))
            self.bias = self.add_weight(shape=(8,), initializer="zeros")

        def call(self, x):
            return (x @ self.kernel) * keras.ops.sigmoid(x @ self.gate) + self.bias
    ```
    """

    prunable_weights: Sequence[str] = ()
    #: Default sparsity pattern for this class (None: `Magnitude()`); a
    #: `prunemix.Rule` with its own `pattern=` overrides it.
    pruning_pattern = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        names = cls.__dict__.get("prunable_weights")
        if names is not None:
            cls.prunable_weights = _check_names(names, cls)
        if cls.__dict__.get("pruning_pattern") is not None:
            cls.pruning_pattern = _check_pattern(cls.__dict__["pruning_pattern"], cls)
        if "build" in cls.__dict__:
            cls.build = _validate_after_build(cls.__dict__["build"])

    def get_prunable_weights(self) -> list:
        """The variables of this layer to prune, from `prunable_weights`.

        Returns:
            A list of `keras.Variable`.

        Raises:
            ValueError: if a declared name is not a float weight of the layer.
        """
        return [
            _check_weight(self, name, _resolve(self, name))
            for name in type(self).prunable_weights
        ]


def _check_names(names: Any, where) -> tuple:
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"Prunable weight names must be non-empty strings (attribute "
                f"names such as 'kernel'). Received: {name!r} in {where}"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Prunable weight names repeat {duplicates} in {where}.")
    return names


def _check_pattern(pattern: Any, where):
    from prunemix import patterns

    try:
        return patterns.get(pattern)
    except TypeError as error:
        raise TypeError(f"Bad `pruning_pattern` for {getattr(where, '__name__', where)}: {error}") \
            from None


@wrapt.decorator
def _validate_after_build(wrapped, instance, args, kwargs):
    result = wrapped(*args, **kwargs)
    # Only the outermost build of the instance's own class validates, so a
    # subclass that calls super().build() is checked once, when complete.
    outermost = getattr(type(instance).build, "__wrapped__", None)
    if getattr(wrapped, "__func__", wrapped) is outermost:
        instance.get_prunable_weights()
    return result


def prunable(*weight_names: str, pattern: Any = None) -> Callable[[type], type]:
    """Class decorator: declares which weights of a Keras layer class to prune.

    The same as mixing in `PrunableMixin` with `prunable_weights =
    weight_names`, without editing the class body. The decorated class is
    the same class object (not a proxy): `isinstance`, `super()`,
    subclassing, `get_config`/`from_config`, `.keras` saving and pickling
    behave as before. Its `build` is wrapped (with `wrapt`, which keeps the
    signature Keras inspects) to check the names once the layer is built.

    Args:
        *weight_names: attribute names of the weights, e.g. `"kernel"`; a
            dotted name such as `"proj.kernel"` reaches into a sublayer.
        pattern: optional default sparsity pattern for the class (e.g.
            `prunemix.NMSparsity(2, 4)`); a policy `Rule` with its own
            `pattern=` overrides it. Default: `Magnitude()`.

    Returns:
        A decorator that returns the class it is given.

    Raises:
        TypeError: if no names are given, or the decorated object is not a
            `keras.layers.Layer` subclass.
        ValueError: if names repeat, the class is decorated twice, or it
            already defines its own `get_prunable_weights`.

    Example:

    ```python
    @prunemix.prunable("kernel")
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1],))

        def call(self, x):
            return x * self.kernel
    ```
    """
    if len(weight_names) == 1 and isinstance(weight_names[0], type):
        raise TypeError(
            "`@prunable` needs the names of the weights to prune, e.g. "
            f"`@prunable('kernel')` on {weight_names[0].__name__}."
        )
    if not weight_names:
        raise TypeError("`@prunable()` needs at least one weight name, e.g. 'kernel'.")
    names = _check_names(weight_names, "@prunable(...)")
    default = None if pattern is None else _check_pattern(pattern, "@prunable(...)")

    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
            raise TypeError(
                "`@prunable` decorates subclasses of `keras.layers.Layer`. "
                f"Received: {cls!r}"
            )
        if cls.__dict__.get(_DECLARED) or "prunable_weights" in cls.__dict__:
            raise ValueError(
                f"{cls.__name__} already declares its prunable weights; "
                "decorate it once (or use either the decorator or the mixin)."
            )
        own = cls.__dict__.get("get_prunable_weights")
        if own is not None:
            raise ValueError(
                f"{cls.__name__} defines its own `get_prunable_weights()`; it is "
                "prunable already, `@prunable` would override it."
            )
        cls.prunable_weights = names
        if default is not None:
            cls.pruning_pattern = default
        if not issubclass(cls, PrunableMixin):
            cls.get_prunable_weights = PrunableMixin.get_prunable_weights
        setattr(cls, _DECLARED, True)
        # A default (inherited Layer) build is left alone: Keras treats it
        # specially, and the names are then checked when a model collects them.
        if not _keras_compat.is_default_build(cls):
            cls.build = _validate_after_build(cls.build)
        return cls

    return decorate


def _builtin_registry() -> list:
    layers = keras.layers
    return [
        ((layers.Dense, layers.EinsumDense), ("kernel",)),
        ((layers.SeparableConv1D, layers.SeparableConv2D),
         ("depthwise_kernel", "pointwise_kernel")),
        ((layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Conv1DTranspose,
          layers.Conv2DTranspose, layers.Conv3DTranspose,
          layers.DepthwiseConv1D, layers.DepthwiseConv2D), ("kernel",)),
        # keras_hub's LM heads: an untied head is a second vocabulary x
        # width matrix ("?": only when the layer has it).
        ((getattr(layers, "ReversibleEmbedding", ()),), ("embeddings", "reverse_embeddings?")),
        ((layers.Embedding,), ("embeddings",)),
        ((layers.SimpleRNNCell, layers.LSTMCell, layers.GRUCell),
         ("kernel", "recurrent_kernel")),
        # ConvLSTM cells are not exported; their layers hold one as `cell`.
        ((layers.ConvLSTM1D, layers.ConvLSTM2D, layers.ConvLSTM3D),
         ("cell.kernel", "cell.recurrent_kernel")),
    ]


_REGISTRY = _builtin_registry()
# Classes registered with `register_prunable`: checked before the built-ins.
_REGISTERED = []


def register_prunable(cls: type, *weight_names: str, pattern: Any = None) -> type:
    """Declares which weights of a layer class you do not own may be pruned.

    For classes from another library (keras_hub, your colleague's package)
    that you cannot decorate or subclass: every instance of `cls` (and its
    subclasses) is prunable in the named weights, as if it used
    `PrunableMixin`. Registering a class again replaces its names. The most
    specific declaration wins: a registration overrides what a base class
    declares and the built-in registry (so it can change what a built-in
    layer prunes), and a subclass that declares its own weights
    (`@prunable`, `PrunableMixin`) keeps them.

    Args:
        cls: a `keras.layers.Layer` subclass.
        *weight_names: attribute names of the weights (`"kernel"`; a dotted
            name such as `"cell.kernel"` reaches into a sublayer). Each is
            checked when a model collects the layer's weights: a missing or
            non-float weight is a `ValueError` naming the layer.
        pattern: optional default pattern for the class (a `Rule`'s own
            `pattern=` overrides it).

    Returns:
        `cls`, unchanged.

    Raises:
        TypeError: if `cls` is not a layer class or no names are given.
        ValueError: if names repeat, or `cls` defines `get_prunable_weights`.

    Example:

    ```python
    prunemix.register_prunable(ThirdPartyHead, "reverse_embeddings")
    ```
    """
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        raise TypeError(
            f"register_prunable takes a `keras.layers.Layer` subclass. Received: {cls!r}"
        )
    if not weight_names:
        raise TypeError(
            f"register_prunable({cls.__name__}) needs at least one weight name, e.g. 'kernel'."
        )
    if "get_prunable_weights" in vars(cls):
        raise ValueError(
            f"{cls.__name__} defines its own `get_prunable_weights()`; it is prunable already."
        )
    names = _check_names(weight_names, f"register_prunable({cls.__name__}, ...)")
    default = None if pattern is None else _check_pattern(pattern, cls)
    _REGISTERED[:] = [entry for entry in _REGISTERED if entry[0] is not cls]
    _REGISTERED.insert(0, (cls, names, default))
    return cls


def _registration(layer):
    """`(names, pattern)` from `register_prunable` when a registered class is
    the most specific declaration in `type(layer)`'s MRO, else None: a class
    that declares its own weights (`@prunable`, `PrunableMixin`,
    `get_prunable_weights`) below a registered base keeps its declaration;
    registering a subclass overrides its bases'."""
    registered = {cls: (names, pattern) for cls, names, pattern in _REGISTERED}
    for cls in type(layer).__mro__:
        if cls in registered:
            return registered[cls]
        if cls is not PrunableMixin and (
            "get_prunable_weights" in vars(cls) or "prunable_weights" in vars(cls)
        ):
            return None
    return None


def default_pattern_of(layer):
    """The layer's class default pattern (`@prunable(pattern=)`, the mixin's
    `pruning_pattern`, or `register_prunable(pattern=)`), or None."""
    registered = _registration(layer)
    if registered is not None and registered[1] is not None:
        return registered[1]
    return getattr(layer, "pruning_pattern", None)


def builtin_variable(layer, name: str):
    # Keras 3 exposes some kernels as properties that may compute a tensor
    # (LoRA, quantization); the variable itself lives under a leading "_".
    value = getattr(layer, "_" + name, None)
    if isinstance(value, keras.Variable):
        return value
    return getattr(layer, name)


def prunable_weights_of(layer) -> list:
    """The weights of `layer` itself that pruning may touch.

    Args:
        layer: any Keras layer.

    Returns:
        `layer.get_prunable_weights()` if the layer has that method;
        the weights named by `register_prunable` for the layer's class; the
        kernels of a built-in Keras layer (Dense, EinsumDense, Conv*,
        Conv*Transpose, DepthwiseConv*, SeparableConv*, Embedding,
        ReversibleEmbedding (its untied `reverse_embeddings` too: keras_hub's
        LM heads), RNN cells, ConvLSTM1D/2D/3D); otherwise `[]`. Sublayers
        are not included: a model walks them separately (MultiHeadAttention
        and LSTM prune through their EinsumDense projections and cells).

    Raises:
        ValueError: if a declared weight is missing or not a float variable.
    """
    registered = _registration(layer)
    if registered is not None:
        return [_check_weight(layer, name, _resolve(layer, name)) for name in registered[0]]
    if hasattr(layer, "get_prunable_weights"):
        weights = list(layer.get_prunable_weights())
        for i, weight in enumerate(weights):
            _check_weight(layer, f"get_prunable_weights()[{i}]", weight)
        return weights
    for classes, names in _REGISTRY:
        if isinstance(layer, classes):
            present = [name.rstrip("?") for name in names
                       if not name.endswith("?") or getattr(layer, name[:-1], None) is not None]
            return [
                _check_weight(layer, name, builtin_variable(layer, name) if "." not in name
                              else _resolve(layer, name))
                for name in present
            ]
    return []


def find_prunable_weights(model) -> list:
    """`(layer, variable)` pairs for every prunable weight below `model`.

    Layers are found at any depth (sublayers, nested models, lists and dicts
    of layers); a variable reached twice (shared layers, a tfmot-style layer
    listing a sublayer's kernel) appears once.

    Args:
        model: a built Keras layer or model.

    Returns:
        A list of `(layer, keras.Variable)` pairs, depth first.

    Raises:
        ValueError: if a layer declares a weight that is missing or not a
            float variable.
    """
    return [(layer, weight) for layer, weight, _, _ in locate_prunable_weights(model)]


def locate_prunable_weights(model) -> list:
    """`(layer, variable, path, key)` for every prunable weight below `model`.

    `path` is the weight's path relative to `model` by layer names
    (`"encoder/dense_1/kernel"`): what `Rule` globs match and reports show.
    `key` is its stable identity, by which pruning state is saved: layer
    names inside functional models, attribute names inside subclassed ones,
    so it survives `.keras` reload, `clone_model` and nesting.
    """
    return locate_weights(model, [
        (layer, weight) for layer in _keras_compat.nested_layers(model)
        for weight in prunable_weights_of(layer)
    ])


def locate_weights(model, pairs: list) -> list:
    """`(layer, variable, path, key)` for `(layer, variable)` pairs below
    `model`, as `locate_prunable_weights` names them (each variable once)."""
    paths = _keras_compat.layer_paths(model)
    found, seen, used = [], set(), {}
    for layer, weight in pairs:
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        names, keys = paths.get(id(layer), (layer.name, layer.name))
        short = weight.name.split("/")[-1]
        count = used.setdefault(id(layer), {})
        count[short] = count.get(short, 0) + 1
        if count[short] > 1:
            short = f"{short}#{count[short] - 1}"
        found.append((layer, weight, f"{names}/{short}", f"{keys}/{short}"))
    return found
