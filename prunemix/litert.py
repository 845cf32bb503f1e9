"""Pruning for speed on LiteRT: sparsity its kernels run, and reports that say so.

- `latency_policy()`: rules that prune Dense/EinsumDense kernels in the block
  shape LiteRT's sparse FULLY_CONNECTED kernel runs (4 consecutive inputs
  per output for float, 16 for int8) and leave everything else dense.
- `tflite_report(model)`: for every op with weights in a `.tflite` file,
  whether they are stored dense, stored sparse but densified at load (a
  DENSIFY op: no speedup), or run by a sparse kernel.
- `xnnpack_sparse_report(model)`: which 1x1 convolutions of a Keras model
  XNNPack's sparse CNN path would run, and why every other part does not.
- `make_interpreter(model, num_threads)`: `ai_edge_litert` (the `litert`
  extra) when installed, else `tf.lite.Interpreter`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import keras
import numpy as np

from prunemix import patterns
from prunemix.axes import kernel_input_axes
from prunemix.policy import Rule

__all__ = [
    "TfliteOp",
    "TfliteReport",
    "XnnpackLayer",
    "XnnpackReport",
    "latency_policy",
    "make_interpreter",
    "tflite_report",
    "xnnpack_sparse_report",
]

_BLOCK = {False: 4, True: 16}


def _fits(layer, weight, size: int) -> bool:
    axes = kernel_input_axes(layer, weight)
    return bool(axes) and weight.shape[axes[-1]] % size == 0


@keras.saving.register_keras_serializable(package="prunemix")
def fits_litert_float_blocks(layer, weight) -> bool:
    """Whether `weight` is a Dense/EinsumDense kernel with inputs in blocks of 4."""
    return _fits(layer, weight, _BLOCK[False])


@keras.saving.register_keras_serializable(package="prunemix")
def fits_litert_int8_blocks(layer, weight) -> bool:
    """Whether `weight` is a Dense/EinsumDense kernel with inputs in blocks of 16."""
    return _fits(layer, weight, _BLOCK[True])


def latency_policy(runtime: str = "litert", quantized: bool = False) -> list:
    """Rules that prune for speed on a runtime's sparse kernels.

    For LiteRT: every Dense and EinsumDense kernel whose input length is a
    multiple of the block is pruned in blocks of 4 consecutive inputs per
    output unit (16 with `quantized=True`, for int8 models), the layout
    LiteRT's sparse FULLY_CONNECTED kernel runs; an exact number of blocks is
    pruned (`InputBlockSparsity`). Every other prunable weight (convolutions,
    embeddings, recurrent kernels, misfit shapes) stays dense: no LiteRT
    kernel would run it faster. Put your own rules first; the first match
    wins, and neither rule here is an error when it matches nothing.

    Args:
        runtime: `"litert"` (the only one so far).
        quantized: whether the model will be converted to int8.

    Returns:
        A list of two `Rule`s.

    Raises:
        ValueError: for an unknown runtime.

    Example:

    ```python
    model = prunemix.PrunedModel(
        inputs, outputs, pruning_schedule=prunemix.PolynomialDecay(0.0, 0.9, 0, 1000),
        pruning_policy=[prunemix.Rule("logits", exclude=True), *prunemix.latency_policy()],
    )
    ```
    """
    if runtime != "litert":
        raise ValueError(f"`runtime` must be 'litert'. Received: runtime={runtime!r}")
    fits = fits_litert_int8_blocks if quantized else fits_litert_float_blocks
    return [
        Rule(fits, pattern=patterns.InputBlockSparsity(_BLOCK[bool(quantized)]), required=False),
        Rule("*", exclude=True, required=False),
    ]


def make_interpreter(model: Any, num_threads: int = 1, xnnpack: bool | None = None) -> Any:
    """A LiteRT interpreter for `.tflite` bytes or a path, tensors allocated.

    Uses `ai_edge_litert.interpreter.Interpreter` (`pip install
    prunemix[litert]`) when installed, else `tf.lite.Interpreter`
    (deprecated in TF 2.21 but still there).

    Args:
        model: `.tflite` bytes, or a path.
        num_threads: CPU threads.
        xnnpack: whether LiteRT may apply its default XNNPack delegate (it
            runs dense float ops, while ops with sparse weights stay on
            LiteRT's own kernels). False runs every op on LiteRT's built-in
            kernels. None (default): on, unless the model has sparse int8
            weights (`to_tflite(quantize="int8")` of a pruned model), whose
            outputs XNNPack gets wrong (measured: NaN, or errors of 0.7 on
            outputs of 0.25).

    Returns:
        The interpreter (`invoke()`, `set_tensor`, `get_signature_runner()`).

    Raises:
        ValueError: for `xnnpack=True` and a model with sparse int8 weights.
    """
    data = model if isinstance(model, bytes | bytearray | memoryview) else \
        pathlib.Path(os.fspath(model)).read_bytes()
    sparse_int8 = [row.weight for row in tflite_report(data)
                   if row.dtype == "int8" and row.storage != DENSE]
    if xnnpack and sparse_int8:
        raise ValueError(
            f"make_interpreter: xnnpack=True, and the model has sparse int8 weights "
            f"({sparse_int8[0]!r}, ...), whose outputs LiteRT's XNNPack delegate gets "
            "wrong. Leave `xnnpack` at None (off for such models) or pass False."
        )
    if xnnpack is None:
        xnnpack = not sparse_int8
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
        OpResolverType = tf.lite.experimental.OpResolverType  # noqa: N806
    kwargs = {"model_content": bytes(data)}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(num_threads=num_threads, **kwargs)
    interpreter.allocate_tensors()
    return interpreter


# -- what a .tflite file stores, op by op ----------------------------------------------

DENSE = "dense"
DENSIFIED = "sparse, densified at load (DENSIFY: no speedup)"
SPARSE_KERNEL = "sparse kernel"


@dataclasses.dataclass(frozen=True)
class TfliteOp:
    """One op with a constant weight in a `.tflite` file."""

    index: int
    op: str
    weight: str
    shape: tuple
    dtype: str
    storage: str
    block: tuple = ()


class TfliteReport(list):
    """`TfliteOp` rows for every op with a constant weight; `str()` is a table."""

    size: int = 0

    def count_storage(self, storage: str) -> int:
        """How many rows have this storage (`DENSE`, `DENSIFIED`, `SPARSE_KERNEL`)."""
        return sum(row.storage == storage for row in self)

    def __str__(self) -> str:
        header = ("#", "op", "weight", "shape", "dtype", "storage")
        rows = [
            (str(r.index), r.op, r.weight, "x".join(map(str, r.shape)), r.dtype,
             r.storage + (f", blocks {'x'.join(map(str, r.block))}" if r.block else ""))
            for r in self
        ]
        widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        counts = [self.count_storage(s) for s in (SPARSE_KERNEL, DENSIFIED, DENSE)]
        lines.append(f"\nfile size: {self.size} bytes ({self.size / 1024:.1f} KiB); "
                     f"{counts[0]} sparse kernel, {counts[1]} densified, {counts[2]} dense")
        return "\n".join(lines)


def _schema():
    # The flatbuffer schema TensorFlow ships (tensorflow/lite/python, TF 2.21).
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def tflite_report(model: Any) -> TfliteReport:
    """Lists how every op with weights is stored in a `.tflite` flatbuffer.

    Args:
        model: `.tflite` bytes, or a path to a `.tflite` file.

    Returns:
        A `TfliteReport`: one `TfliteOp` per (op, constant weight of rank >= 2)
        with the op name, weight name, shape, dtype and storage: `"dense"`,
        `"sparse, densified at load (DENSIFY: no speedup)"` (the converter
        kept the weight sparse behind a DENSIFY op, which rebuilds it dense
        when the model loads), or `"sparse kernel"` (the op reads the sparse
        weight itself: LiteRT runs its sparse kernel), with the block shape of
        the sparse encoding. `report.size` is the file size; `str(report)` a
        table.

    Raises:
        ValueError: if the bytes are not a complete `.tflite` model
            (truncated, damaged, a directory).
        FileNotFoundError: if there is no such file.

    Example:

    ```python
    print(prunemix.tflite_report(prunemix.to_tflite(model)))
    ```
    """
    if isinstance(model, bytes | bytearray | memoryview):
        data = bytes(model)
    else:
        path = pathlib.Path(os.fspath(model))
        if path.is_dir():
            raise ValueError(f"{path} is a directory, not a .tflite file.")
        data = path.read_bytes()
    schema = _schema()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("Not a .tflite model: its flatbuffer identifier is not 'TFL3'.")
    try:
        flat = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    except Exception as error:  # noqa: BLE001 - struct/index errors: damaged offsets
        raise ValueError(
            f"Not a complete .tflite model: its flatbuffer cannot be read "
            f"({type(error).__name__}: {error}); truncated or damaged."
        ) from None
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    report = TfliteReport()
    report.size = len(data)

    def op_name(op):
        code = flat.operatorCodes[op.opcodeIndex]
        return names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")

    def constant(graph, i):
        tensor = graph.tensors[i]
        buffer = flat.buffers[tensor.buffer] if tensor.buffer < len(flat.buffers) else None
        stored = buffer is not None and (buffer.data is not None or (buffer.size or 0) > 0)
        return stored and len(tensor.shape if tensor.shape is not None else ()) >= 2

    def block(tensor):
        sparsity = tensor.sparsity
        if sparsity is None or sparsity.blockMap is None:
            return ()
        # Block dims follow the tensor's own in `dimMetadata`; `blockMap`
        # names the tensor dim each one blocks.
        shape = [1] * len(tensor.shape)
        for i, dim in enumerate(sparsity.blockMap):
            shape[int(dim)] = int(sparsity.dimMetadata[len(tensor.shape) + i].denseSize)
        return tuple(shape) if max(shape, default=1) > 1 else ()

    for graph in flat.subgraphs:
        densified = {}  # output tensor -> sparse input tensor
        for op in graph.operators:
            if op_name(op) == "DENSIFY":
                densified[op.outputs[0]] = op.inputs[0]
        for index, op in enumerate(graph.operators):
            name = op_name(op)
            if name == "DENSIFY":
                continue
            for i in op.inputs:
                if i < 0:
                    continue
                if i in densified:
                    source, storage = graph.tensors[densified[i]], DENSIFIED
                elif constant(graph, i):
                    source = graph.tensors[i]
                    storage = SPARSE_KERNEL if source.sparsity is not None else DENSE
                else:
                    continue
                report.append(TfliteOp(
                    index=index, op=name, weight=source.name.decode(errors="replace"),
                    shape=tuple(int(d) for d in source.shape), dtype=types.get(source.type, "?"),
                    storage=storage, block=block(source) if storage != DENSE else (),
                ))
    return report


# -- XNNPack's sparse CNN path -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class XnnpackLayer:
    """One layer of an `XnnpackReport`: whether XNNPack's sparse path runs it."""

    layer: str
    kind: str
    sparse: bool
    reason: str


class XnnpackReport(list):
    """`XnnpackLayer` rows; `str()` is a table with a verdict and the caveats."""

    def __str__(self) -> str:
        header = ("layer", "class", "sparse path", "why")
        rows = [(r.layer, r.kind, "yes" if r.sparse else "no", r.reason) for r in self]
        widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        sparse = sum(r.sparse for r in self)
        lines.append(
            f"\n{sparse} of {sum(r.kind == 'Conv2D' for r in self)} Conv2D layers would run "
            "XNNPack's sparse kernels. XNNPack takes this path on ARM only: x86 CPUs with AVX "
            "never do, whatever the model."
        )
        return "\n".join(lines)


_PASS_THROUGH = (
    keras.layers.Add, keras.layers.Multiply, keras.layers.ReLU, keras.layers.LeakyReLU,
    keras.layers.ELU, keras.layers.Dropout, keras.layers.ZeroPadding2D,
)


def _one_by_one(layer) -> bool:
    return (tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1)
            and tuple(layer.dilation_rate) == (1, 1) and getattr(layer, "groups", 1) == 1)


