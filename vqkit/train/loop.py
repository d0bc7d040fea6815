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

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR
from torch.utils.data import DataLoader, IterableDataset

from vqkit.distributed import (
    agree,
    broadcast_object,
    is_main,
    on_main,
    rank,
    rank_device,
    world,
    wrap_ddp,
)
from vqkit.errors import InputError
from vqkit.train.checkpoint import (
    CheckpointError,
    clear_leftovers,
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    resume_candidates,
    save_latest,
)
from vqkit.train.device import (
    autocast_context,
    move_to_device,
    resolve_device,
    seed_everything,
    set_rng_state,
)
from vqkit.train.runlog import ImageFn, RunLog, log_images, read_history
from vqkit.train.sampler import EpochBatchSampler

log = logging.getLogger("vqkit.train")
_MAX_RESTORES = 3  # restores of one checkpoint before a run of non-finite steps is fatal

StepFn = Callable[[nn.Module, Any], "tuple[Tensor, Mapping[str, float | Tensor]]"]


@dataclass
class TrainConfig:
    """What every training run needs; the model and data have their own configs.

    Attributes:
        steps: optimizer steps in the whole run (a resumed run continues up to it).
        lr: peak learning rate of Adam.
        weight_decay: Adam's L2 penalty.
        betas: Adam's decay rates of its running gradient mean and squared gradient (torch's
            defaults). The cifar10 preset uses (0.9, 0.99): about 0.5% lower test MSE there.
        batch_size: items per batch; the last incomplete batch of an epoch is dropped. It is the
            global batch: in a distributed run each of N processes takes batch_size / N items of
            it, so N processes see exactly the batches that one process sees.
        grad_clip: max global gradient norm, or None for no clipping.
        device: "auto", "cpu", "cuda" or "cuda:N".
        amp: bf16 autocast on CUDA (ignored on the CPU).
        seed: seeds the model-independent randomness and the data order.
        ckpt_every: steps between checkpoints (one is always written at the end).
        log_every: steps between logged (averaged) scalars.
        num_workers: DataLoader worker processes.
        warmup_steps: linear warmup from 0 to ``lr`` ("constant", "cosine"); for "onecycle",
            the steps up to the peak ``lr``.
        lr_schedule: "constant" or "cosine" (to 0 at ``steps``) after the warmup, or
            "onecycle": torch's ``OneCycleLR`` with its defaults (Smith & Topin 2019): the
            learning rate rises from ``lr / 25`` to ``lr`` over ``warmup_steps`` and falls to
            ``lr / 25e4`` at ``steps``, both on half cosines, while Adam's first beta falls from
            0.95 to 0.85 and rises back (``betas[0]`` is not used). Needs
            ``2 <= warmup_steps < steps`` (each half needs two steps); a resume must keep
            ``steps``.
        keep_checkpoints: step directories kept in ``ckpt/`` (the newest ones).
        max_bad_steps: after this many non-finite steps in a row, go back to the last
            checkpoint (model, optimizer, scheduler, data position) and lower the learning rate.
        bad_step_lr_factor: what the learning rate is multiplied by at each such restore (the
            reduced factor is kept in later checkpoints, so a resume keeps it).
        collapse_usage: warn (once) when a logged ``*usage`` (fraction of codes used) falls
            below this after ``collapse_warmup`` steps; 0 turns the check off.
        collapse_warmup: steps before the codebook-collapse check starts.
    """

    steps: int
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 32
    grad_clip: float | None = None
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    ckpt_every: int = 1000
    log_every: int = 50
    num_workers: int = 0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    keep_checkpoints: int = 2
    max_bad_steps: int = 5
    bad_step_lr_factor: float = 0.5
    collapse_usage: float = 0.05
    collapse_warmup: int = 200

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "num_workers", "seed", "collapse_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        positive = (
            "steps",
            "batch_size",
            "ckpt_every",
            "log_every",
            "keep_checkpoints",
            "max_bad_steps",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {list(self.betas)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.lr_schedule not in ("constant", "cosine", "onecycle"):
            raise ValueError(
                f"lr_schedule must be 'constant', 'cosine' or 'onecycle', got {self.lr_schedule!r}"
            )
        if self.lr_schedule == "onecycle" and not 2 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"lr_schedule 'onecycle' needs 2 <= warmup_steps < steps (the steps up to the "
                f"peak lr, e.g. 5% of steps), got warmup_steps={self.warmup_steps}, "
                f"steps={self.steps}; change warmup_steps, or use lr_schedule 'constant' or "
                f"'cosine' for so few steps"
            )
        if not 0 < self.bad_step_lr_factor <= 1:
            raise ValueError(
                f"bad_step_lr_factor must lie in (0, 1], got {self.bad_step_lr_factor}"
            )
        if not 0 <= self.collapse_usage < 1:
            raise ValueError(f"collapse_usage must lie in [0, 1), got {self.collapse_usage}")


