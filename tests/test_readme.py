import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_subclassed_example_runs():
    rng = np.random.default_rng(0)
    namespace = {
        "x_train": rng.random((64, 20)).astype("float32"),
        "y_train": rng.integers(0, 10, 64),
    }
    exec(compile(python_blocks()[0], str(README), "exec"), namespace)
    model = namespace["model"]
    report = namespace["prunemix"].sparsity_report(model)
    # 5 epochs x 2 steps = step 10: the schedule's value at the last update.
    step = int(model.pruner.pruning_step.numpy())
    assert step == 10
    target = float(model.pruning_schedule(10))
    assert [r.zeros for r in report] == [round(target * r.size) for r in report]
    assert report.zeros > 0
