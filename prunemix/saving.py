"""Saved files: the pruning-state format version, file checks, `load_model`,
and reading a `.keras` archive's pruning state without loading the model."""

from __future__ import annotations

import functools
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

__all__ = ["FORMAT_VERSION", "check_format", "check_keys", "has_pruning_state", "load_model",
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


def _damaged(where: str, what: str) -> ValueError:
    return ValueError(f"{where}: the pruning state is damaged: {what}.")


def _int_array(value, name: str, where: str, shape: tuple) -> np.ndarray:
    value = np.asarray(value)
    if value.shape != shape or not np.issubdtype(value.dtype, np.integer):
        raise _damaged(where, f"`{name}` must be an integer array of shape {shape}, got "
                              f"{value.dtype} of shape {value.shape}")
    if (value < 0).any():
        raise _damaged(where, f"`{name}` is negative ({value.min()})")
    return value.astype(np.int64)


def parse_state(get, names, where: str, shapes: dict | None = None) -> dict:
    """Reads and checks a format-2 pruning state: the one place every saved
    field is validated, for `load_model` and the CLI alike.

    Args:
        get: `get(name) -> np.ndarray` for a dataset of the state's group.
        names: the dataset names the group holds.
        where: the file, for messages.
        shapes: optional `{key: weight shape}`: a mask of another shape is
            refused before it is read.

    Returns:
        `{"format", "keys", "paths", "step", "counts", "masks"}` with `masks`
        a list of bool arrays in `keys` order.

    Raises:
        ValueError: naming the field: a manifest that is not UTF-8 JSON of
            the expected fields, a newer format, keys that repeat or are not
            strings, a negative or non-integer step or count, a count larger
            than its mask, a missing mask, or a mask that is not bool or has
            the wrong shape.
    """
    names = set(names)
    raw = np.asarray(get("manifest"))
    if raw.ndim != 1 or raw.dtype != np.uint8:
        raise _damaged(where, f"the manifest is {raw.dtype} of shape {raw.shape}, not bytes")
    try:
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _damaged(where, f"the manifest is not UTF-8 JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise _damaged(where, f"the manifest is a {type(manifest).__name__}, not an object")
    version = manifest.get("format")
    if not isinstance(version, int) or isinstance(version, bool) or version < 2:
        raise _damaged(where, f"the manifest's format is {version!r}")
    _check_version(version, where)
    keys = manifest.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise _damaged(where, f"the manifest's keys must be a list of names, got {keys!r:.80}")
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise _damaged(where, f"the manifest names weights twice: {repeated}")
    paths = manifest.get("paths", keys)
    if not isinstance(paths, list) or len(paths) != len(keys) or \
            not all(isinstance(p, str) for p in paths):
        raise _damaged(where, f"the manifest's paths do not match its {len(keys)} keys")
    declared = manifest.get("shapes")
    if declared is not None and (
        not isinstance(declared, list) or len(declared) != len(keys) or not all(
            isinstance(d, list) and all(isinstance(n, int) and n >= 0 for n in d)
            for d in declared)):
        raise _damaged(where, f"the manifest's shapes do not match its {len(keys)} keys")
    masks_held = {n for n in names if n.startswith("mask_")}
    expected = {f"mask_{i}" for i in range(len(keys))}
    if masks_held != expected:
        raise _damaged(where, f"it holds masks {sorted(masks_held)} for {len(keys)} keys")
    for field in ("pruning_step", "pruned_counts"):
        if field not in names:
            raise _damaged(where, f"`{field}` is missing")
    step = int(_int_array(get("pruning_step"), "pruning_step", where, ()))
    counts = _int_array(get("pruned_counts"), "pruned_counts", where, (len(keys),))
    masks = []
    for i, key in enumerate(keys):
        mask = np.asarray(get(f"mask_{i}"))
        if mask.dtype != np.bool_:
            raise _damaged(where, f"the mask of '{key}' is {mask.dtype}, not bool")
        if shapes is not None and key in shapes and mask.shape != tuple(shapes[key]):
            raise ValueError(
                f"Pruning state mismatch: {where}'s mask for '{key}' has shape "
                f"{mask.shape}; the weight has shape {tuple(shapes[key])}."
            )
        if declared is not None and mask.shape != tuple(declared[i]):
            raise _damaged(where, f"the mask of '{key}' has shape {mask.shape}; the manifest "
                                  f"says {tuple(declared[i])}")
        if counts[i] > mask.size:
            raise _damaged(where, f"'{key}' counts {counts[i]} pruned of {mask.size} entries")
        masks.append(mask)
    return {"format": version, "keys": keys, "paths": paths, "step": step, "counts": counts,
            "masks": masks}


def read_pruner_state(pruner, store) -> None:
    """Restores each mask onto its own weight by key (format 2, or format 1
    by position after checking count and shapes).

    Raises:
        ValueError: for state made for other pruned weights (naming both
            sides), a mask of another shape, a newer format, or a damaged
            field (`parse_state`).
    """
    if "manifest" not in store:
        return _read_format_1(pruner, store)
    state = parse_state(store.__getitem__, store.keys(), "the file",
                        {p.key: p.weight.shape for p in pruner.pruned_weights})
    saved = state["keys"]
    check_keys(saved, pruner._keys(), "the file", pruner.name)
    for p in pruner.pruned_weights:
        p.mask.assign(state["masks"][saved.index(p.key)])
    pruner.pruned_counts.assign(
        np.asarray([state["counts"][saved.index(p.key)] for p in pruner.pruned_weights],
                   np.int64)
    )
    pruner.pruning_step.assign(np.asarray(state["step"], np.int64))


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
        if value.dtype != np.bool_:
            raise _damaged("the file", f"the mask of '{p.key}' is {value.dtype}, not bool")
        p.mask.assign(value)
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


def check_keys(saved: list, own: list, where: str, owner: str, subset: bool = False) -> None:
    """Raises unless `saved` (pruned-weight keys from a file, checkpoint or
    saved resolution) names exactly the weights `own` (with `subset`: only
    weights among `own`), naming the keys on both sides."""
    missing = [k for k in saved if k not in own]
    extra = [] if subset else [k for k in own if k not in saved]
    if missing or extra:
        raise ValueError(
            f"Pruning state mismatch: {where} is for pruned weights {sorted(saved)}; "
            f"pruner '{owner}' {'has' if subset else 'prunes'} {sorted(own)}"
            + (f". Only in {where}: {missing}" if missing else "")
            + (f". Only in the model: {extra}" if extra else "")
            + ". Load it into a model with the same layers and pruning policy, or load "
            "a dense weights file to start the masks afresh."
        )


def check_format(config: dict, what: str) -> dict:
    """`config` without its `prunemix_format` key; raises for a newer format."""
    _check_version(config.get("prunemix_format", 1), what)
    return {k: v for k, v in config.items() if k != "prunemix_format"}


def _check_version(version, what: str) -> None:
    """Raises unless `version` is a pruning-state format this prunemix reads."""
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ValueError(
            f"{what} was saved with prunemix pruning-state format {version!r}; this "
            f"prunemix reads format {FORMAT_VERSION} and older. Upgrade prunemix."
        )


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
            zip, truncated, or without `config.json`), its weights cannot be
            read, its pruning state is damaged (each field is checked: see
            `parse_state`), or it was saved with a newer prunemix layout.

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
    try:
        return keras.saving.load_model(path, custom_objects=custom, **kwargs)
    except OSError as error:  # h5py: model.weights.h5 is not HDF5
        raise ValueError(f"{path}: its weights cannot be read ({error}).") from None


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

    path = os.fspath(filepath)
    _check_archive(path)
    with zipfile.ZipFile(path) as archive:
        try:
            config = json.loads(archive.read("config.json"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} has a config.json that is not JSON ({error}).") from None
        weights_blob = archive.read("model.weights.h5") if "model.weights.h5" in \
            archive.namelist() else None
    if not isinstance(config, dict):
        raise ValueError(f"{path} has a config.json that is not a model config.")
    inner = config.get("config")
    state = {
        "name": inner.get("name") if isinstance(inner, dict) else None,
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
    try:
        datasets = _h5_datasets(weights_blob, path)
    except OSError as error:
        raise ValueError(f"{path}: model.weights.h5 is not a readable HDF5 file ({error}).") \
            from None
    groups = sorted({name.rsplit("/", 1)[0] for name in datasets if name.endswith("/manifest")})
    if len(groups) > 1:
        raise ValueError(f"{path}: it holds {len(groups)} pruning states ({groups}); "
                         "a model has one pruner.")
    for group in groups:
        held = {n[len(group) + 1:] for n in datasets if n.startswith(f"{group}/")}
        parsed = parse_state(lambda name, g=group: datasets[f"{g}/{name}"](), held, path)
        state["format"], state["step"] = parsed["format"], parsed["step"]
        state["masks"] = dict(zip(parsed["keys"], parsed["masks"], strict=True))
        state["paths"] = dict(zip(parsed["keys"], parsed["paths"], strict=True))
    state["weights"] = {
        name: read() for name, read in datasets.items()
        if not any(name.startswith(f"{g}/") for g in groups) and not name.startswith("optimizer/")
    }
    return state


def _h5_datasets(blob: bytes, path: str) -> dict:
    """`{name: read}` for every dataset of an HDF5 file held in memory, where
    `read()` returns its array. A dataset that declares more bytes than the
    whole file holds (a shape bomb: `model.save` writes arrays uncompressed)
    is refused when it is read, before anything is allocated."""
    import h5py

    found = {}
    with h5py.File(io.BytesIO(blob), "r") as f:
        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            declared = int(np.prod(obj.shape, dtype=np.float64) * obj.dtype.itemsize)
            if declared > len(blob):
                found[name] = functools.partial(_refuse, path, name, obj.shape, len(blob))
            else:
                found[name] = functools.partial(lambda array: array, np.asarray(obj))
        f.visititems(visit)
    return found


def _refuse(path: str, name: str, shape: tuple, size: int):
    raise ValueError(
        f"{path}: dataset '{name}' declares shape {shape}, more bytes than the whole "
        f"weights file holds ({size}): the file is damaged."
    )
