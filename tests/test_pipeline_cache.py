"""Run.train_cached: a stage trained once for its settings, reused by every run with the same
(a hit trains nothing), trained anew for other settings, and never loaded when the folder of
its key holds other settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import vqkit.pipeline
from vqkit.bundle import load_model
from vqkit.errors import InputError
from vqkit.models.registry import register
from vqkit.pipeline import Run, cache_root, data_fingerprint
from vqkit.train import TrainConfig


@register("_cache_test_linear")
def _linear(*, width: int = 3) -> nn.Module:
    return nn.Linear(width, 1)


@dataclass
class _Cfg:
    vqvae_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1, device="cpu"))
    toy_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=6, batch_size=4, lr=0.1, device="cpu")
    )


DATA = TensorDataset(torch.randn(16, 3, generator=torch.Generator().manual_seed(0)))


def _step(model, batch):
    return model(batch[0]).pow(2).mean(), {}


def _train(run_dir, settings, calls=None):
    run = Run(_Cfg(), run_dir, progress=False)

    def build():
        if calls is not None:
            calls.append(1)
        return _linear()

    return run.train_cached("toy", build, _step, DATA, settings=settings)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "cache"))


def test_miss_trains_then_hit_reuses_without_training(tmp_path, capsys, monkeypatch):
    settings = {"width": 3, "data": data_fingerprint(DATA.tensors)}
    first, info = _train(tmp_path / "a", settings)
    assert not info["cached"] and info["steps"] == 6
    assert "training it once into" in capsys.readouterr().out
    where = cache_root() / "toy"
    (key,) = [p.name for p in where.iterdir()]
    assert json.loads((where / key / "settings.json").read_text()) == settings

    def no_fit(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(vqkit.pipeline, "fit", no_fit)
    calls = []
    second, info = _train(tmp_path / "b", settings, calls)
    assert info["cached"] and info["dir"] == str(where / key) and calls == []
    assert f"reusing the one cached in {where / key}" in capsys.readouterr().out
    torch.testing.assert_close(second.weight, first.weight, rtol=0, atol=0)
    # Each run keeps its own copy, loadable without the cache.
    for run in ("a", "b"):
        copy = load_model(tmp_path / run / "toy" / "ckpt")
        assert torch.equal(copy.weight, first.weight)


def test_other_settings_miss_and_train_anew(tmp_path, monkeypatch):
    base = {"width": 3, "data": data_fingerprint(DATA.tensors)}
    _train(tmp_path / "a", base)
    other = {**base, "data": data_fingerprint([DATA.tensors[0][:8]])}
    calls = []
    _, info = _train(tmp_path / "b", other, calls)
    assert not info["cached"] and calls == [1]
    assert len(list((cache_root() / "toy").iterdir())) == 2


def test_a_key_folder_holding_other_settings_is_refused(tmp_path):
    settings = {"width": 3, "data": "x"}
    _, info = _train(tmp_path / "a", settings)
    file = Path(info["dir"]) / "settings.json"
    stored = json.loads(file.read_text())
    stored["data"] = "y"  # e.g. copied there by hand
    file.write_text(json.dumps(stored))
    with pytest.raises(InputError, match=r"holds a toy trained for other settings \(data differ\)"):
        _train(tmp_path / "b", settings)


def test_a_stopped_training_continues_from_its_checkpoint(tmp_path, capsys):
    settings = {"width": 3}
    full, _ = _train(tmp_path / "a", settings)
    (where,) = (cache_root() / "toy").iterdir()
    (where / "complete.json").unlink()  # as if stopped after the last checkpoint was written
    capsys.readouterr()
    again, info = _train(tmp_path / "b", settings)
    assert "continuing the training cached in" in capsys.readouterr().out
    assert not info["cached"] and torch.equal(again.weight, full.weight)
