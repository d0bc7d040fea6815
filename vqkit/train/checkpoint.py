"""Checkpoints that survive a crash mid-write and never run code from the file.

A checkpoint is a directory::

    model.safetensors   weights (safetensors: tensors only, no pickle)
    model.json          the model's ``config`` dict ``{"builder": ..., "kwargs": ...}``
    trainer.pt          optimizer, scheduler, step, RNG states, ``extra`` (data position, ...);
                        read back with ``torch.load(weights_only=True)`` only

Every file is written to a temporary name in the same directory, fsynced, then moved into place
with ``os.replace``, so a reader sees the old file or the new one, never half of one. A training
run keeps its checkpoints as ``ckpt/step_00001000/`` directories plus a ``ckpt/latest`` text file
naming the newest complete one: a step directory is built under a temporary name and renamed
before the pointer moves, so a crash at any moment leaves ``latest`` on a complete checkpoint.

The atomic writes, the weights file and :func:`load_weights` come from :mod:`vqkit.io` (and are
re-exported here); rebuilding a model from ``model.json`` is :func:`vqkit.bundle.load_model`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqkit.io import (
    CONFIG,
    LATEST,
    STEP_DIR,
    TRAINER,
    WEIGHTS,
    CheckpointError,
    atomic_write,
    atomic_write_bytes,
    fsync_dir,
    latest_checkpoint,
    load_weights,
    read_error_reason,
    resolve_checkpoint,
    unwrap,
    weights_payload,
)
from vqkit.train.device import get_rng_state

__all__ = [
    "CONFIG",
    "LATEST",
    "TRAINER",
    "WEIGHTS",
    "CheckpointError",
    "atomic_write",
    "atomic_write_bytes",
    "clear_leftovers",
    "latest_checkpoint",
    "load_trainer_state",
    "load_weights",
    "resolve_checkpoint",
    "resume_candidates",
    "save_checkpoint",
    "save_latest",
]

_TMP_PREFIX = ".tmp-"


# --- one checkpoint directory ----------------------------------------------------------------


def _check_plain(obj: Any, where: str) -> None:
    """Refuse at save time what ``torch.load(weights_only=True)`` would refuse at load time."""
    # Exact types: numpy scalars subclass float but weights_only loading rejects them.
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"{where} has a key {k!r}; use str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise CheckpointError(
        f"{where} is a {type(obj).__module__}.{type(obj).__name__}; trainer state may hold only "
        f"tensors, numbers, strings, None, lists, tuples and dicts (convert it, e.g. float(x))"
    )


def save_checkpoint(
    directory: Path | str,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    step: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write weights, model config and trainer state into ``directory``.

    Everything is serialized in memory first, so a bad value fails before any file is touched;
    each file is then replaced atomically. The current RNG states are saved with the trainer
    state. ``model.config`` (if the model has one) must be JSON-serializable.

    Returns:
        ``directory`` as a Path.
    """
    directory = Path(directory)
    model = unwrap(model)
    weights = weights_payload(model)
    config = getattr(model, "config", None)
    config_text = None
    if config is not None:
        try:
            config_text = json.dumps(config, indent=2, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"model.config is not JSON-serializable: {e}") from e
    state = {
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": get_rng_state(),
        "extra": dict(extra or {}),
    }
    _check_plain(state, "trainer state")
    buffer = io.BytesIO()
    torch.save(state, buffer)

    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / WEIGHTS, weights)
    if config_text is not None:
        atomic_write_bytes(directory / CONFIG, config_text.encode())
    atomic_write_bytes(directory / TRAINER, buffer.getvalue())
    return directory


def load_trainer_state(path: Path | str) -> dict[str, Any]:
    """Read ``trainer.pt`` with ``weights_only=True``: tensors and plain containers only.

    Raises:
        CheckpointError: the file is missing, corrupt, or holds other objects (it is never
            unpickled with arbitrary code execution).
    """
    file = resolve_checkpoint(path) / TRAINER
    if not file.is_file():
        raise CheckpointError(f"{file} does not exist; this checkpoint holds weights only")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {file}: it holds objects other than tensors and plain "
            f"containers, so it is corrupt or was not written by vqkit (nothing in it was "
            f"executed). Details: {e}"
        ) from e
    except Exception as e:
        raise CheckpointError(f"could not read {file}: {read_error_reason(file, e)}") from e


