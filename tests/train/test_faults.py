"""Training faults: runs of non-finite steps, codebook collapse, a full disk, crafted pickles."""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from vqkit.quantize import VectorQuantizer
from vqkit.train import checkpoint as ckpt
from vqkit.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_trainer_state,
    load_weights,
)
from vqkit.train.loop import DivergenceError, TrainConfig, fit

CFG = TrainConfig(steps=10, lr=0.05, batch_size=5, device="cpu", ckpt_every=4, log_every=1)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n: int = 23) -> TensorDataset:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Recorder:
    """A step_fn that records every call (batch and weights) and returns NaN on chosen calls."""

    def __init__(self, bad_calls=(), usage: float = 0.5) -> None:
        self.bad_calls, self.usage = bad_calls, usage
        self.batches: list[torch.Tensor] = []
        self.weights: list[dict] = []

    def __call__(self, model, batch):
        assert len(self.batches) < 200, "the loop never gave up"
        x, y = batch
        self.batches.append(x.clone())
        self.weights.append(_weights(model))
        loss = (model(x) - y).pow(2).mean()
        if len(self.batches) in self.bad_calls or "all" in self.bad_calls:
            loss = loss * float("nan")
        return loss, {"usage": self.usage}


# ------------------------------------------------------------------------ non-finite steps


def test_skip_warning_names_epoch_batch_and_dataset_items(tmp_path, caplog):
    data = _data()
    rec = Recorder(bad_calls={3})
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        result = fit(
            _model(),
            rec,
            data,
            cfg=replace(CFG, steps=4),
            run_dir=tmp_path,
            name="r",
            progress=False,
        )
    assert result.skipped_steps == 1
    # The items of the bad batch, found independently by matching its rows in the data set.
    x_all = data.tensors[0]
    items = [int((x_all == row).all(dim=1).nonzero()) for row in rec.batches[2]]
    (message,) = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert "step 3 (epoch 0 batch 2)" in message
    assert f"dataset items {items}" in message


def test_run_of_bad_steps_restores_checkpoint_and_lowers_lr(tmp_path, caplog):
    data = _data()
    cfg = replace(CFG, max_bad_steps=3, bad_step_lr_factor=0.5)
    # Calls 1-4 good (checkpoint at step 4), call 5 good, calls 6-8 (steps 6-8) NaN: the third
    # one in a row sends the run back to step 4 with half the learning rate.
    rec = Recorder(bad_calls={6, 7, 8})
    model = _model()
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        result = fit(model, rec, data, cfg=cfg, run_dir=tmp_path, name="r", progress=False)

    assert result.step == 10 and result.skipped_steps == 3
    assert len(rec.batches) == 8 + 6  # 8 calls, then steps 5-10 again
    assert "went back to" in caplog.text and "step_00000004" in caplog.text
    # Back at the step-4 state: the weights and the batch of step 5 come again.
    assert _same(rec.weights[8], rec.weights[4])
    assert not _same(rec.weights[8], rec.weights[7])  # step 5's update was undone
    for redo, first in zip(rec.batches[8:], rec.batches[4:8]):
        assert torch.equal(redo, first)
    # The history is rewound: one entry per step, and the learning rate halves from step 5.
    assert [e["step"] for e in result.history] == list(range(1, 11))
    assert [e["lr"] for e in result.history] == [0.05] * 4 + [0.025] * 6
    # The lowered rate is in the checkpoint, and a resume keeps it.
    assert load_trainer_state(result.checkpoint)["extra"]["lr_scale"] == 0.5
    more = fit(
        _model(),
        Recorder(),
        data,
        cfg=replace(cfg, steps=12),
        run_dir=tmp_path,
        name="r",
        resume=True,
        progress=False,
    )
    assert [e["lr"] for e in more.history[-2:]] == [0.025, 0.025]


def test_bad_steps_restore_lowers_the_onecycle_schedule(tmp_path):
    data = _data()
    cfg = replace(CFG, max_bad_steps=3, warmup_steps=3, lr_schedule="onecycle")
    clean = fit(_model(), Recorder(), data, cfg=cfg, run_dir=tmp_path, name="a", progress=False)
    result = fit(
        _model(), Recorder({6, 7, 8}), data, cfg=cfg, run_dir=tmp_path, name="b", progress=False
    )
    lrs, clean_lrs = [e["lr"] for e in result.history], [e["lr"] for e in clean.history]
    assert lrs[:4] == clean_lrs[:4]
    assert lrs[4:] == pytest.approx([0.5 * lr for lr in clean_lrs[4:]])  # steps 5-10, halved


