"""Callbacks: show what pruning is doing in TensorBoard."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from prunemix import _validate

__all__ = ["PruningSummaries"]

# The metadata `tf.summary.scalar` writes, so TensorBoard shows these as
# scalars; `tf.summary.write` needs no TensorBoard installed to write them.
_SCALAR = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)


def _scalar(tag: str, value: float, step: int) -> None:
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR)


class PruningSummaries(keras.callbacks.Callback):
    """Writes per-weight sparsity and the schedule's target to TensorBoard.

    The events go to `log_dir/train`, next to those of
    `keras.callbacks.TensorBoard(log_dir)`, so both show in one TensorBoard.
    Scalars, at the pruning step:
    - `pruning/target_sparsity`: the schedule's value;
    - `pruning/sparsity`: pruned fraction over all pruned weights;
    - `pruning/<weight path>/sparsity`: each weight's pruned fraction.

    Pruning itself never depends on this callback (the masks are updated in
    the train step); it only reports. Same name and arguments as tfmot's
    `PruningSummaries`.

    Args:
        log_dir: directory for the event files.
        update_freq: `"epoch"` to write at the end of every epoch, or an
            integer N to write every N training batches.

    Raises:
        ValueError: for a bad `update_freq`, or at the start of training if
            the model is not a `prunemix.PrunedModel`.

    Example:

    ```python
    model.fit(x, y, epochs=5, callbacks=[
        keras.callbacks.TensorBoard("logs"),
        prunemix.PruningSummaries("logs", update_freq=50),
    ])
    ```
    """

    def __init__(self, log_dir: str, update_freq: str | int = "epoch"):
        super().__init__()
        if update_freq != "epoch" and (
            isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1
        ):
            raise ValueError(_validate.say("PruningSummaries", "update_freq",
                                           "'epoch' or a positive int (batches)", update_freq))
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._writer = None
        self._batches = 0

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "apply_pruning"):
            raise ValueError(
                f"PruningSummaries reports on a prunemix.PrunedModel; model "
                f"'{self.model.name}' is a {type(self.model).__name__}."
            )
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.update_freq != "epoch" and self._batches % self.update_freq == 0:
            self.write()

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self.write()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write(self) -> None:
        """Writes the current values now (training must have started)."""
        pruner = self.model.pruner
        if pruner is None or self._writer is None:
            return
        step = int(pruner.pruning_step.numpy())
        with self._writer.as_default():
            _scalar("pruning/target_sparsity", float(pruner.pruning_schedule(step)), step)
            _scalar("pruning/sparsity", float(keras.ops.convert_to_numpy(pruner.sparsity)), step)
            for p in pruner.pruned_weights:
                pruned = 1.0 - float(np.mean(p.mask.numpy()))
                _scalar(f"pruning/{p.path}/sparsity", pruned, step)
                if p.schedule != pruner.pruning_schedule:  # its own, from a Rule
                    _scalar(f"pruning/{p.path}/target_sparsity", float(p.schedule(step)), step)
        self._writer.flush()
