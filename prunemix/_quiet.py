"""Quiet imports for the command line (`python -m prunemix`)."""

from __future__ import annotations

import contextlib
import os
import sys


def running_cli() -> bool:
    """Whether this import is `python -m prunemix` locating its package
    (Python sets `sys.argv[0]` to "-m" while it does)."""
    return bool(sys.argv) and sys.argv[0] == "-m"


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True):
    """Silences file descriptor 2 within the block: TensorFlow's C++ side logs
    on import before TF_CPP_MIN_LOG_LEVEL applies (oneDNN, CUDA, CPU flags)."""
    if not enabled:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        sys.stderr.flush()
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
