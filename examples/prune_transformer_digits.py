"""Half the attention heads and feed-forward units of a small Transformer, removed.

scikit-learn's digits (no download) read as sequences: each 8x8 image is 8
rows of 8 pixels, with the row's one-hot position appended. A 2-block
Transformer encoder (Keras `MultiHeadAttention`, 4 heads of 8; feed-forward
64; width 32) is trained dense. A copy then fine-tunes under `ChannelGroups`
with a polynomial schedule to 50 % of each group: 2 of 4 heads and 32 of 64
feed-forward units per block go to zero, and `prunemix.shrink` removes them
(the residual width stays: it is tied to LayerNorm). The table gives test
accuracy, parameters and what each block keeps.

    python examples/prune_transformer_digits.py            # the full run (about a minute)
    python examples/prune_transformer_digits.py --quick    # a smoke run for tests
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import prunemix  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prune_digits import accuracy, compile_model, load_data  # noqa: E402


def as_sequences(images: np.ndarray) -> np.ndarray:
    """(n, 8, 8, 1) images -> (n, 8, 16): each row's pixels, then its position."""
    rows = images[..., 0]
    position = np.broadcast_to(np.eye(8, dtype="float32"), rows.shape)
    return np.concatenate([rows, position], axis=-1)


def transformer(blocks: int = 2, width: int = 32, heads: int = 4, ffn: int = 64) -> keras.Model:
    inputs = keras.Input((8, 16))
    x = keras.layers.Dense(width, name="embed")(inputs)
    for i in range(blocks):
        attended = keras.layers.MultiHeadAttention(heads, width // heads, name=f"mha{i}")(x, x)
        x = keras.layers.LayerNormalization(name=f"ln{i}a")(keras.layers.Add()([x, attended]))
        hidden = keras.layers.Dense(ffn, activation="gelu", name=f"ffn{i}_in")(x)
        out = keras.layers.Dense(width, name=f"ffn{i}_out")(hidden)
        x = keras.layers.LayerNormalization(name=f"ln{i}b")(keras.layers.Add()([x, out]))
    pooled = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(pooled))


def kept(model) -> str:
    heads = [layer.num_heads for layer in model.layers
             if isinstance(layer, keras.layers.MultiHeadAttention)]
    units = [model.get_layer(f"ffn{i}_in").units for i in range(len(heads))]
    return f"heads {heads}, FFN units {units}"


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = load_data()
    x_train, x_test = as_sequences(x_train), as_sequences(x_test)
    epochs, tune = (1, 2) if args.quick else (40, 20)
    if args.quick:
        x_train, y_train = x_train[:256], y_train[:256]
    dense = compile_model(transformer(), 2e-3)
    dense.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    steps = int(np.ceil(len(x_train) / 32)) * tune
    pruned = prunemix.prune_model(
        dense, prunemix.PolynomialDecay(0.0, 0.5, 0, steps // 2,
                                        frequency=max(1, min(10, steps // 4))),
        pruning_policy=[prunemix.Rule("*", pattern=prunemix.ChannelGroups())])
    compile_model(pruned, 1e-3)
    pruned.fit(x_train, y_train, batch_size=32, epochs=tune, verbose=0)
    small = prunemix.shrink(pruned)
    rows = [("dense", accuracy(dense, x_test, y_test), dense.count_params(), kept(dense)),
            ("50% of heads and FFN units, shrunk", accuracy(small, x_test, y_test),
             small.count_params(), kept(small))]
    print(f"{'model':<36} {'test accuracy':>13} {'params':>8}  kept")
    for name, acc, params, what in rows:
        print(f"{name:<36} {acc:>13.2%} {params:>8,}  {what}")
    return rows


if __name__ == "__main__":
    main()
