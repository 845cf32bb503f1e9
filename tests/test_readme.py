import inspect
import pathlib
import re

import keras
import numpy as np
import pytest

import prunemix

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Runs every Python snippet of the README, in order, in one namespace."""
    cwd = pathlib.Path.cwd()
    workdir = tmp_path_factory.mktemp("readme")
    rng = np.random.default_rng(0)
    namespace = {
        "x_train": rng.random((64, 20)).astype("float32"),
        "y_train": rng.integers(0, 10, 64),
    }
    snapshots = []
    import os

    os.chdir(workdir)
    try:
        keras.utils.set_random_seed(0)
        for i, block in enumerate(python_blocks()):
            exec(compile(block, f"{README}:python-block-{i}", "exec"), namespace)
            snapshots.append(dict(namespace))
    finally:
        os.chdir(cwd)
    return workdir, snapshots


def test_every_snippet_ran(readme_run):
    _, snapshots = readme_run
    assert len(snapshots) == len(python_blocks()) >= 6


def test_subclassed_example_prunes_exactly(readme_run):
    _, snapshots = readme_run
    model = snapshots[0]["model"]
    # 5 epochs x 2 steps = step 10: the schedule's value at the last update.
    assert int(model.pruner.pruning_step.numpy()) == 10
    target = float(model.pruning_schedule(10))
    report = prunemix.sparsity_report(model)
    assert [r.zeros for r in report] == [round(target * r.size) for r in report]
    assert report.zeros > 0


def test_own_train_step_and_tape_loop_prune(readme_run):
    _, snapshots = readme_run
    own = snapshots[1]["model"]
    assert int(own.pruner.pruning_step.numpy()) == 4
    assert prunemix.sparsity_report(own).sparsity == pytest.approx(0.5, abs=1e-3)
    looped = snapshots[2]["model"]
    assert int(looped.pruner.pruning_step.numpy()) == 4
    assert float(snapshots[2]["sparsity"]) == pytest.approx(0.5, abs=1e-3)


def test_prune_model_and_policy_snippets(readme_run):
    _, snapshots = readme_run
    pruned = snapshots[3]["pruned"]
    assert [r.zeros / r.size for r in prunemix.sparsity_report(pruned)] == [0.8, 0.8]
    assert all(np.count_nonzero(w == 0) < w.size / 2
               for w in snapshots[3]["pretrained"].get_weights())
    model = snapshots[4]["model"]
    zeros = {r.layer: r.zeros for r in prunemix.sparsity_report(model)}
    # 64x64 "wide" kernel in 1x4 blocks: round(0.9 * 1024) = 922 blocks of 4.
    assert zeros == {"first": 0, "middle": 64 * 64 // 2, "wide": 922 * 4, "last": 0}


def test_save_and_ship_snippet_wrote_everything(readme_run):
    workdir, snapshots = readme_run
    for name in ("pruned.keras", "stripped.keras", "serving", "model.tflite"):
        assert (workdir / name).exists(), name
    restored = snapshots[5]["restored"]
    assert int(restored.pruner.pruning_step.numpy()) == 10  # 8 + 2 more steps


def test_api_reference_matches_the_docstrings():
    text = README.read_text()
    for name in prunemix.__all__:
        if name == "__version__":
            continue
        first = inspect.getdoc(getattr(prunemix, name)).split("\n")[0].replace("|", "\\|")
        assert f"| `{name}` (" in text and first in text, name


def test_prune_for_speed_snippet(readme_run):
    _, snapshots = readme_run
    report = next(s["report"] for s in snapshots if "report" in s)
    assert [(r.shape, r.storage, r.block) for r in report if r.op == "FULLY_CONNECTED"] == [
        ((64, 20), "sparse kernel", (1, 4)), ((10, 64), "dense", ())]
