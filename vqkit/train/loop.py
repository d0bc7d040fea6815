"""The one training loop for every model in vqkit.

The loop knows nothing of modalities: a ``step_fn(model, batch) -> (loss, logs)`` computes the
loss of one batch. The loop owns the data order, the optimizer, mixed precision, non-finite loss
handling, logging and checkpoints, and it resumes bit-exactly: a run of N steps equals a run of
N/2 steps resumed to N (same seed, same device, deterministic kernels), because the checkpoint
holds the model, optimizer, scheduler, RNG states and the position in the data order.

Examples:
    >>> def step_fn(model, batch):
    ...     x, y = batch
    ...     loss = (model(x) - y).pow(2).mean()
    ...     return loss, {}
    >>> result = fit(model, step_fn, dataset, cfg=TrainConfig(steps=100), run_dir=Path("runs"),
    ...              name="demo")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, IterableDataset, Sampler
from tqdm.auto import tqdm

from vqkit.train.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    save_latest,
)
from vqkit.train.device import (
    autocast_context,
    move_to_device,
    resolve_device,
    seed_everything,
    set_rng_state,
)

log = logging.getLogger("vqkit.train")
_SHOWN = ("loss", "usage", "perplexity")  # logs shown on the progress bar (by key suffix)

StepFn = Callable[[nn.Module, Any], "tuple[Tensor, Mapping[str, float | Tensor]]"]
ImageFn = Callable[[nn.Module, int], "Mapping[str, Tensor]"]


@dataclass
class TrainConfig:
    """What every training run needs; the model and data have their own configs.

    Attributes:
        steps: optimizer steps in the whole run (a resumed run continues up to it).
        lr: peak learning rate of Adam.
        weight_decay: Adam's L2 penalty.
        batch_size: items per batch; the last incomplete batch of an epoch is dropped.
        grad_clip: max global gradient norm, or None for no clipping.
        device: "auto", "cpu", "cuda" or "cuda:N".
        amp: bf16 autocast on CUDA (ignored on the CPU).
        seed: seeds the model-independent randomness and the data order.
        ckpt_every: steps between checkpoints (one is always written at the end).
        log_every: steps between logged (averaged) scalars.
        num_workers: DataLoader worker processes.
        warmup_steps: linear warmup from 0 to ``lr``.
        lr_schedule: "constant" or "cosine" (to 0 at ``steps``) after the warmup.
        keep_checkpoints: step directories kept in ``ckpt/`` (the newest ones).
    """

    steps: int
    lr: float = 3e-4
    weight_decay: float = 0.0
    batch_size: int = 32
    grad_clip: float | None = None
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    ckpt_every: int = 1000
    log_every: int = 50
    num_workers: int = 0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        for name in ("steps", "warmup_steps", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "ckpt_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"
            )


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes:
        step: the last completed step.
        history: every logged entry ``{"step": s, "loss": ..., "lr": ..., **logs}``, including
            those of the run before a resume.
        wall_time: seconds spent in this call.
        skipped_steps: steps whose loss or gradient was not finite (no update), in the run.
        final_logs: the last logged entry without its step.
        checkpoint: the last checkpoint directory.
    """

    step: int
    history: list[dict[str, float]]
    wall_time: float
    skipped_steps: int
    final_logs: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