class DivergenceError(RuntimeError):
    """Training produced non-finite losses ``max_bad_steps`` times in a row and could not recover
    (no checkpoint to go back to, or the same one restored too often)."""


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


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for the update made at ``step`` (0-based); "constant" and
    "cosine" only ("onecycle" is torch's ``OneCycleLR``, see :func:`_scheduler`)."""
    if cfg.lr_schedule == "onecycle":
        raise ValueError("lr_factor covers 'constant' and 'cosine'; 'onecycle' is OneCycleLR's")
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, lr_scale: list[float]
) -> LRScheduler:
    """The learning-rate schedule of ``cfg``; ``lr_scale[0]`` scales the lambda schedules (the
    one-cycle one is rescaled in place by :func:`_rescale_onecycle`)."""
    if cfg.lr_schedule == "onecycle":
        return OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=cfg.warmup_steps / cfg.steps
        )
    return LambdaLR(optimizer, lambda s: lr_factor(s, cfg) * lr_scale[0])


def _rescale_onecycle(optimizer: torch.optim.Optimizer, ratio: float) -> None:
    """Multiply a one-cycle schedule's learning rates from now on by ``ratio``: OneCycleLR keeps
    its start, peak and end rates in the optimizer's groups (so checkpoints hold them too)."""
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            group[key] *= ratio


