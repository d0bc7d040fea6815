"""Suite-wide settings.

The suite runs in ``pytest-xdist`` workers (``-n auto`` in pyproject.toml: one per core, whole
files per worker so module fixtures are built once). Each worker, and every process a test
starts from it, uses one torch thread: two workers of two threads each on two cores would
oversubscribe them, which slows torch many times over.
"""

from __future__ import annotations

import os


def pytest_configure(config) -> None:  # noqa: ARG001 - pytest's hook signature
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
