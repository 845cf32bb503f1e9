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

from prunemix.litert.flatbuffer import (
    DENSE,
    DENSIFIED,
    SPARSE_KERNEL,
    TfliteOp,
    TfliteReport,
    tflite_report,
)
from prunemix.litert.policy import (
    fits_litert_float_blocks,
    fits_litert_int8_blocks,
    latency_policy,
)
from prunemix.litert.runtime import make_interpreter
from prunemix.litert.xnnpack import XnnpackLayer, XnnpackReport, xnnpack_sparse_report

__all__ = [
    "DENSE",
    "DENSIFIED",
    "SPARSE_KERNEL",
    "TfliteOp",
    "TfliteReport",
    "XnnpackLayer",
    "XnnpackReport",
    "fits_litert_float_blocks",
    "fits_litert_int8_blocks",
    "latency_policy",
    "make_interpreter",
    "tflite_report",
    "xnnpack_sparse_report",
]