class EpochBatchSampler(Sampler[list[int]]):
    """Endless batches: a permutation seeded by ``seed + epoch`` per epoch, drop_last.

    Iteration starts at ``(start_epoch, start_batch)`` so a resumed run sees the same batches.
    """

    def __init__(
        self, num_items: int, batch_size: int, seed: int, start_epoch: int = 0, start_batch: int = 0
    ) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_epoch, self.start_batch = start_epoch, start_batch
        self.batches_per_epoch = num_items // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        epoch, first = self.start_epoch, self.start_batch
        while True:
            order = torch.randperm(
                self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch)
            )
            for b in range(first, self.batches_per_epoch):
                yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()
            epoch, first = epoch + 1, 0


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for the update made at ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _RunLog:
    """Scalars averaged between log steps, written to history.jsonl, TensorBoard and the bar.

    Tensors are summed on their device and read once per log step, so logging costs no
    device synchronisation on the other steps.
    """

    def __init__(self, out: Path, history: list, *, step: int, steps: int, progress: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import; only when training

        self.history = history
        self.writer = SummaryWriter(str(out / "tb"))
        self.file = (out / "history.jsonl").open("a")
        self.bar = tqdm(total=steps, initial=step, disable=not progress, desc=out.name)
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.since = (time.perf_counter(), step)

    def add(self, logs: Mapping[str, float | Tensor]) -> None:
        for k, v in logs.items():
            if isinstance(v, Tensor):
                if v.numel() != 1:
                    raise ValueError(f"log {k!r} must be a scalar, got shape {tuple(v.shape)}")
                v = v.detach().float().reshape(())
            elif not isinstance(v, (int, float)):
                raise TypeError(f"log {k!r} must be a float or a scalar tensor, got {type(v)}")
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def write(self, step: int, **more: float) -> dict[str, float]:
        """Log the means since the last call; returns them (the entry without its step)."""
        means = {k: float(s) / self.counts[k] for k, s in self.sums.items()}
        self.sums, self.counts = {}, {}
        entry = {"step": step, **means, **more}
        self.history.append(entry)
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()  # the curve survives a kill
        scalars = {k: v for k, v in entry.items() if k != "step"}
        for k, v in scalars.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        t0, s0 = self.since
        self.since = (now := time.perf_counter(), step)
        self.writer.add_scalar("speed/steps_per_s", (step - s0) / max(now - t0, 1e-9), step)
        shown = {k: f"{v:.4g}" for k, v in scalars.items() if k.endswith(_SHOWN)}
        self.bar.set_postfix(shown, refresh=False)
        return scalars

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.file.close()


def _snapshot_buffers(model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """Copies of float buffers (EMA codebooks, norm statistics) a NaN forward could poison."""
    return [(b, b.detach().clone()) for b in model.buffers() if b.is_floating_point()]


def _log_images(writer: Any, image_fn: ImageFn, model: nn.Module, step: int, device) -> None:
    """Run ``image_fn`` without disturbing the training RNG streams, so resume stays exact."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            images = image_fn(model, step)
    finally:
        model.train(was_training)
        random.setstate(py_state)
        np.random.set_state(np_state)
    for tag, img in images.items():
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] not in (1, 3):
            raise ValueError(
                f"image_fn must return (3, H, W) or (1, H, W) tensors; {tag!r} is "
                f"{getattr(img, 'shape', type(img))}"
            )
        writer.add_image(tag, img.detach().float().clamp(0, 1).cpu(), step)


def _update(
    model: nn.Module,
    step_fn: StepFn,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    params: list[Tensor],
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[str | None, dict[str, Any]]:
    """One forward, backward and Adam update; no update when the loss or gradient is not finite.

    Returns:
        ``(problem, logs)``: ``problem`` describes the non-finite value (None when the update
        was made); ``logs`` holds the loss and the step_fn's logs.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(device, cfg.amp):
        loss, logs = step_fn(model, batch)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError(
            f"step_fn must return (loss, logs) with a scalar tensor loss, got "
            f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}"
        )
    logs = {"loss": loss.detach(), **{k: v for k, v in (logs or {}).items() if k != "loss"}}
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        return f"loss {loss_value}", logs
    loss.backward()
    if cfg.grad_clip is not None:
        norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        logs["grad_norm"] = norm
        if not torch.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            return f"gradient norm {norm.item()}", logs
    optimizer.step()
    return None, logs


def _read_history(file: Path, upto: int) -> list[dict[str, float]]:
    """Entries up to step ``upto``; rewrites the file without later ones (logged after the
    checkpoint by a run that was then killed) so the resumed run does not log them twice."""
    if not file.is_file():
        return []
    entries = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    kept = [e for e in entries if e["step"] <= upto]
    if len(kept) != len(entries):
        atomic_write_bytes(file, "".join(json.dumps(e) + "\n" for e in kept).encode())
    return kept


def fit(
    model: nn.Module,
    step_fn: StepFn,
    dataset: Any,
    *,
    cfg: TrainConfig,
    run_dir: Path | str,
    name: str,
    resume: bool = False,
    collate_fn: Callable | None = None,
    image_fn: ImageFn | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` Adam steps, with logs and checkpoints in ``run_dir/name``.

    Args:
        model: any module; moved to the device and trained in place.
        step_fn: ``step_fn(model, batch) -> (loss, logs)``: the scalar loss of one batch (already
            on the device) and scalars to log (floats or 0-d tensors).
        dataset: a map-style dataset (``__len__`` and ``__getitem__``) of at least one batch.
        cfg: the training settings.
        run_dir, name: outputs go to ``run_dir/name/``: ``ckpt/``, ``tb/`` (TensorBoard) and
            ``history.jsonl`` (one JSON line per log step, appended as training goes).
        resume: continue from ``run_dir/name/ckpt`` (start fresh, with a warning, if there is no
            checkpoint yet). Without it, an existing checkpoint is an error.
        collate_fn: the DataLoader's ``collate_fn`` (default: ``default_collate``).
        image_fn: ``image_fn(model, step) -> {tag: (3, H, W) tensor in [0, 1]}`` logged to
            TensorBoard at each checkpoint; it runs under ``no_grad`` with its own RNG streams.
        progress: show a tqdm bar with the loss and any usage/perplexity logs.

    Returns:
        A :class:`TrainResult`.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError("fit needs a map-style dataset with __len__ and __getitem__")
    if len(dataset) < cfg.batch_size:
        raise ValueError(
            f"the dataset has {len(dataset)} items, fewer than one batch of {cfg.batch_size} "
            f"(incomplete batches are dropped); lower batch_size"
        )
    t_start = time.perf_counter()
    out = Path(run_dir) / name
    ckpt_root, history_file = out / "ckpt", out / "history.jsonl"
    device = resolve_device(cfg.device)
    start = latest_checkpoint(ckpt_root)
    if start is not None and not resume:
        raise ValueError(
            f"{out} already holds a checkpoint ({start.name}); pass resume=True to continue it, "
            f"or use another name or run_dir"
        )
    if start is None:
        if resume:
            log.warning("no checkpoint in %s; starting %s from scratch", ckpt_root, name)
        seed_everything(cfg.seed)

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = LambdaLR(optimizer, lambda s: lr_factor(s, cfg))

    step, epoch, batch_idx, skipped = 0, 0, 0, 0
    history: list[dict[str, float]] = []
    final_logs: dict[str, float] = {}
    sampler = EpochBatchSampler(len(dataset), cfg.batch_size, cfg.seed)
    if start is not None:
        load_weights(start, model)
        state = load_trainer_state(start)
        extra = state["extra"]
        if state["optimizer"] is None or state["scheduler"] is None or "data" not in extra:
            raise CheckpointError(
                f"{start} was not written by fit (no optimizer, scheduler or data position); "
                f"it can be loaded with load_weights but not resumed"
            )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, skipped = state["step"], extra.get("skipped_steps", 0)
        epoch, batch_idx = extra["data"]["epoch"], extra["data"]["batch"]
        final_logs = extra.get("final_logs", {})
        if batch_idx >= sampler.batches_per_epoch:  # the dataset shrank since the checkpoint
            epoch, batch_idx = epoch + 1, 0
        history = _read_history(history_file, upto=step)
        set_rng_state(state["rng"])
        log.info("resumed %s from %s at step %d", name, start, step)
        if step >= cfg.steps:
            return TrainResult(
                step, history, time.perf_counter() - t_start, skipped, final_logs, start
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        history_file.write_text("")  # a run killed before its first checkpoint left lines here

    sampler.start_epoch, sampler.start_batch = epoch, batch_idx
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        # Worker seeds come from this generator, not the global RNG that a resume restores.
        generator=torch.Generator().manual_seed(cfg.seed + step),
    )
    runlog = _RunLog(out, history, step=step, steps=cfg.steps, progress=progress)
    checkpoint = start
    batches = iter(loader)
    try:
        while step < cfg.steps:
            batch = move_to_device(next(batches), device)
            where = f"epoch {epoch} batch {batch_idx}"
            batch_idx += 1
            if batch_idx == sampler.batches_per_epoch:
                epoch, batch_idx = epoch + 1, 0
            step += 1
            lr = optimizer.param_groups[0]["lr"]

            buffers = _snapshot_buffers(model)
            problem, logs = _update(model, step_fn, batch, optimizer, params, cfg, device)
            if problem is None:
                runlog.add(logs)
            else:
                for buf, saved in buffers:  # e.g. an EMA codebook updated by the NaN forward
                    buf.copy_(saved)
                skipped += 1
                log.warning(
                    "step %d (%s): non-finite %s; skipped the update (%d skipped so far)",
                    *(step, where, problem, skipped),
                )
            with warnings.catch_warnings():  # a skipped first step is not a misuse
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                scheduler.step()
            runlog.bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                final_logs = runlog.write(step, lr=lr, skipped_steps=skipped)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                extra = {
                    "data": {"epoch": epoch, "batch": batch_idx},
                    "skipped_steps": skipped,
                    "final_logs": final_logs,
                }
                checkpoint = save_latest(
                    ckpt_root,
                    model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    step=step,
                    extra=extra,
                    keep=cfg.keep_checkpoints,
                )
                if image_fn is not None:
                    _log_images(runlog.writer, image_fn, model, step, device)
                runlog.writer.flush()
    finally:
        del batches  # shuts down worker processes
        runlog.close()
    return TrainResult(
        step, history, time.perf_counter() - t_start, skipped, final_logs, checkpoint
    )
