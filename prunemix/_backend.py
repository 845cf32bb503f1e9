"""What differs between Keras backends, in one place.

prunemix's math is written with `keras.ops`; the few things `keras.ops`
does not say the same way on every backend live here: 64-bit dtypes (JAX
runs them as 32-bit unless `jax_enable_x64` is set), XLA compilation of a
function, whether a value is traced, and TensorFlow's `init_scope`.
"""

from __future__ import annotations

import contextlib

import keras

_NARROW = {"int64": "int32", "float64": "float32"}


def wide(dtype: str) -> str:
    """`dtype` ("int64" or "float64") where the backend has it, else its
    32-bit twin (JAX without `jax_enable_x64`), so no value is truncated
    with a warning on every step."""
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return _NARROW.get(dtype, dtype)
    return dtype


def is_symbolic(value) -> bool:
    """Whether `value` is a tensor whose value is not known here (traced)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return isinstance(value, tf.Tensor) and not tf.executing_eagerly()
    if keras.backend.backend() == "jax":
        import jax

        return isinstance(value, jax.core.Tracer)
    return False


def init_scope():
    """`tf.init_scope()` on TensorFlow (variables made outside the
    `tf.function` being traced); nothing on other backends."""
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.init_scope()


def in_traced_call() -> bool:
    """Whether Keras is running a call without state (JAX: a symbolic build
    or `stateless_call`), where no variable may be created."""
    from keras.src.backend.common.stateless_scope import in_stateless_scope
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope

    return in_stateless_scope() or in_symbolic_scope()


def opaque(value):
    """`value`, which XLA may not fold as a constant (JAX:
    `jax.lax.optimization_barrier`): a selection's run starts are known when
    it is traced, and folding the run ids made from them took seconds per
    compilation. Unchanged on other backends."""
    if keras.backend.backend() != "jax":
        return value
    import jax

    return jax.lax.optimization_barrier(value)


class Compiled:
    """`fn` compiled with XLA on this backend (TensorFlow: `tf.function`,
    JAX: `jax.jit`), traced once per input shape; `traces` counts traces."""

    def __init__(self, fn):
        self._fn, self._by_backend, self.traces = fn, {}, 0

    def _traced(self, *args):
        self.traces += 1
        return self._fn(*args)

    def __call__(self, *args):
        backend = keras.backend.backend()
        if backend not in self._by_backend:
            if backend == "tensorflow":
                import tensorflow as tf

                compiled = tf.function(self._traced, jit_compile=True, reduce_retracing=True)
            elif backend == "jax":
                import jax

                compiled = jax.jit(self._traced)
            else:
                compiled = self._fn
            self._by_backend[backend] = compiled
        return self._by_backend[backend](*args)
