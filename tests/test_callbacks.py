import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import prunemix
from tests.test_model import MLP, X, Y, compiled


def read_scalars(log_dir):
    values = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "train", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars", value.tag
                scalar = float(tf.make_ndarray(value.tensor))
                values.setdefault(value.tag, []).append((event.step, scalar))
    return values


def test_writes_per_weight_sparsity_and_target_every_n_batches(tmp_path, mode):
    model = compiled(MLP(), mode)  # PolynomialDecay(0, 0.8, 0, 12, frequency=3)
    callback = prunemix.PruningSummaries(tmp_path, update_freq=4)
    model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    scalars = read_scalars(tmp_path)
    steps = [step for step, _ in scalars["pruning/target_sparsity"]]
    assert steps == [4, 8, 12, 16]
    schedule = model.pruning_schedule
    for step, value in scalars["pruning/target_sparsity"]:
        assert value == pytest.approx(float(schedule(step)), abs=1e-6)
    # Masks last changed at steps 3, 6, 9 and 12: the per-weight values follow.
    for p in model.pruner.pruned_weights:
        recorded = dict(scalars[f"pruning/{p.path}/sparsity"])
        for step, last_update in ((4, 3), (8, 6), (12, 12), (16, 12)):
            want = round(float(schedule(last_update)) * p.mask.numpy().size) / p.mask.numpy().size
            assert recorded[step] == pytest.approx(want, abs=1e-6)
    assert dict(scalars["pruning/sparsity"])[16] == pytest.approx(0.8, abs=1e-6)


def test_epoch_frequency_and_bad_arguments(tmp_path):
    model = compiled(MLP(), {})
    model.fit(X, Y, batch_size=16, epochs=3, verbose=0,
              callbacks=[prunemix.PruningSummaries(tmp_path)])
    assert [s for s, _ in read_scalars(tmp_path)["pruning/sparsity"]] == [4, 8, 12]
    for bad in (0, -2, "batch", 1.5, True):
        with pytest.raises(ValueError, match="update_freq"):
            prunemix.PruningSummaries(tmp_path, update_freq=bad)
    plain = keras.Sequential([keras.Input((12,)), keras.layers.Dense(3)])
    plain.compile("sgd", "mse")
    with pytest.raises(ValueError, match="PrunedModel"):
        plain.fit(X, np.zeros((64, 3)), verbose=0,
                  callbacks=[prunemix.PruningSummaries(tmp_path)])


def test_weights_with_their_own_schedule_get_their_own_target(tmp_path):
    model = compiled(MLP(pruning_policy=[prunemix.Rule("*dense_1*", final_sparsity=0.4)]), {})
    model.fit(X, Y, batch_size=16, epochs=3, verbose=0,
              callbacks=[prunemix.PruningSummaries(tmp_path)])
    scalars = read_scalars(tmp_path)
    own = [p for p in model.pruner.pruned_weights if p.schedule is not model.pruning_schedule]
    assert len(own) == 1
    recorded = dict(scalars[f"pruning/{own[0].path}/target_sparsity"])
    assert recorded[12] == pytest.approx(0.4)
    assert dict(scalars["pruning/target_sparsity"])[12] == pytest.approx(0.8)
    assert not any(k.endswith("target_sparsity") and k != "pruning/target_sparsity"
                   and own[0].path not in k for k in scalars)
