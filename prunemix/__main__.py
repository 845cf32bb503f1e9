"""Command line: `python -m prunemix report model.keras`, `... strip in.keras out.keras`.

Exit status: 0 on success, 1 for a model with no pruning state, 2 for a
missing or unreadable file or bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class CliError(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _load(path: str):
    from prunemix.export import load_model

    try:
        return load_model(path, compile=False)
    except FileNotFoundError:
        raise CliError(f"no such file: {path}", 2) from None
    except ValueError as error:
        raise CliError(str(error), 2) from None
    except Exception as error:  # noqa: BLE001 - any other load failure is reported the same way
        raise CliError(f"cannot load {path} as a Keras model: {error}", 2) from error


def _pruned(model, path: str):
    from prunemix.model import PrunedModel

    if not isinstance(model, PrunedModel) or model.pruner is None:
        raise CliError(
            f"{path}: model '{model.name}' has no pruning state (not a prunemix "
            "PrunedModel, or already stripped)", 1
        )
    return model


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB"


def report(path: str) -> str:
    """The text `python -m prunemix report` prints."""
    import numpy as np

    from prunemix import export

    model = _pruned(_load(path), path)
    pruner = model.pruner
    table = export.sparsity_report(model)
    weights = export._model_weights(model)
    raw = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in weights)
    gzipped = export.compressed_size(export.strip_pruning(model))
    step = int(pruner.pruning_step.numpy())
    lines = [
        f"model '{model.name}' ({type(model).__name__}) from {path}",
        f"pruning step {step}, schedule target "
        f"{float(pruner.pruning_schedule(step)):.2%}, masks sparsity "
        f"{float(pruner.sparsity.numpy()):.2%}",
        "",
        str(table),
        "",
        f"weights: {_kib(raw)} raw, {_kib(gzipped)} gzipped "
        f"stripped ({raw / gzipped:.2f}x smaller than raw)",
    ]
    return "\n".join(lines)


def strip(source: str, target: str) -> str:
    """Writes the stripped model; returns the message to print."""
    from prunemix import export

    model = _pruned(_load(source), source)
    stripped = export.strip_pruning(model)
    if not target.endswith(".keras"):
        raise CliError(f"output file must end in .keras, got {target}", 2)
    stripped.save(target)
    return (
        f"wrote {target}: '{stripped.name}' without masks, "
        f"{export.sparsity_report(stripped).sparsity:.2%} of prunable weights are zero"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prunemix", description="Inspect and strip prunemix models."
    )
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import MODULE first (registers custom layers/models); repeatable",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    rep = commands.add_parser("report", help="per-weight sparsity and compressed sizes")
    rep.add_argument("model")
    st = commands.add_parser("strip", help="write the model without pruning state")
    st.add_argument("source")
    st.add_argument("target")
    args = parser.parse_args(argv)
    try:
        for module in args.imports:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise CliError(f"cannot import {module}: {error}", 2) from error
        if args.command == "report":
            print(report(args.model))
        else:
            print(strip(args.source, args.target))
    except CliError as error:
        print(f"prunemix: error: {error}", file=sys.stderr)
        return error.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