def _snapshot_buffers(model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """Copies of float buffers (EMA codebooks, norm statistics) a NaN forward could poison."""
    return [(b, b.detach().clone()) for b in model.buffers() if b.is_floating_point()]


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
    # Ranks skip together: one that skipped the backward would leave the others waiting in
    # DDP's gradient all-reduce. (The gradient norm below is computed after that all-reduce, so
    # it is the same on every rank already.)
    if not agree(math.isfinite(loss_value)):
        elsewhere = " on another rank" if math.isfinite(loss_value) else ""
        return f"loss {loss_value}{elsewhere}", logs
    loss.backward()
    if cfg.grad_clip is not None:
        norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        logs["grad_norm"] = norm
        if not torch.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            return f"gradient norm {norm.item()}", logs
    optimizer.step()
    return None, logs


def _restore(
    checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` into the training state, RNG streams included.

    Returns:
        The trainer state: ``step`` and ``extra`` (data position, skipped steps, ...).
    """
    state = load_trainer_state(checkpoint)  # before the weights: a bad file changes nothing
    load_weights(checkpoint, model)
    if state["optimizer"] is None or state["scheduler"] is None or "data" not in state["extra"]:
        raise CheckpointError(
            f"{checkpoint} was not written by fit (no optimizer, scheduler or data position); "
            f"it can be loaded with load_weights but not resumed"
        )
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state


def _restore_newest(
    candidates: list[Path],
    pointer_problem: str | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
) -> tuple[Path, dict[str, Any]]:
    """Restore the first of ``candidates`` (best first) that loads and verifies, saying which
    and why when it is not the latest one.

    Raises:
        CheckpointError: none of them loads; the message gives each one's reason.
    """
    failures = [pointer_problem] if pointer_problem else []
    for checkpoint in candidates:
        try:
            state = _restore(checkpoint, model, optimizer, scheduler)
        except CheckpointError as e:
            failures.append(str(e))
            continue
        if failures:
            log.warning(
                "resuming from %s, the newest checkpoint that loads, because %s",
                *(checkpoint, "; ".join(failures)),
            )
        return checkpoint, state
    raise CheckpointError(
        f"no checkpoint in {candidates[0].parent} can be resumed: {'; '.join(failures)}"
    )


def _warn_collapse(logs: Mapping[str, float], step: int, cfg: TrainConfig) -> bool:
    """Warn when a logged code usage is below ``cfg.collapse_usage``; True when it warned.

    Where a ``reachable_<name>`` is logged beside a ``<name>`` ending in ``usage``, that one is
    checked instead: a batch of 2,048 positions can use at most 3.1% of 65,536 codes, which is
    no collapse."""
    if cfg.collapse_usage <= 0 or step < cfg.collapse_warmup:
        return False
    low = {
        k: v
        for k, v in logs.items()
        if k.endswith("usage") and f"reachable_{k}" not in logs and v < cfg.collapse_usage
    }
    if not low:
        return False
    shown = ", ".join(f"{k}={v:.3g}" for k, v in low.items())
    log.warning(
        "codebook collapse at step %d: %s, below collapse_usage=%g (fraction of codes used). "
        "Likely fixes: k-means initialisation of the codebook (quantizer kmeans_init=true), "
        "dead-code restarts (quantizer restart_after, e.g. 100), a lower commitment weight "
        "beta (e.g. 0.1), or a lower learning rate",
        *(step, shown, cfg.collapse_usage),
    )
    return True


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

    Distributed (a process group initialised, e.g. by ``vqkit.distributed`` under
    torchrun): the step runs inside DistributedDataParallel, each rank takes its slice of every
    global batch, logged scalars are averaged over ranks, only rank 0 writes files and shows the
    bar, and every rank resumes from the same checkpoint (``run_dir`` must be on a filesystem
    all ranks see).

    Returns:
        A :class:`TrainResult` (the same on every rank).
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError("fit needs a map-style dataset with __len__ and __getitem__")
    if len(dataset) < cfg.batch_size:
        raise InputError(
            f"the {name} stage's data set has {len(dataset)} items, fewer than one batch of "
            f"{cfg.batch_size} (incomplete batches are dropped); lower its batch size "
            f"(--set {name}_train.batch_size={len(dataset)}) or give it more data"
        )
    t_start = time.perf_counter()
    out = Path(run_dir) / name
    ckpt_root, history_file = out / "ckpt", out / "history.jsonl"
    device = rank_device(resolve_device(cfg.device))
    if resume:
        if is_main():
            clear_leftovers(ckpt_root)  # a kill mid-save or mid-prune
        candidates, pointer_problem = resume_candidates(ckpt_root)
    else:
        start = latest_checkpoint(ckpt_root)
        if start is not None:
            raise ValueError(
                f"{out} already holds a checkpoint ({start.name}); pass resume=True to continue "
                f"it, or use another name or run_dir"
            )
        candidates, pointer_problem = [], None
    if not candidates:
        if resume:
            log.warning("no checkpoint in %s; starting %s from scratch", ckpt_root, name)
        seed_everything(cfg.seed)

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    # lr_scale[0] drops by bad_step_lr_factor at each restore after a run of non-finite steps.
    lr_scale = [1.0]
    scheduler = _scheduler(optimizer, cfg, lr_scale)

    step, epoch, batch_idx, skipped = 0, 0, 0, 0
    history: list[dict[str, float]] = []
    final_logs: dict[str, float] = {}
    sampler = EpochBatchSampler(len(dataset), cfg.batch_size, cfg.seed, shard=(rank(), world()))
    collapse_warned = False
    start = None
    if candidates:
        start, state = _restore_newest(candidates, pointer_problem, model, optimizer, scheduler)
        extra = state["extra"]
        lr_scale[0] = extra.get("lr_scale", 1.0)
        collapse_warned = extra.get("collapse_warned", False)
        step, skipped = state["step"], extra.get("skipped_steps", 0)
        epoch, batch_idx = extra["data"]["epoch"], extra["data"]["batch"]
        final_logs = extra.get("final_logs", {})
        if batch_idx >= sampler.batches_per_epoch:  # the dataset shrank since the checkpoint
            epoch, batch_idx = epoch + 1, 0
        history = broadcast_object(read_history(history_file, upto=step) if is_main() else None)
        log.info("resumed %s from %s at step %d", name, start, step)
        if step >= cfg.steps:
            return TrainResult(
                step, history, time.perf_counter() - t_start, skipped, final_logs, start
            )
        if isinstance(scheduler, OneCycleLR) and scheduler.total_steps != cfg.steps:
            raise ValueError(
                f"{name}: the one-cycle schedule of {start} spans {scheduler.total_steps} steps, "
                f"not steps={cfg.steps}; resume it with steps={scheduler.total_steps}"
            )
    elif is_main():
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
    runlog = RunLog(out, history, step=step, steps=cfg.steps, progress=progress, main=is_main())
    # In a distributed run: DDP around the step; the same step function in one process.
    train_model, train_step = wrap_ddp(model, step_fn, device)
    checkpoint = start
    bad_run, restores = 0, 0  # non-finite steps in a row; restores of `checkpoint` so far
    batches = iter(loader)
    try:
        while step < cfg.steps:
            batch = move_to_device(next(batches), device)
            position = (epoch, batch_idx)  # of this batch in the data order, to name it
            where = f"epoch {epoch} batch {batch_idx}"
            batch_idx += 1
            if batch_idx == sampler.batches_per_epoch:
                epoch, batch_idx = epoch + 1, 0
            step += 1
            lr = optimizer.param_groups[0]["lr"]

            buffers = _snapshot_buffers(model)
            problem, logs = _update(train_model, train_step, batch, optimizer, params, cfg, device)
            if problem is None:
                bad_run = 0
                runlog.add(logs)
            else:
                for buf, saved in buffers:  # e.g. an EMA codebook updated by the NaN forward
                    buf.copy_(saved)
                skipped, bad_run = skipped + 1, bad_run + 1
                log.warning(
                    "step %d (%s): non-finite %s on dataset items %s; skipped the update "
                    "(%d skipped so far, %d in a row)",
                    *(step, where, problem, sampler.indices(*position), skipped, bad_run),
                )
                if bad_run >= cfg.max_bad_steps:
                    restores += 1
                    if checkpoint is None or restores > _MAX_RESTORES:
                        raise DivergenceError(
                            f"{name}: {bad_run} non-finite steps in a row up to step {step} and "
                            + (
                                "no checkpoint to go back to yet"
                                if checkpoint is None
                                else f"{checkpoint} already restored {_MAX_RESTORES} times"
                            )
                            + "; lower the learning rate, set grad_clip, or check the data "
                            "items named in the warnings above"
                        )
                    lr_scale[0] *= cfg.bad_step_lr_factor
                    state = _restore(checkpoint, model, optimizer, scheduler)
                    step, extra = state["step"], state["extra"]
                    epoch, batch_idx = extra["data"]["epoch"], extra["data"]["batch"]
                    final_logs, bad_run = extra.get("final_logs", {}), 0
                    if cfg.lr_schedule == "onecycle":
                        _rescale_onecycle(optimizer, lr_scale[0] / extra.get("lr_scale", 1.0))
                    else:
                        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                            group["lr"] = base * lr_factor(scheduler.last_epoch, cfg) * lr_scale[0]
                    runlog.rewind(step, history_file)
                    del batches  # restart the data order at the checkpoint's position
                    sampler.start_epoch, sampler.start_batch = epoch, batch_idx
                    batches = iter(loader)
                    log.warning(
                        "%s: went back to %s (step %d) after %d non-finite steps in a row; "
                        "learning rate multiplied by %g (now x%g of the schedule)",
                        *(name, checkpoint, step, cfg.max_bad_steps),
                        *(cfg.bad_step_lr_factor, lr_scale[0]),
                    )
                    continue
            with warnings.catch_warnings():  # a skipped first step is not a misuse
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                scheduler.step()
            runlog.bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                final_logs = runlog.write(step, lr=lr, skipped_steps=skipped)
                if not collapse_warned:
                    collapse_warned = _warn_collapse(final_logs, step, cfg)
            # No periodic checkpoint inside a run of non-finite steps: it may be the state that
            # a restore has to go back past.
            if (step % cfg.ckpt_every == 0 and bad_run == 0) or step == cfg.steps:
                extra = {
                    "data": {"epoch": epoch, "batch": batch_idx},
                    "skipped_steps": skipped,
                    "final_logs": final_logs,
                    "lr_scale": lr_scale[0],
                    "collapse_warned": collapse_warned,
                }
                try:
                    saved = on_main(  # every rank gets the path (or the error)
                        save_latest,
                        ckpt_root,
                        model,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        step=step,
                        extra=extra,
                        keep=cfg.keep_checkpoints,
                    )
                except CheckpointError as e:
                    kept = f"{checkpoint} is intact" if checkpoint else "there is no earlier one"
                    raise CheckpointError(
                        f"{name}: training stopped at step {step}: {e}. The last complete "
                        f"checkpoint {kept}; free disk space (or lower keep_checkpoints) and "
                        f"continue with resume=True (`vqkit run ... --resume`)"
                    ) from e
                if saved != checkpoint:
                    checkpoint, restores = saved, 0
                if runlog.writer is not None:  # the main rank
                    if image_fn is not None:
                        log_images(runlog.writer, image_fn, model, step, device)
                    runlog.writer.flush()
    finally:
        del batches  # shuts down worker processes
        runlog.close()
    return TrainResult(
        step, history, time.perf_counter() - t_start, skipped, final_logs, checkpoint
    )