def _symmetric_zero_padding(layer, pad: int) -> bool:
    from prunemix import _keras_compat

    producers = _keras_compat.inbound_layers(layer)
    return (len(producers) == 1 and isinstance(producers[0], keras.layers.ZeroPadding2D)
            and tuple(map(tuple, producers[0].padding)) == ((pad, pad), (pad, pad)))


def _support(layer) -> str | None:
    """None if XNNPack's sparse subgraph can contain `layer`, else why not."""
    if isinstance(layer, _PASS_THROUGH):
        return None
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        size, stride = tuple(layer.kernel_size), tuple(layer.strides)
        pad = {(3, 3): 1, (5, 5): 2}.get(size)
        if pad is None or layer.depth_multiplier != 1 or tuple(layer.dilation_rate) != (1, 1):
            return "depthwise conv other than 3x3/5x5, multiplier 1, no dilation"
        if layer.padding == "same" and stride == (1, 1):
            return None
        if layer.padding == "valid" and stride in ((1, 1), (2, 2)) and \
                _symmetric_zero_padding(layer, pad):
            return None
        return "depthwise conv without symmetric padding (Keras 'same' with stride 2 pads " \
               "asymmetrically)"
    if isinstance(layer, keras.layers.Conv2D) and not isinstance(
            layer, keras.layers.Conv2DTranspose | keras.layers.DepthwiseConv2D):
        return None if _one_by_one(layer) else "convolution other than 1x1, stride 1"
    if isinstance(layer, keras.layers.BatchNormalization):
        return None if list(np.atleast_1d(layer.axis)) in ([3], [-1]) else "not channels-last"
    if isinstance(layer, keras.layers.Activation):
        name = keras.activations.serialize(layer.activation)
        name = name if isinstance(name, str) else name.get("config", {}).get("name", "")
        ok = name in ("relu", "relu6", "leaky_relu", "elu", "sigmoid")
        return None if ok else f"activation {name!r} not supported"
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        return None if layer.keepdims else "GlobalAveragePooling2D without keepdims=True"
    return f"{type(layer).__name__} is not supported by XNNPack's sparse subgraph"


