"""Saved files: the pruning-state format version, file checks, `load_model`,
and reading a `.keras` archive's pruning state without loading the model."""

from __future__ import annotations

import io
import json
import os
import zipfile

import keras
import numpy as np

from prunemix.pruner import FORMAT_VERSION

__all__ = ["FORMAT_VERSION", "check_format", "has_pruning_state", "load_model",
           "read_pruning_state"]


def has_pruning_state(filepath) -> bool:
    """Whether a `.weights.h5` or `.keras` file holds prunemix pruning state."""
    import h5py

    if isinstance(filepath, io.BytesIO):
        path = filepath
    else:
        path = os.fspath(filepath)
    if not isinstance(path, io.BytesIO) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                return False
            blob = io.BytesIO(archive.read("model.weights.h5"))
        return has_pruning_state(blob)
    found = []
    if not isinstance(filepath, io.BytesIO) and not h5py.is_hdf5(filepath):
        return True  # not a file prunemix can look into: expect the state
    with h5py.File(filepath, "r") as f:
        # Format 2: a `manifest` dataset; format 1: a group named `pruner`.
        f.visit(lambda name: found.append(name)
                if name.split("/")[-1] in ("manifest", "pruner") else None)
    return bool(found)


def check_format(config: dict, what: str) -> dict:
    """`config` without its `prunemix_format` key; raises for a newer format."""
    version = config.get("prunemix_format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ValueError(
            f"{what} was saved with prunemix pruning-state format {version!r}; this "
            f"prunemix reads format {FORMAT_VERSION} and older. Upgrade prunemix."
        )
    return {k: v for k, v in config.items() if k != "prunemix_format"}


def _check_archive(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path}")
    problem = None
    if not zipfile.is_zipfile(path):
        problem = "it is not a zip archive (truncated, or not written by `model.save`)"
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                bad = archive.testzip()
            if bad is not None:
                problem = f"its member {bad!r} is corrupt (truncated or damaged)"
            elif "config.json" not in names:
                problem = "it has no config.json (not written by `model.save`)"
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            problem = f"it cannot be read as a zip archive ({error})"
    if problem:
        raise ValueError(f"{path} is not a complete Keras model file: {problem}.")


def load_model(filepath, **kwargs) -> keras.Model:
    """`keras.saving.load_model` with clear errors for files that are not models.

    Keras reports a truncated `.keras` file as "File not found"; this checks
    the file first, then loads it with Keras (prunemix's classes are
    registered, so `keras.saving.load_model` itself works on good files).
    Loading never imports a module because the file names it.

    Args:
        filepath: path to a `.keras` file.
        **kwargs: passed to `keras.saving.load_model` (`compile`,
            `custom_objects`, `safe_mode`).

    Returns:
        The model.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if the file is not a complete `.keras` archive (not a
            zip, truncated, or without `config.json`), or was saved with a
            newer prunemix layout.

    Example:

    ```python
    model = prunemix.load_model("pruned.keras")
    ```
    """
    path = os.fspath(filepath)
    _check_archive(path)
    return keras.saving.load_model(path, **kwargs)


def _find_pruner_config(config):
    """The saved `Pruner` config in a model's `config.json`, or None."""
    if isinstance(config, dict):
        build = config.get("build_config")
        if isinstance(build, dict) and isinstance(build.get("prunemix"), dict):
            return build["prunemix"].get("pruner")
        inner = config.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("pruner"), dict):
            return inner["pruner"]
        for value in config.values():
            found = _find_pruner_config(value)
            if found is not None:
                return found
    elif isinstance(config, list):
        for value in config:
            found = _find_pruner_config(value)
            if found is not None:
                return found
    return None


def read_pruning_state(filepath) -> dict:
    """The pruning state of a `.keras` file, read from the archive alone.

    Needs neither the model's classes nor TensorFlow: works for a subclassed
    model whose module is not importable here.

    Returns:
        A dict: `name`, `class_name`, `pruner` (the saved `Pruner` config or
        None), `format`, `step`, `masks` (`{key: bool array}`, in order), and
        `paths` (`{key: path relative to the model, by layer names}`), and
        `weights` (`{h5 path: array}` of every other variable).

    Raises:
        FileNotFoundError, ValueError: as `load_model`.
    """
    import h5py

    path = os.fspath(filepath)
    _check_archive(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights_blob = archive.read("model.weights.h5") if "model.weights.h5" in \
            archive.namelist() else None
    state = {
        "name": config.get("config", {}).get("name"),
        "class_name": config.get("class_name"),
        "pruner": _find_pruner_config(config),
        "format": None,
        "step": None,
        "masks": {},
        "paths": {},
        "weights": {},
    }
    if weights_blob is None:
        return state
    datasets = {}
    with h5py.File(io.BytesIO(weights_blob), "r") as f:
        f.visititems(
            lambda name, obj: datasets.__setitem__(name, np.asarray(obj))
            if isinstance(obj, h5py.Dataset) else None
        )
    groups = {name.rsplit("/", 1)[0] for name in datasets if name.endswith("/manifest")}
    for group in sorted(groups):
        manifest = json.loads(bytes(datasets[f"{group}/manifest"].astype(np.uint8)).decode())
        state["format"] = manifest.get("format")
        state["step"] = int(datasets[f"{group}/pruning_step"])
        state["masks"] = {
            key: datasets[f"{group}/mask_{i}"].astype(bool)
            for i, key in enumerate(manifest["keys"])
        }
        state["paths"] = dict(zip(manifest["keys"], manifest.get("paths", manifest["keys"]),
                                  strict=True))
    state["weights"] = {
        name: value for name, value in datasets.items()
        if not any(name.startswith(f"{g}/") for g in groups) and not name.startswith("optimizer/")
    }
    return state