def test_no_checkpoint_inside_a_run_of_bad_steps(tmp_path, caplog):
    # Step 6 is a checkpoint step, but it falls inside the bad run (steps 5-7): the restore goes
    # back to step 4, the last checkpoint written after a good update.
    cfg = replace(CFG, ckpt_every=2, max_bad_steps=3, steps=8)
    rec = Recorder(bad_calls={5, 6, 7})
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        fit(_model(), rec, _data(), cfg=cfg, run_dir=tmp_path, name="r", progress=False)
    assert "went back to" in caplog.text and "step_00000004 (step 4)" in caplog.text


def test_bad_steps_before_any_checkpoint_raise(tmp_path):
    cfg = replace(CFG, max_bad_steps=3, ckpt_every=100)
    with pytest.raises(DivergenceError, match=r"3 non-finite steps in a row.*no checkpoint"):
        fit(
            _model(),
            Recorder(bad_calls={"all"}),
            _data(),
            cfg=cfg,
            run_dir=tmp_path,
            name="r",
            progress=False,
        )


def test_divergence_that_persists_gives_up_after_three_restores(tmp_path, caplog):
    cfg = replace(CFG, max_bad_steps=2, steps=20)
    rec = Recorder(bad_calls=set(range(5, 100)))
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        with pytest.raises(DivergenceError, match="step_00000004 already restored 3 times"):
            fit(_model(), rec, _data(), cfg=cfg, run_dir=tmp_path, name="r", progress=False)
    assert caplog.text.count("went back to") == 3
    assert "now x0.125" in caplog.text  # halved at each restore


# ------------------------------------------------------------------------ codebook collapse


def _collapse_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "codebook collapse" in r.getMessage()]


def test_low_usage_warns_once_after_warmup_with_fixes(tmp_path, caplog):
    cfg = replace(CFG, steps=12, ckpt_every=100, log_every=2, collapse_warmup=6)
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        fit(
            _model(),
            Recorder(usage=0.01),
            _data(),
            cfg=cfg,
            run_dir=tmp_path,
            name="low",
            progress=False,
        )
    (message,) = _collapse_messages(caplog)  # once, though every log step is low
    assert "step 6" in message and "usage=0.01" in message
    for fix in ("kmeans_init", "restart_after", "beta"):
        assert fix in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        fit(
            _model(),
            Recorder(usage=0.5),
            _data(),
            cfg=cfg,
            run_dir=tmp_path,
            name="ok",
            progress=False,
        )
        fit(
            _model(),
            Recorder(usage=0.01),
            _data(),
            cfg=replace(cfg, collapse_warmup=100),
            run_dir=tmp_path,
            name="early",
            progress=False,
        )
    assert _collapse_messages(caplog) == []


class TinyVQ(nn.Module):
    """A linear encoder into a real VectorQuantizer whose codes all sit far away but one."""

    def __init__(self, restart_after: int | None) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 4)
        self.vq = VectorQuantizer(32, 4, restart_after=restart_after)
        with torch.no_grad():
            self.vq.codebook.fill_(100.0)
            self.vq.codebook[0].zero_()

    def forward(self, x):
        return self.vq(self.enc(x)[:, :, None])  # (B, 4, 1)


def _vq_step(model, batch):
    out = model.vq(model.enc(batch[0])[:, :, None])
    return out.loss + out.quantized.pow(2).mean(), {"usage": out.usage}


def test_real_quantizer_collapse_is_reported_and_restarts_avoid_it(tmp_path, caplog):
    cfg = replace(CFG, steps=8, ckpt_every=100, log_every=2, collapse_warmup=4)
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        fit(
            TinyVQ(restart_after=None),
            _vq_step,
            _data(),
            cfg=cfg,
            run_dir=tmp_path,
            name="dead",
            progress=False,
        )
    (message,) = _collapse_messages(caplog)
    assert "usage=0.0312" in message  # 1 of 32 codes
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        fit(
            TinyVQ(restart_after=1),
            _vq_step,
            _data(),
            cfg=cfg,
            run_dir=tmp_path,
            name="restarted",
            progress=False,
        )
    assert _collapse_messages(caplog) == []


