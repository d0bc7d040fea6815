from __future__ import annotations

import json
import logging
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from vqkit.train import device as device_mod
from vqkit.train.checkpoint import latest_checkpoint, load_trainer_state
from vqkit.train.device import autocast_context, move_to_device, resolve_device, seed_everything
from vqkit.train.loop import EpochBatchSampler, TrainConfig, fit, lr_factor

CFG = TrainConfig(steps=12, lr=0.05, batch_size=5, device="cpu", ckpt_every=100, log_every=2)


class Regressor(nn.Module):
    """Linear regression with dropout (uses the torch RNG) and a buffer changed by forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Linear(8, 1))
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        with torch.no_grad():
            self.seen += x.abs().mean()  # like an EMA codebook update
        return self.net(x)


def _data(n: int = 23) -> TensorDataset:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return TensorDataset(x, y)


def step_fn(model, batch):
    x, y = batch
    pred = model(x)
    # Python and NumPy randomness too, so a resume must restore all three generators.
    jitter = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
    loss = (pred - y).pow(2).mean() * jitter
    return loss, {"usage": torch.tensor(0.5), "jitter": jitter}


def _model(seed: int = 0) -> Regressor:
    torch.manual_seed(seed)
    return Regressor()


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_loss_decreases(tmp_path):
    cfg = replace(CFG, steps=60, log_every=10, lr=0.03)
    result = fit(_model(), step_fn, _data(64), cfg=cfg, run_dir=tmp_path, name="r", progress=False)
    losses = [e["loss"] for e in result.history]
    assert result.step == 60 and len(losses) == 6
    assert losses[-1] < 0.25 * losses[0]
    assert result.skipped_steps == 0
    assert result.final_logs["usage"] == pytest.approx(0.5)


def _noisy_images(model, step):
    # Consumes every RNG stream; the loop must keep that from changing training.
    torch.rand(5), random.random(), np.random.rand()
    return {"sample": torch.rand(3, 4, 4), "gray": torch.zeros(1, 4, 4)}


def test_resume_is_bit_exact(tmp_path):
    # Checkpoints (and image_fn) at 3, 6, 9, 12: in the uninterrupted run image_fn runs between
    # steps 6 and 7, while the resumed run restores the RNG saved before it ran.
    cfg = replace(CFG, warmup_steps=3, grad_clip=1.0, weight_decay=1e-3, ckpt_every=3)
    data = _data()  # 23 items, 4 batches per epoch: step 6 is in the middle of epoch 1
    full = _model()
    a = fit(
        full,
        step_fn,
        data,
        cfg=cfg,
        run_dir=tmp_path,
        name="a",
        image_fn=_noisy_images,
        progress=False,
    )

    half = fit(
        _model(),
        step_fn,
        data,
        cfg=replace(cfg, steps=6),
        run_dir=tmp_path,
        name="b",
        image_fn=_noisy_images,
        progress=False,
    )
    assert half.step == 6
    state = load_trainer_state(tmp_path / "b")
    assert state["extra"]["data"] == {"epoch": 1, "batch": 2}
    resumed_model = _model(seed=99)  # different init: the weights must come from the checkpoint
    b = fit(
        resumed_model,
        step_fn,
        data,
        cfg=cfg,
        run_dir=tmp_path,
        name="b",
        resume=True,
        image_fn=_noisy_images,
        progress=False,
    )

    assert b.step == a.step == 12
    _assert_same_state(full, resumed_model)
    assert b.history == a.history  # includes the first half, read back from history.jsonl
    assert [e["step"] for e in a.history] == [2, 4, 6, 8, 10, 12]


def test_resume_without_restoring_state_would_differ(tmp_path):
    """Guards the test above: a plain second run from the half-way weights does not match."""
    data = _data()
    full = _model()
    fit(full, step_fn, data, cfg=CFG, run_dir=tmp_path, name="a", progress=False)
    half = _model()
    fit(half, step_fn, data, cfg=replace(CFG, steps=6), run_dir=tmp_path, name="b", progress=False)
    fit(half, step_fn, data, cfg=replace(CFG, steps=6), run_dir=tmp_path, name="c", progress=False)
    assert not torch.equal(full.net[0].weight, half.net[0].weight)


def test_resume_of_finished_run_returns_loaded_model(tmp_path, caplog):
    data = _data()
    trained = _model()
    first = fit(trained, step_fn, data, cfg=CFG, run_dir=tmp_path, name="r", progress=False)
    calls = []

    def counting_step(model, batch):
        calls.append(1)
        return step_fn(model, batch)

    again = _model(seed=5)
    result = fit(
        again, counting_step, data, cfg=CFG, run_dir=tmp_path, name="r", resume=True, progress=False
    )
    assert calls == []
    assert result.step == 12 and result.history == first.history
    assert result.final_logs == first.final_logs
    _assert_same_state(trained, again)


def test_existing_run_needs_resume_flag(tmp_path, caplog):
    data = _data()
    fit(
        _model(),
        step_fn,
        data,
        cfg=replace(CFG, steps=2),
        run_dir=tmp_path,
        name="r",
        progress=False,
    )
    with pytest.raises(ValueError, match="resume=True"):
        fit(_model(), step_fn, data, cfg=CFG, run_dir=tmp_path, name="r", progress=False)
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        r = fit(
            _model(),
            step_fn,
            data,
            cfg=replace(CFG, steps=2),
            run_dir=tmp_path,
            name="new",
            resume=True,
            progress=False,
        )
    assert r.step == 2 and "starting new from scratch" in caplog.text


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_step_is_skipped(tmp_path, caplog, kind):
    data = _data()
    cfg = replace(CFG, steps=3, grad_clip=1.0)
    calls = []

    def bad_third_step(model, batch):
        calls.append(1)
        loss, logs = step_fn(model, batch)
        if len(calls) == 3:
            if kind == "loss":
                loss = loss * float("nan")
            else:  # finite loss (0), infinite gradient: d sqrt(u)/du at u = 0
                w = model.net[0].weight.sum()
                loss = torch.sqrt(w - w.detach())
        return loss, logs

    bad = _model()
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        result = fit(
            bad, bad_third_step, data, cfg=cfg, run_dir=tmp_path, name="bad", progress=False
        )
    ref = _model()
    fit(ref, step_fn, data, cfg=replace(cfg, steps=2), run_dir=tmp_path, name="ref", progress=False)

    assert result.step == 3 and result.skipped_steps == 1
    _assert_same_state(bad, ref)  # no update, and the buffer changed by forward was restored
    assert "step 3 (epoch 0 batch 2)" in caplog.text and "skipped" in caplog.text
    assert result.history[-1]["skipped_steps"] == 1
    assert load_trainer_state(tmp_path / "bad")["extra"]["skipped_steps"] == 1


def test_history_tensorboard_and_checkpoints_written(tmp_path):
    cfg = replace(CFG, steps=7, ckpt_every=3, log_every=3, keep_checkpoints=2)
    result = fit(
        _model(),
        step_fn,
        _data(),
        cfg=cfg,
        run_dir=tmp_path,
        name="r",
        image_fn=_noisy_images,
        progress=False,
    )
    out = tmp_path / "r"
    lines = [json.loads(s) for s in (out / "history.jsonl").read_text().splitlines()]
    assert lines == result.history
    assert [e["step"] for e in lines] == [3, 6, 7]
    assert {"loss", "lr", "usage", "jitter", "grad_norm", "skipped_steps"} - set(lines[0]) == {
        "grad_norm"
    }
    assert list((out / "tb").glob("events.out.tfevents.*"))
    dirs = sorted(p.name for p in (out / "ckpt").iterdir() if p.is_dir())
    assert dirs == ["step_00000006", "step_00000007"]
    assert latest_checkpoint(out / "ckpt") == result.checkpoint == out / "ckpt" / "step_00000007"
    assert result.wall_time > 0


def test_history_is_truncated_to_the_checkpoint_on_resume(tmp_path):
    data = _data()
    cfg = replace(CFG, steps=4, ckpt_every=2, log_every=1)
    fit(_model(), step_fn, data, cfg=cfg, run_dir=tmp_path, name="r", progress=False)
    # Pretend the run was killed after logging step 5 but before checkpointing it.
    with (tmp_path / "r" / "history.jsonl").open("a") as f:
        f.write(json.dumps({"step": 5, "loss": 123.0}) + "\n")
    result = fit(
        _model(),
        step_fn,
        data,
        cfg=replace(cfg, steps=6),
        run_dir=tmp_path,
        name="r",
        resume=True,
        progress=False,
    )
    steps = [e["step"] for e in result.history]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert result.history[4]["loss"] != 123.0


def test_lr_schedule():
    cfg = TrainConfig(steps=10, warmup_steps=2, lr_schedule="cosine")
    factors = [lr_factor(s, cfg) for s in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))
    assert factors[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 7 / 8)))
    assert lr_factor(5, replace(cfg, lr_schedule="constant")) == 1.0


def test_epoch_batch_sampler_resumes_at_position():
    full = EpochBatchSampler(11, 3, seed=4)
    it = iter(full)
    batches = [next(it) for _ in range(8)]  # 3 batches per epoch, drop_last
    for epoch in range(2):
        seen = sum(batches[3 * epoch : 3 * epoch + 3], [])
        assert len(set(seen)) == 9 and set(seen) <= set(range(11))
    assert batches[0] != batches[3]  # a new permutation each epoch
    later = iter(EpochBatchSampler(11, 3, seed=4, start_epoch=1, start_batch=2))
    assert [next(later) for _ in range(3)] == batches[5:8]


def test_move_to_device_nested():
    batch = {"x": torch.ones(2), "pair": (torch.zeros(1), 3), "names": ["a"]}
    moved = move_to_device(batch, torch.device("cpu"))
    assert torch.equal(moved["x"], batch["x"]) and moved["pair"][1] == 3
    assert moved["names"] == ["a"]


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit(_model(), step_fn, _data(3), cfg=CFG, run_dir=tmp_path, name="r", progress=False)
    with pytest.raises(TypeError, match="scalar tensor loss"):
        fit(
            _model(),
            lambda m, b: (m(b[0]), {}),
            _data(),
            cfg=CFG,
            run_dir=tmp_path,
            name="s",
            progress=False,
        )
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(steps=1, batch_size=0)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(steps=1, lr_schedule="linear")
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(steps=1, grad_clip=0.0)
    with pytest.raises(ValueError, match=r"betas must be two values in \[0, 1\), got \[0.9, 1.0\]"):
        TrainConfig(steps=1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"betas must be two values in \[0, 1\), got \[0.9\]"):
        TrainConfig(steps=1, betas=(0.9,))


def test_adam_betas_reach_the_optimizer(tmp_path):
    # Same model, data and seed: only Adam's decay rates differ, so the weights must differ,
    # and the saved optimizer state must carry the configured rates.
    runs = {}
    for betas in [(0.9, 0.999), (0.5, 0.9)]:
        model = _model()
        cfg = replace(CFG, betas=betas)
        fit(model, step_fn, _data(), cfg=cfg, run_dir=tmp_path, name=str(betas), progress=False)
        state = load_trainer_state(tmp_path / str(betas))
        assert state["optimizer"]["param_groups"][0]["betas"] == betas
        runs[betas] = model
    a, b = (m.state_dict() for m in runs.values())
    assert not torch.equal(a["net.0.weight"], b["net.0.weight"])


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available.*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"'cuda:2' does not exist.*2 CUDA device"):
        resolve_device("cuda:2")


def test_autocast_is_a_no_op_on_cpu():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context(torch.device("cpu"), enabled=True):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32
    assert device_mod.autocast_context("cpu", enabled=False) is not None


def test_seed_everything_reproduces_all_generators():
    seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(2))
    seed_everything(7)
    assert (random.random(), np.random.rand()) == first[:2]
    assert torch.equal(torch.rand(2), first[2])
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_workers_give_the_same_run(tmp_path):
    data = _data()
    cfg = replace(CFG, steps=4)
    a, b = _model(), _model()
    fit(a, step_fn, data, cfg=cfg, run_dir=tmp_path, name="w0", progress=False)
    fit(
        b,
        step_fn,
        data,
        cfg=replace(cfg, num_workers=1),
        run_dir=tmp_path,
        name="w1",
        progress=False,
    )
    _assert_same_state(a, b)
