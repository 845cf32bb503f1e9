"""Command line: `python -m prunemix report model.keras`, `... strip in.keras out.keras`,
`... tflite model.tflite`.

Exit status: 0 on success, 1 for a model with no pruning state, 2 for a
missing or unreadable file or bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from prunemix._quiet import native_stderr_silenced

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


class CliError(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _load(path: str):
    from prunemix.saving import load_model

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


def _schedule_target(pruner_config: dict, step: int) -> str:
    import keras

    from prunemix import schedules

    try:
        with keras.saving.custom_object_scope({}):
            schedule = schedules.get(pruner_config["pruning_schedule"])
        return f"schedule target {float(schedule(step)):.2%}"
    except Exception:  # noqa: BLE001 - a schedule this process cannot rebuild
        name = pruner_config.get("pruning_schedule", {}).get("class_name", "?")
        return f"schedule {name} (not importable here)"


def report(path: str) -> str:
    """The text `python -m prunemix report` prints.

    Read from the archive itself (config and weights), so it works without
    the model's classes: a subclassed model whose module is not importable.
    """
    import gzip

    import numpy as np

    from prunemix import report as reporting
    from prunemix import saving

    try:
        state = saving.read_pruning_state(path)
    except FileNotFoundError:
        raise CliError(f"no such file: {path}", 2) from None
    except (ValueError, OSError, KeyError) as error:
        raise CliError(str(error), 2) from None
    if not state["masks"]:
        raise CliError(
            f"{path}: model '{state['name']}' has no pruning state (not a prunemix "
            "PrunedModel, or already stripped)", 1
        )
    table = reporting.SparsityReport()
    for key, mask in state["masks"].items():
        layer, _, weight = state["paths"].get(key, key).rpartition("/")
        table.append(reporting.WeightSparsity(
            layer=layer, weight=weight, shape=mask.shape, zeros=int(mask.size - mask.sum()),
            size=int(mask.size),
        ))
    values = list(state["weights"].values())
    raw = sum(v.nbytes for v in values)
    gzipped = len(gzip.compress(b"".join(np.ascontiguousarray(v).tobytes() for v in values),
                                compresslevel=9, mtime=0))
    step = state["step"]
    target = _schedule_target(state["pruner"] or {}, step)
    lines = [
        f"model '{state['name']}' ({state['class_name']}) from {path}",
        f"pruning step {step}, {target}, masks sparsity {table.sparsity:.2%}",
        "",
        str(table),
        "",
        f"weights: {_kib(raw)} raw, {_kib(gzipped)} gzipped "
        f"stripped ({raw / gzipped:.2f}x smaller than raw)",
    ]
    return "\n".join(lines)


def tflite(path: str) -> str:
    """The text `python -m prunemix tflite` prints."""
    from prunemix.litert import tflite_report

    if not os.path.exists(path):
        raise CliError(f"no such file: {path}", 2)
    try:
        return f"{path}\n\n{tflite_report(path)}"
    except (ValueError, OSError) as error:
        raise CliError(f"{path}: {error}", 2) from None


def strip(source: str, target: str) -> str:
    """Writes the stripped model; returns the message to print."""
    from prunemix import export, report

    if not target.endswith(".keras"):
        raise CliError(f"output file must end in .keras, got {target}", 2)
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise CliError(f"cannot write {target}: no such folder {folder}", 2)
    model = _pruned(_load(source), source)
    stripped = export.strip_pruning(model)
    try:
        stripped.save(target)
    except OSError as error:
        raise CliError(f"cannot write {target}: {error}", 2) from None
    return (
        f"wrote {target}: '{stripped.name}' without masks, "
        f"{report.sparsity_report(stripped).sparsity:.2%} of prunable weights are zero"
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
    tfl = commands.add_parser(
        "tflite", help="how each op's weights are stored in a .tflite file (sparse kernel?)"
    )
    tfl.add_argument("model")
    args = parser.parse_args(argv)
    with native_stderr_silenced():
        import prunemix  # noqa: F401
    try:
        for module in args.imports:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise CliError(f"cannot import {module}: {error}", 2) from error
        if args.command == "report":
            print(report(args.model))
        elif args.command == "tflite":
            print(tflite(args.model))
        else:
            print(strip(args.source, args.target))
    except CliError as error:
        print(f"prunemix: error: {error}", file=sys.stderr)
        return error.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
