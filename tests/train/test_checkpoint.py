from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from vqkit.bundle import load_model
from vqkit.train import checkpoint as ckpt
from vqkit.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
    save_latest,
)
from vqkit.train.device import set_rng_state


class Tiny(nn.Module):
    """Two layers with tied weights, a buffer and a non-contiguous buffer view."""

    def __init__(self, hidden: int = 4, extra_layer: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(3, hidden)
        self.out = nn.Linear(hidden, 3)
        self.tied = nn.Linear(3, hidden)
        self.tied.weight = self.inp.weight  # same Parameter under two names
        base = torch.arange(2 * hidden, dtype=torch.float32).reshape(2, hidden)
        self.register_buffer("t_view", base.t())  # non-contiguous
        self.register_buffer("steps", torch.tensor(7))
        if extra_layer:
            self.more = nn.Linear(3, 3)
        self.config = {"builder": "tests_ckpt_tiny", "kwargs": {"hidden": hidden}}

    def forward(self, x):
        return self.out(torch.relu(self.inp(x)))


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_weights_equal(model, expected):
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_weights_round_trip_exactly(tmp_path):
    a = _randomize(Tiny(), 0)
    with torch.no_grad():
        a.t_view.mul_(3)
        a.steps.fill_(42)
    save_checkpoint(tmp_path, a, step=3)
    b = _randomize(Tiny(), 1)
    load_weights(tmp_path, b)
    _assert_weights_equal(b, _weights(a))
    assert b.tied.weight is b.inp.weight  # still tied after loading
    assert json.loads((tmp_path / "model.json").read_text()) == a.config
    assert load_trainer_state(tmp_path)["step"] == 3


def test_trainer_state_round_trip(tmp_path):
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    sched.step()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(
        tmp_path, model, optimizer=opt, scheduler=sched, step=11, extra={"data": {"epoch": 2}}
    )
    expected = (random.random(), np.random.rand(), torch.rand(1))

    state = load_trainer_state(tmp_path)
    assert state["step"] == 11 and state["extra"] == {"data": {"epoch": 2}}
    opt2 = torch.optim.Adam(model.parameters(), lr=0.01)
    opt2.load_state_dict(state["optimizer"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(opt2.state_dict()["state"][0][k], v)
    assert state["scheduler"]["last_epoch"] == 1
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])


def test_failed_replace_keeps_previous_checkpoint(tmp_path, monkeypatch):
    a = _randomize(Tiny(), 0)
    save_checkpoint(tmp_path, a, step=1)
    before = _weights(a)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    _randomize(a, 5)
    with pytest.raises(CheckpointError, match=r"could not write .*model.safetensors.*disk full"):
        save_checkpoint(tmp_path, a, step=2)
    monkeypatch.undo()

    b = Tiny()
    load_weights(tmp_path, b)
    _assert_weights_equal(b, before)
    assert load_trainer_state(tmp_path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.json",
        "model.safetensors",
        "trainer.pt",
    ]


def test_failed_serialization_touches_nothing(tmp_path, monkeypatch):
    a = _randomize(Tiny(), 0)
    save_checkpoint(tmp_path, a, step=1)
    before = _weights(a)
    _randomize(a, 5)
    with pytest.raises(CheckpointError, match=r"extra.*numpy.*float\(x\)"):
        save_checkpoint(tmp_path, a, step=2, extra={"metric": np.float64(1.0)})

    def broken_write(data):  # fails in the middle of writing the bytes
        raise OSError("I/O error")

    monkeypatch.setattr(ckpt, "atomic_write_bytes", lambda p, d: ckpt.atomic_write(p, broken_write))
    with pytest.raises(CheckpointError, match="I/O error"):
        save_checkpoint(tmp_path, a, step=2)
    monkeypatch.undo()
    b = Tiny()
    load_weights(tmp_path, b)
    _assert_weights_equal(b, before)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("fail_on", ["dir", "pointer"])
def test_save_latest_failure_keeps_pointer_on_complete_checkpoint(tmp_path, monkeypatch, fail_on):
    a = _randomize(Tiny(), 0)
    first = save_latest(tmp_path, a, step=10)
    before = _weights(a)
    real_replace = os.replace

    def flaky_replace(src, dst):
        is_pointer = os.path.basename(dst) == "latest"
        is_dir = os.path.basename(dst).startswith("step_")
        if (fail_on == "pointer" and is_pointer) or (fail_on == "dir" and is_dir):
            raise OSError("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    _randomize(a, 3)
    with pytest.raises(CheckpointError, match="power cut"):
        save_latest(tmp_path, a, step=20)
    monkeypatch.undo()

    assert latest_checkpoint(tmp_path) == first
    b = Tiny()
    load_weights(tmp_path, b)  # resolves through the pointer
    _assert_weights_equal(b, before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

    # The next good save moves on and clears any orphan of the failed one.
    third = save_latest(tmp_path, a, step=15, keep=1)
    assert latest_checkpoint(tmp_path) == third
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step_00000015"]


def test_save_latest_layout_and_pruning(tmp_path):
    model = Tiny()
    dirs = [save_latest(tmp_path / "ckpt", model, step=s, keep=2) for s in (1, 2, 3)]
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_00000003"
    left = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.is_dir())
    assert left == ["step_00000002", "step_00000003"]
    assert resolve_checkpoint(tmp_path) == dirs[-1]  # a run directory is enough
    assert resolve_checkpoint(tmp_path / "ckpt") == dirs[-1]
    # Saving a step that exists never overwrites the pointed-to directory.
    again = save_latest(tmp_path / "ckpt", model, step=3, keep=2)
    assert again.name == "step_00000003-1"
    assert dirs[-1].is_dir() and latest_checkpoint(tmp_path / "ckpt") == again


def test_pointer_to_missing_dir_is_a_clear_error(tmp_path):
    save_latest(tmp_path, Tiny(), step=1)
    (tmp_path / "latest").write_text("step_00000099\n")
    with pytest.raises(CheckpointError, match="step_00000099.*holds no model.safetensors"):
        latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        resolve_checkpoint(tmp_path / "elsewhere")


class Evil:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_pickle_is_refused_and_never_runs(tmp_path):
    save_checkpoint(tmp_path, Tiny(), step=1)
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "extra": Evil(marker)}, tmp_path / "trainer.pt")
    with pytest.raises(CheckpointError, match=r"refusing to load .*trainer\.pt"):
        load_trainer_state(tmp_path)
    assert not marker.exists()

    # The same file really is malicious: an unsafe load runs the payload.
    proof = tmp_path / "proof"
    torch.save({"extra": Evil(proof)}, tmp_path / "unsafe.pt")
    torch.load(tmp_path / "unsafe.pt", weights_only=False)
    assert proof.exists()

    # An old-style raw pickle is refused too.
    (tmp_path / "trainer.pt").write_bytes(pickle.dumps(Evil(marker), protocol=2))
    with pytest.raises(CheckpointError, match=r"trainer\.pt"):
        load_trainer_state(tmp_path)
    assert not marker.exists()


