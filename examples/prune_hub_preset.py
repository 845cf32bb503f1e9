"""Prune a keras_hub causal LM from a local preset, and ship a preset again.

The real-world path, with nothing downloaded: a small `GPT2CausalLM` is
trained dense on the bytes of CPython's own documentation text
(`pydoc_data.topics`, which ships with every Python) and saved with
`save_to_preset`, as a pretrained checkpoint would be. Then:

1. `GPT2CausalLM.from_preset(dense_dir)` loads it;
2. `prunemix.prune_model` returns a pruning copy that is still a
   `GPT2CausalLM` (`generate`, `compile` defaults, the preprocessor slot);
3. `fit` fine-tunes it to 50 % sparsity (the masks update inside the
   compiled train step);
4. `prunemix.strip_pruning` gives a plain `GPT2CausalLM` and
   `save_to_preset` writes it; `from_preset` loads it with keras_hub alone.

Tokens are bytes (vocabulary 256, no tokenizer file needed), so the task
runs with `preprocessor=None` and takes token ids.

    python examples/prune_hub_preset.py            # the full run (about 2 minutes on 2 cores)
    python examples/prune_hub_preset.py --quick    # a smoke run for tests
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import prunemix  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pydoc_lm import SEQUENCE, byte_windows, compile_lm, dense_lm, perplexity  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--dir", default=None, help="where the presets go (default: temp)")
    args = parser.parse_args(argv)
    width, layers, train, dense_epochs, prune_epochs = (
        (32, 1, 64, 1, 1) if args.quick else (128, 2, 4096, 6, 3))
    keras.utils.set_random_seed(0)
    data = byte_windows(train, seed=0)
    validation = byte_windows(64 if args.quick else 512, seed=1, validation=True)
    root = args.dir or tempfile.mkdtemp(prefix="prunemix_presets_")

    # A "pretrained" checkpoint: trained dense here, saved as a preset.
    lm = dense_lm(width, layers)
    compile_lm(lm, 2e-3)
    lm.fit(*data, batch_size=32, epochs=dense_epochs, verbose=0)
    dense_dir = os.path.join(root, "dense")
    lm.save_to_preset(dense_dir)

    pretrained = keras_hub.models.GPT2CausalLM.from_preset(dense_dir)
    steps = prune_epochs * math.ceil(train / 32)
    pruned = prunemix.prune_model(
        pretrained, prunemix.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=steps * 2 // 3,
                                             frequency=max(steps // 20, 1)))
    compile_lm(pruned, 5e-4)
    pruned.fit(*data, batch_size=32, epochs=prune_epochs, verbose=0)

    stripped = prunemix.strip_pruning(pruned)
    pruned_dir = os.path.join(root, "pruned")
    stripped.save_to_preset(pruned_dir)
    shipped = keras_hub.models.GPT2CausalLM.from_preset(pruned_dir)
    compile_lm(shipped, 5e-4)
    report = prunemix.sparsity_report(pruned)
    prompt = np.frombuffer(b"The for statement", np.uint8).astype("int32")
    tokens = np.zeros((1, SEQUENCE), "int32")
    tokens[0, :len(prompt)] = prompt
    mask = np.arange(SEQUENCE)[None] < len(prompt)
    generated = shipped.generate({"token_ids": tokens, "padding_mask": mask},
                                 max_length=len(prompt) + 24, stop_token_ids=None)
    text = bytes(np.asarray(generated["token_ids"][0][:len(prompt) + 24], np.uint8))
    results = {
        "class": type(shipped).__name__,
        "dense_perplexity": perplexity(pretrained, validation),
        "pruned_perplexity": perplexity(shipped, validation),
        "sparsity": report.sparsity,
        "steps": steps,
        "sample": text.decode(errors="replace"),
    }
    print(f"{'model':<28} {'validation perplexity':>22} {'sparsity':>9}")
    print(f"{'dense (from_preset)':<28} {results['dense_perplexity']:>22.2f} {0:>9.1%}")
    print(f"{'pruned, stripped, reloaded':<28} {results['pruned_perplexity']:>22.2f} "
          f"{results['sparsity']:>9.1%}")
    print(f"class after the round trip: {results['class']}; presets in {root}")
    print(f"generate(): {results['sample']!r}")
    return results


if __name__ == "__main__":
    main()
