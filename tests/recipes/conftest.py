"""Shared fixtures of the recipe tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import vqkit.pipeline
from vqkit.cli import main


class _Captured(Exception):
    """Raised by the patched ``fit`` once the prior's initial weights are recorded."""


@pytest.fixture
def seed_decides_initial_weights(monkeypatch, tmp_path) -> Callable[[Callable[[Path], list]], None]:
    """Checks that the config's seed alone decides the VQ-VAE's and the prior's initial weights.

    Torch seeds each new process's generator at random. The returned function starts ``vqkit``
    twice with the arguments ``argv(out_dir)``, after seeding torch differently each time, stops
    each run when its second ``fit`` (the prior's) starts, and asserts that both runs gave both
    models the same initial weights.
    """
    real_fit = vqkit.pipeline.fit

    def initial_weights(argv: list) -> list[dict[str, torch.Tensor]]:
        seen = []

        def fit(model, *args, **kwargs):
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            if len(seen) == 2:
                raise _Captured
            return real_fit(model, *args, **kwargs)

        monkeypatch.setattr(vqkit.pipeline, "fit", fit)  # every recipe trains through the pipeline
        with pytest.raises(_Captured):
            main(argv)
        return seen

    def check(argv: Callable[[Path], list]) -> None:
        runs = []
        for noise in (1, 2):
            torch.manual_seed(noise)
            runs.append(initial_weights(argv(tmp_path / f"run{noise}")))
        for stage, a, b in zip(("vqvae", "prior"), *runs):
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), f"{stage}: {k} differs between the two runs"

    return check
