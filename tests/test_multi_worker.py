import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "multi_worker.py"


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(tmp_path, workers, *extra):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(ROOT)}
    cluster = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    procs = []
    for index in range(workers):
        worker_env = dict(env)
        if workers > 1:
            worker_env["TF_CONFIG"] = json.dumps(
                {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
            )
        out = tmp_path / f"{workers}-{index}.npz"
        procs.append((out, subprocess.Popen(
            [sys.executable, str(SCRIPT), "--out", str(out), *extra], env=worker_env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )))
    results = []
    for out, proc in procs:
        try:
            log, _ = proc.communicate(timeout=240)
        finally:
            proc.kill()
        assert proc.returncode == 0, log[-3000:]
        results.append(dict(np.load(out)))
    return results


@pytest.mark.slow
def test_two_workers_end_with_identical_masks_and_weights(tmp_path):
    first, second = run_workers(tmp_path, 2)
    (single,) = run_workers(tmp_path, 1)
    assert int(first["step"]) == int(second["step"]) == int(single["step"]) == 20
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
        if key.startswith("mask"):
            mask = first[key]
            assert (~mask).sum() == round(0.8 * mask.size)
            # Same masks as one worker on the same global batches.
            np.testing.assert_array_equal(mask, single[key], err_msg=key)
        elif key.startswith("weight"):
            np.testing.assert_allclose(first[key], single[key], atol=1e-6)
            assert np.all(first[key][~first["mask" + key[len("weight"):]]] == 0)


@pytest.mark.slow
def test_fit_under_multi_worker_strategy(tmp_path):
    """keras-team/keras#20585: `fit` and `evaluate` of a PrunedModel run on two
    workers (prunemix works around the two Keras calls that fail), end with
    identical masks and weights, and match one worker fed the same global
    batches."""
    first, second = run_workers(tmp_path, 2, "--fit")
    (single,) = run_workers(tmp_path, 1, "--fit")
    assert int(first["step"]) == int(second["step"]) == int(single["step"]) == 20
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
        if key.startswith("mask"):
            assert (~first[key]).sum() == round(0.8 * first[key].size)
            np.testing.assert_array_equal(first[key], single[key], err_msg=key)
        elif key.startswith("weight"):
            np.testing.assert_allclose(first[key], single[key], atol=1e-5)
            assert np.all(first[key][~first["mask" + key[len("weight"):]]] == 0)
    # evaluate() ran on both workers and agrees with the single run.
    np.testing.assert_allclose(first["loss"], single["loss"], rtol=1e-5)
