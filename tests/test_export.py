import keras
import numpy as np

import prunemix


def pruned_dense_model():
    inputs = keras.Input((10,))
    outputs = keras.layers.Dense(4)(keras.layers.Dense(20)(inputs))
    model = prunemix.PrunedModel(
        inputs, outputs, pruning_schedule=prunemix.ConstantSparsity(0.9, frequency=1)
    )
    model.apply_pruning()
    return model


def test_sparsity_report_rows_and_table():
    model = pruned_dense_model()
    report = prunemix.sparsity_report(model)
    assert [(r.weight, r.shape, r.zeros, r.size) for r in report] == [
        ("kernel", (10, 20), 180, 200),
        ("kernel", (20, 4), 72, 80),
    ]
    assert report.zeros == 252 and report.size == 280
    assert report.sparsity == 252 / 280
    table = str(report).splitlines()
    assert table[0].split() == ["layer", "weight", "shape", "zeros", "sparsity"]
    assert "10x20" in table[2] and "180/200" in table[2] and "90.00%" in table[2]
    assert table[-1].split()[:2] == ["total", "252/280"]


def test_report_works_on_plain_models():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, kernel_initializer="zeros")])
    assert [(r.zeros, r.size) for r in prunemix.sparsity_report(model)] == [(6, 6)]


def test_compressed_size_shrinks_with_sparsity_and_ignores_masks():
    model = pruned_dense_model()
    stripped = prunemix.strip_pruning(model)
    dense_copy = keras.Model.from_config(stripped.get_config())
    assert prunemix.compressed_size(stripped) < prunemix.compressed_size(dense_copy) / 3
    assert prunemix.compressed_size(model) == prunemix.compressed_size(stripped)


def test_strip_applies_masks_and_leaves_plain_models_alone():
    model = pruned_dense_model()
    kernel = model.layers[1].kernel
    kernel.assign(np.ones(kernel.shape, "float32"))  # as if set_weights after pruning
    stripped = prunemix.strip_pruning(model)
    assert np.sum(stripped.layers[1].kernel.numpy() == 0) == 180
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert prunemix.strip_pruning(plain) is plain