def test_truncated_files_give_checkpoint_errors(tmp_path):
    save_checkpoint(tmp_path, Tiny(), step=1)
    (tmp_path / "trainer.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match=r"trainer\.pt"):
        load_trainer_state(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00\x01")
    with pytest.raises(CheckpointError, match=r"could not read weights from .*model\.safetensors"):
        load_weights(tmp_path, Tiny())


def test_mismatched_config_is_named(tmp_path):
    save_checkpoint(tmp_path, Tiny(hidden=4), step=1)
    with pytest.raises(CheckpointError) as e:
        load_weights(tmp_path, Tiny(hidden=8))
    msg = str(e.value)
    assert "does not match the config" in msg
    assert "inp.weight: checkpoint (4, 3) vs model (8, 3)" in msg

    with pytest.raises(
        CheckpointError, match=r"missing from the checkpoint: more\.weight, more\.bias"
    ):
        load_weights(tmp_path, Tiny(hidden=4, extra_layer=True))
    # strict=False tolerates missing keys, but never a shape mismatch.
    model = _randomize(Tiny(hidden=4, extra_layer=True), 3)
    more = model.more.weight.clone()
    load_weights(tmp_path, model, strict=False)
    assert torch.equal(model.more.weight, more)
    with pytest.raises(CheckpointError, match="mismatched shapes"):
        load_weights(tmp_path, Tiny(hidden=8), strict=False)


def test_load_model_rebuilds_from_model_json(tmp_path):
    from vqkit.models import BUILDERS, register

    if "tests_ckpt_tiny" not in BUILDERS:
        register("tests_ckpt_tiny")(lambda *, hidden=4: Tiny(hidden=hidden))
    a = _randomize(BUILDERS["tests_ckpt_tiny"](hidden=6), 0)
    save_latest(tmp_path / "ckpt", a, step=5)
    b = load_model(tmp_path)  # the run directory alone
    assert isinstance(b, Tiny) and b.inp.out_features == 6
    _assert_weights_equal(b, _weights(a))
    assert b.config == a.config


def test_load_model_without_config(tmp_path):
    model = Tiny()
    del model.config
    save_checkpoint(tmp_path, model, step=1)
    assert not (tmp_path / "model.json").exists()
    with pytest.raises(CheckpointError, match="has no model.json.*load_weights"):
        load_model(tmp_path)
