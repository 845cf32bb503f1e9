"""Prune an LSTM encoder-decoder on a generated sequence task (no download).

The task: reverse a sequence of 10 random digits. The model is a small
GNMT-style encoder-decoder (embedding, LSTM encoder, LSTM decoder started
from the encoder's state, softmax over the vocabulary), trained dense with
teacher forcing, then fine-tuned from the dense weights with
`PolynomialDecay` to 80, 85 and 90 % sparsity (the sparsities of the Keras
Pruning API RFC's GNMT table). Token accuracy is measured with greedy
decoding on held-out sequences: each output token is fed back as the next
decoder input.

    python examples/prune_seq2seq.py            # the full run (a few minutes on 2 cores)
    python examples/prune_seq2seq.py --quick    # a smoke run for tests
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import prunemix  # noqa: E402

SPARSITIES = (0.8, 0.85, 0.9)
LENGTH = 10
START = 11  # tokens: 1..10 digits, 11 start-of-sequence
VOCAB = 12


def make_data(n: int, seed: int):
    """`(source, decoder_input, target)`: target is the source reversed."""
    rng = np.random.default_rng(seed)
    source = rng.integers(1, 11, size=(n, LENGTH))
    target = source[:, ::-1]
    decoder_input = np.concatenate([np.full((n, 1), START), target[:, :-1]], axis=1)
    return source.astype("int32"), decoder_input.astype("int32"), target.astype("int32")


def seq2seq_graph(units: int = 128, embedding: int = 32):
    """Inputs and outputs of the encoder-decoder (functional API)."""
    source = keras.Input((None,), dtype="int32", name="source")
    decoder_input = keras.Input((None,), dtype="int32", name="decoder_input")
    encoded = keras.layers.Embedding(VOCAB, embedding, name="source_embedding")(source)
    _, h, c = keras.layers.LSTM(units, return_state=True, name="encoder")(encoded)
    decoded = keras.layers.Embedding(VOCAB, embedding, name="target_embedding")(decoder_input)
    decoded = keras.layers.LSTM(units, return_sequences=True, name="decoder")(
        decoded, initial_state=[h, c]
    )
    logits = keras.layers.Dense(VOCAB, name="logits")(decoded)
    return [source, decoder_input], logits


def compile_model(model, learning_rate: float):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def greedy_token_accuracy(model, source, target) -> float:
    """Decodes one token at a time from the model's own previous outputs."""
    decoded = np.full((len(source), 1), START, dtype="int32")
    for _ in range(LENGTH):
        logits = model.predict([source, decoded], verbose=0, batch_size=512)
        decoded = np.concatenate([decoded, np.argmax(logits[:, -1:], -1).astype("int32")], 1)
    return float(np.mean(decoded[:, 1:] == target))


def prune_from(dense, data, sparsity, epochs, batch_size):
    """Fine-tune a pruned copy of `dense` to `sparsity`, from its weights."""
    source, decoder_input, target = data
    steps = epochs * int(np.ceil(len(source) / batch_size))
    frequency = max(steps // 50, 1)
    end = int(steps * 0.6) // frequency * frequency
    schedule = prunemix.PolynomialDecay(0.0, sparsity, 0, end, frequency=frequency)
    model = prunemix.prune_model(dense, schedule, name=f"seq2seq_{round(sparsity * 100)}")
    compile_model(model, 1e-3)
    model.fit([source, decoder_input], target, batch_size=batch_size, epochs=epochs, verbose=0)
    return model


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = parser.parse_args(argv)
    n_train, dense_epochs, prune_epochs = (512, 1, 1) if args.quick else (20000, 20, 10)
    sparsities = SPARSITIES[-1:] if args.quick else SPARSITIES
    batch_size = 128

    keras.utils.set_random_seed(0)
    train = make_data(n_train, seed=0)
    source, _, target = make_data(1000, seed=1)
    start = time.perf_counter()
    dense = compile_model(keras.Model(*seq2seq_graph()), 3e-3)
    dense.fit(list(train[:2]), train[2], batch_size=batch_size, epochs=dense_epochs, verbose=0)
    rows = [("dense", 0.0, greedy_token_accuracy(dense, source, target))]
    for sparsity in sparsities:
        pruned = prune_from(dense, train, sparsity, prune_epochs, batch_size)
        rows.append((
            f"{sparsity:.0%}",
            prunemix.sparsity_report(pruned).sparsity,
            greedy_token_accuracy(pruned, source, target),
        ))

    print(f"reverse {LENGTH} digits: LSTM encoder-decoder, {dense.count_params()} weights, "
          f"{n_train} training / {len(source)} test sequences")
    print("| target | sparsity reached | token accuracy (greedy) |")
    print("|---|---|---|")
    for name, reached, accuracy in rows:
        print(f"| {name} | {reached:.2%} | {accuracy:.2%} |")
    print(f"total time: {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