# --- a run's series of checkpoints -----------------------------------------------------------


def clear_leftovers(root: Path | str) -> None:
    """Remove what a killed save or prune left in ``root``: temporary step directories and
    pointer files (never a complete step directory)."""
    root = Path(root)
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(_TMP_PREFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(f".{LATEST}.") and p.name.endswith(".tmp"):  # atomic_write's
            p.unlink(missing_ok=True)


def resume_candidates(root: Path | str) -> tuple[list[Path], str | None]:
    """The checkpoints a resume may try, best first: the one ``root/latest`` names, then every
    other step directory, newest first; and why the pointer was of no use (or None).

    A resume takes the first that loads (see :func:`vqkit.train.fit`), so a truncated or
    deleted latest checkpoint falls back to the intact one before it.
    """
    root = Path(root)
    if not root.is_dir():
        return [], None
    steps = sorted(
        (p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)),
        key=lambda p: _step_key(p.name),
        reverse=True,
    )
    try:
        latest, problem = latest_checkpoint(root), None
    except CheckpointError as e:
        latest, problem = None, str(e)
    if latest is not None:
        steps = [latest, *(p for p in steps if p != latest)]
    return steps, problem


def _step_key(name: str) -> tuple[int, int]:
    m = STEP_DIR.match(name)
    assert m is not None
    return int(m.group(1)), int(m.group(2) or 0)


def save_latest(
    root: Path | str,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    step: int,
    extra: Mapping[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Save a new ``root/step_XXXXXXXX`` checkpoint, point ``root/latest`` at it, prune.

    The step directory is written under a temporary name and renamed when complete; only then
    does the pointer move, and only then are older step directories beyond ``keep`` removed.

    Returns:
        The new step directory.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clear_leftovers(root)
    name, n = f"step_{step:08d}", 0
    while (root / name).exists():  # re-saving a step after a resume: never touch the old dir
        n += 1
        name = f"step_{step:08d}-{n}"
    tmp = root / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    try:
        save_checkpoint(
            tmp, model, optimizer=optimizer, scheduler=scheduler, step=step, extra=extra
        )
        fsync_dir(tmp)
        os.replace(tmp, root / name)
        fsync_dir(root)
        atomic_write_bytes(root / LATEST, f"{name}\n".encode())
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"could not save checkpoint {root / name}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, name, keep)
    return root / name


def _prune(root: Path, current: str, keep: int) -> None:
    """Keep ``current`` and the ``keep - 1`` newest older step dirs; drop the rest.

    Step directories newer than ``current`` are orphans of an abandoned timeline (a save whose
    pointer never moved, or a run resumed from an earlier step) and go too.
    """
    cur = _step_key(current)
    steps = [p.name for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    older = sorted((n for n in steps if _step_key(n) < cur), key=_step_key)
    kept = {current, *older[max(0, len(older) - (keep - 1)) :]} if keep > 1 else {current}
    for n in steps:
        if n not in kept:
            # Rename first: a kill mid-delete then leaves a temporary name that the next save
            # clears, never a half-deleted step directory that looks like a checkpoint.
            doomed = root / f"{_TMP_PREFIX}old-{n}"
            os.replace(root / n, doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def rewrite_weights(root: Path | str, model: nn.Module) -> Path:
    """Replace the weights of ``root``'s latest checkpoint with ``model``'s, atomically.

    For a value fitted after training that the weights must carry (the Gaussian likelihood's
    sigma); the trainer state, which holds nothing of it, is left as it is.

    Returns:
        The checkpoint directory.
    """
    directory = latest_checkpoint(root)
    if directory is None:
        raise CheckpointError(f"no checkpoint in {root} to update")
    atomic_write_bytes(directory / WEIGHTS, weights_payload(unwrap(model)))
    return directory
