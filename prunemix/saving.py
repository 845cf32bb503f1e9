"""Saved files: the pruning-state format version, file checks, `load_model`,
and reading a `.keras` archive's pruning state without loading the model."""

from __future__ import annotations

import io
import json
import os
import zipfile

import keras
import numpy as np

# Layout of the pruning state in saved files. Format 1 stored the masks by
# position; format 2 stores each under the key of the weight it belongs to,
# with a manifest, and the resolved policy in the config. Loading a newer
# format is an error; format 1 still loads.
FORMAT_VERSION = 2

__all__ = ["FORMAT_VERSION", "check_format", "has_pruning_state", "load_model",
           "read_pruner_state", "read_pruning_state", "write_pruner_state"]


def write_pruner_state(pruner, store) -> None:
    """Writes a built `Pruner`'s state into a Keras weights store (format 2):
    a JSON manifest (keys, paths, shapes), the step, the counts, and each
    mask as `mask_<i>` for the i-th key."""
    manifest = {
        "format": FORMAT_VERSION,
        "keys": [p.key for p in pruner.pruned_weights],
        "paths": [p.path for p in pruner.pruned_weights],
        "shapes": [list(p.weight.shape) for p in pruner.pruned_weights],
    }
    store["manifest"] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    store["pruning_step"] = np.asarray(pruner.pruning_step.numpy())
    store["pruned_counts"] = np.asarray(pruner.pruned_counts.numpy())
    for i, p in enumerate(pruner.pruned_weights):
        store[f"mask_{i}"] = np.asarray(p.mask.numpy())


def read_pruner_state(pruner, store) -> None:
    """Restores each mask onto its own weight by key (format 2, or format 1
    by position after checking count and shapes).

    Raises:
        ValueError: for state made for other pruned weights (naming both
            sides), a mask of another shape, or a newer format.
    """
    if "manifest" not in store:
        return _read_format_1(pruner, store)
    manifest = json.loads(bytes(np.asarray(store["manifest"], np.uint8)).decode())
    if manifest.get("format", 0) > FORMAT_VERSION:
        raise ValueError(
            f"The file was saved with prunemix pruning-state format "
            f"{manifest.get('format')!r}; this prunemix reads format {FORMAT_VERSION} "
            "and older. Upgrade prunemix."
        )
    saved = manifest["keys"]
    pruner._check_keys(saved, "the file")
    counts = np.asarray(store["pruned_counts"])
    for p in pruner.pruned_weights:
        value = np.asarray(store[f"mask_{saved.index(p.key)}"])
        if value.shape != tuple(p.weight.shape):
            raise ValueError(
                f"Pruning state mismatch: the file's mask for '{p.key}' has shape "
                f"{value.shape}; the weight has shape {tuple(p.weight.shape)}."
            )
        p.mask.assign(value.astype(bool))
    pruner.pruned_counts.assign(
        np.asarray([counts[saved.index(p.key)] for p in pruner.pruned_weights], np.int64)
    )
    pruner.pruning_step.assign(np.asarray(store["pruning_step"]))


def _read_format_1(pruner, store) -> None:
    """Format 1: masks..., pruning_step, sparsity, pruned_counts by position."""
    n = len(pruner.pruned_weights)
    values = [np.asarray(store[str(i)]) for i in range(len(store))]
    shapes = [tuple(p.weight.shape) for p in pruner.pruned_weights]
    if len(values) != n + 3 or [v.shape for v in values[:n]] != shapes:
        raise ValueError(
            f"This file holds pruning state in prunemix format 1 (masks by position) "
            f"for {max(len(values) - 3, 0)} weights of shapes "
            f"{[v.shape for v in values[:-3]]}; pruner '{pruner.name}' prunes "
            f"{[p.key for p in pruner.pruned_weights]} of shapes {shapes}. Load it with the "
            "model and policy that wrote it, save it again to get format 2, or load a dense "
            "weights file."
        )
    for p, value in zip(pruner.pruned_weights, values[:n], strict=True):
        p.mask.assign(value.astype(bool))
    pruner.pruning_step.assign(values[n])
    pruner.pruned_counts.assign(values[n + 2].astype(np.int64))


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
    with zipfile.ZipFile(path) as archive:
        try:
            config = json.loads(archive.read("config.json"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} has a config.json that is not JSON ({error}).") from None
    custom = dict(kwargs.pop("custom_objects", None) or {})
    for name in _pruned_class_names(config):
        custom.setdefault(name, _pruned_class(name, path))
    return keras.saving.load_model(path, custom_objects=custom, **kwargs)


def _pruned_class_names(config) -> set:
    """The registered names of `pruned_class` classes a saved config uses."""
    from prunemix.model import PRUNED_PREFIX

    found = set()
    if isinstance(config, dict):
        name = config.get("registered_name")
        if isinstance(name, str) and name.startswith(f"prunemix>{PRUNED_PREFIX}"):
            found.add(name)
        values = config.values()
    elif isinstance(config, list):
        values = config
    else:
        values = ()
    for value in values:
        found |= _pruned_class_names(value)
    return found


def _pruned_class(name: str, path: str):
    """`pruned_class` of the class a saved name points to, found among the
    classes registered with Keras (no module is imported for it)."""
    from prunemix.model import PRUNED_PREFIX, pruned_class

    base_name = name.removeprefix(f"prunemix>{PRUNED_PREFIX}")
    base = keras.saving.get_registered_object(base_name)
    if not isinstance(base, type) or not issubclass(base, keras.Model):
        raise ValueError(
            f"{path} holds a pruned '{base_name}' model, and no keras.Model class is "
            f"registered with Keras as '{base_name}'. Import the module that defines it "
            "(e.g. `import keras_hub`) before loading."
        )
    return pruned_class(base)


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
