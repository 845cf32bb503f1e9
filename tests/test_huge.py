import keras
import numpy as np
import pytest

import prunemix


@pytest.mark.slow
def test_64m_weight_embedding_prunes_to_90_percent():
    inputs = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(1_000_000, 64)(inputs)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(embedded))
    model = prunemix.PrunedModel(
        inputs, outputs, pruning_schedule=prunemix.ConstantSparsity(0.9, frequency=1)
    )
    model.compile("adam", "mse")
    x = np.random.default_rng(0).integers(0, 1_000_000, (16, 4))
    model.fit(x, np.zeros((16, 1)), batch_size=8, epochs=1, verbose=0)
    embedding = model.pruner.pruned_weights[0]
    mask = embedding.mask.numpy()
    assert mask.shape == (1_000_000, 64)
    assert (~mask).sum() == round(0.9 * 64_000_000)
    assert np.count_nonzero(embedding.weight.numpy()) == 64_000_000 - round(0.9 * 64_000_000)
