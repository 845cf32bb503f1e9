"""`tflite_report`: how a `.tflite` file stores each op's weights."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from prunemix.report import table

__all__ = ["DENSE", "DENSIFIED", "SPARSE_KERNEL", "TfliteOp", "TfliteReport", "tflite_report"]

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
        counts = [self.count_storage(s) for s in (SPARSE_KERNEL, DENSIFIED, DENSE)]
        return table(header, rows, f"file size: {self.size} bytes ({self.size / 1024:.1f} KiB); "
                     f"{counts[0]} sparse kernel, {counts[1]} densified, {counts[2]} dense")


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