class BigVQ(nn.Module):
    """A linear encoder into a 4,096-code VectorQuantizer: spread (random codes, each batch row
    near its own) or collapsed (every code far away but one)."""

    def __init__(self, collapsed: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(3, 4)
        self.vq = VectorQuantizer(4096, 4)
        if collapsed:
            with torch.no_grad():
                self.vq.codebook.fill_(100.0)
                self.vq.codebook[0].zero_()


def _logged_vq_step(model, batch):
    from vqkit.pipeline import quantizer_logs

    out = model.vq(model.enc(batch[0])[:, :, None])
    return out.loss + out.quantized.pow(2).mean(), quantizer_logs(out)


@pytest.mark.parametrize("collapsed", [False, True])
def test_a_codebook_larger_than_the_batch_warns_only_when_it_collapses(
    tmp_path, caplog, collapsed
):
    # 23 lookups a batch reach at most 23 of 4,096 codes (usage <= 0.56%, far below the 5%
    # threshold): only the reachable usage tells a spread codebook from a collapsed one (1/23).
    cfg = replace(CFG, steps=6, batch_size=23, ckpt_every=100, log_every=2, collapse_warmup=2)
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        result = fit(
            BigVQ(collapsed), _logged_vq_step, _data(), cfg=cfg, run_dir=tmp_path, name="big",
            progress=False,
        )
    assert result.final_logs["usage"] < 0.05
    messages = _collapse_messages(caplog)
    if collapsed:
        assert result.final_logs["reachable_usage"] == pytest.approx(1 / 23)
        (message,) = messages
        assert "reachable_usage=0.0435" in message and "usage=0.000244" not in message
    else:
        assert result.final_logs["reachable_usage"] > 0.2  # 8 or more distinct codes of 23
        assert messages == []


def test_usage_alone_is_checked_where_no_reachable_usage_is_logged(tmp_path, caplog):
    # A step that logs only "usage" (as _vq_step does) keeps today's check on it.
    cfg = replace(CFG, steps=6, batch_size=23, ckpt_every=100, log_every=2, collapse_warmup=2)
    with caplog.at_level(logging.WARNING, logger="vqkit.train"):
        fit(BigVQ(False), _vq_step, _data(), cfg=cfg, run_dir=tmp_path, name="big", progress=False)
    (message,) = _collapse_messages(caplog)
    assert "usage=" in message and "reachable" not in message


# ------------------------------------------------------------------------ a full disk


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    data = _data()
    reference = _model()
    fit(reference, Recorder(), data, cfg=CFG, run_dir=tmp_path, name="ref", progress=False)

    def full_disk_writer(data: bytes):
        def write(f):
            f.write(data[: len(data) // 2])  # half the file lands, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return write

    rec = Recorder()

    def step_fn(model, batch):
        if len(rec.batches) == 4:  # after the step-4 checkpoint: every later write fails
            monkeypatch.setattr(
                ckpt, "atomic_write_bytes", lambda p, d: ckpt.atomic_write(p, full_disk_writer(d))
            )
        return rec(model, batch)

    with pytest.raises(CheckpointError) as e:
        fit(_model(), step_fn, data, cfg=CFG, run_dir=tmp_path, name="r", progress=False)
    message = str(e.value)
    assert "training stopped at step 8" in message
    assert "No space left on device" in message and "model.safetensors" in message
    assert "step_00000004 is intact" in message and "free disk space" in message
    assert "resume" in message
    monkeypatch.undo()

    root = tmp_path / "r" / "ckpt"
    assert latest_checkpoint(root) == root / "step_00000004"
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    load_weights(root, _model(seed=7))  # loadable
    assert load_trainer_state(root)["step"] == 4
    # Nothing is lost: resuming from it ends exactly where an uninterrupted run ends.
    resumed = _model(seed=7)
    result = fit(
        resumed, Recorder(), data, cfg=CFG, run_dir=tmp_path, name="r", resume=True, progress=False
    )
    assert result.step == 10 and _same(_weights(resumed), _weights(reference))


# ------------------------------------------------------------------------ crafted pickles


class Evil:
    """Unpickling this creates ``path``: what a malicious checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_optimizer_state_is_refused_on_resume(tmp_path):
    fit(
        _model(),
        Recorder(),
        _data(),
        cfg=replace(CFG, steps=4),
        run_dir=tmp_path,
        name="r",
        progress=False,
    )
    step_dir = latest_checkpoint(tmp_path / "r" / "ckpt")
    state = load_trainer_state(step_dir)
    marker = tmp_path / "pwned"
    state["optimizer"] = {"state": {0: {"exp_avg": Evil(marker)}}, "param_groups": []}
    torch.save(state, step_dir / "trainer.pt")
    with pytest.raises(CheckpointError, match=r"refusing to load .*trainer\.pt"):
        fit(
            _model(),
            Recorder(),
            _data(),
            cfg=CFG,
            run_dir=tmp_path,
            name="r",
            resume=True,
            progress=False,
        )
    assert not marker.exists()
    # The same object does run code when unpickled without weights_only.
    torch.load(step_dir / "trainer.pt", weights_only=False)
    assert marker.exists()