def xnnpack_sparse_report(model: keras.Model, min_sparsity: float = 2 / 3) -> XnnpackReport:
    """Which convolutions XNNPack's sparse CNN path would run, and why not the rest.

    XNNPack (the CPU delegate of LiteRT) runs 1x1 convolutions with sparse
    kernels inside a channel-first subgraph that starts at a 3x3, stride-2
    Conv2D on 3 input channels with symmetric zero padding and ends at a
    `GlobalAveragePooling2D(keepdims=True)`; every layer in between must be
    supported, and a 1x1 conv's kernel must be at least 2/3 zeros. This is
    `tfmot`'s `PruneForLatencyOnXNNPack` check as a report: it never rejects
    the model, it says for each layer what holds it back. XNNPack takes this
    path on ARM only; x86 CPUs with AVX never do.

    Args:
        model: a built functional or Sequential Keras model (a stripped or
            `PrunedModel` copy works alike).
        min_sparsity: the zero fraction XNNPack needs in a 1x1 kernel.

    Returns:
        An `XnnpackReport`: one `XnnpackLayer` per layer (name, class, whether
        it would run sparse, why).

    Raises:
        ValueError: for a subclassed model (it has no graph to walk).
    """
    from prunemix import _keras_compat

    if not isinstance(model, _keras_compat.functional_class() | keras.Sequential):
        raise ValueError(
            f"xnnpack_sparse_report needs a functional or Sequential model; '{model.name}' is "
            f"a {type(model).__name__}."
        )
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    start = None
    for layer in layers:
        if isinstance(layer, keras.layers.Conv2D) and type(layer) is keras.layers.Conv2D:
            start = layer
            break
    report = XnnpackReport()
    start_ok = (
        start is not None and tuple(start.kernel.shape[:3]) == (3, 3, 3)
        and tuple(start.strides) == (2, 2) and start.padding == "valid"
        and _symmetric_zero_padding(start, 1)
    )
    inside = False
    for layer in layers:
        kind = type(layer).__name__
        if layer is start:
            inside = start_ok
            reason = "starts the sparse subgraph" if start_ok else (
                "first conv must be 3x3, stride 2, 3 input channels, 'valid' after "
                "ZeroPadding2D(1): no sparse subgraph")
            report.append(XnnpackLayer(layer.name, kind, False, reason))
            continue
        if not inside:
            report.append(XnnpackLayer(layer.name, kind, False, "outside the sparse subgraph"))
            continue
        if isinstance(layer, keras.layers.GlobalAveragePooling2D):
            problem = _support(layer)
            report.append(XnnpackLayer(layer.name, kind, False, problem or "ends the subgraph"))
            inside = False
            continue
        problem = _support(layer)
        if problem:
            report.append(XnnpackLayer(layer.name, kind, False, problem + "; ends the subgraph"))
            inside = False
            continue
        if kind == "Conv2D":
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            sparsity = 1.0 - np.count_nonzero(kernel) / kernel.size
            sparse = sparsity >= min_sparsity
            reason = f"1x1 conv, {sparsity:.0%} zeros" + (
                "" if sparse else f" (under {min_sparsity:.0%}: runs dense)")
            report.append(XnnpackLayer(layer.name, kind, sparse, reason))
        else:
            report.append(XnnpackLayer(layer.name, kind, False, "supported, no weights to skip"))
    return report
