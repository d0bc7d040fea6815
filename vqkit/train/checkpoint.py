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
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from vqkit.train.device import get_rng_state

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
TRAINER = "trainer.pt"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)(?:-(\d+))?$")
_TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, read, or does not fit the model."""


# --- atomic files ----------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX only; Windows cannot open directories)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path | str, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(f)`` so that ``path`` is either the old or the new file.

    Raises:
        CheckpointError: the write or the rename failed; ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write {path}: {e}; the previous file, if any, is unchanged"
        ) from e
    except BaseException:  # KeyboardInterrupt: clean up, then let it through unchanged
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


# --- one checkpoint directory ----------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose state_dict keys we store: no DDP ``module.`` or compile prefixes."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _weights_payload(model: nn.Module) -> bytes:
    """safetensors bytes; tied tensors are stored once and recorded as aliases."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(
                f"state_dict entry {name!r} is a {type(t).__name__}, not a tensor; "
                f"safetensors stores tensors only"
            )
        ident = (
            t.device,
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            t.shape,
            t.stride(),
            t.dtype,
        )
        if ident in seen:  # the same tensor under two names (tied weights)
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        c = t.detach().to("cpu").contiguous()
        if c.untyped_storage().nbytes() != c.numel() * c.element_size():
            c = c.clone()  # a view into a shared storage: safetensors wants sole owners
        tensors[name] = c
    return safetensors_bytes(tensors, metadata={"format": "pt", "aliases": json.dumps(aliases)})


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
    model = _unwrap(model)
    weights = _weights_payload(model)
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


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint directory from itself, a ``ckpt/`` folder, or a run directory.

    Accepts a directory holding ``model.safetensors``, one holding a ``latest`` pointer, or one
    whose ``ckpt/`` holds it, so a run directory alone is enough to load a model.
    """
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return path
    for root in (path, path / "ckpt"):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise CheckpointError(
        f"no checkpoint at {path}: expected {WEIGHTS} there, or a '{LATEST}' pointer in "
        f"{path} or {path / 'ckpt'}"
    )


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:
        raise CheckpointError(f"could not read weights from {file}: {e}") from e
    for name, target in json.loads(metadata.get("aliases", "{}")).items():
        state[name] = state[target]
    return state


def load_weights(path: Path | str, model: nn.Module, strict: bool = True) -> nn.Module:
    """Load ``model.safetensors`` from a checkpoint (or run) directory into ``model``.

    Raises:
        CheckpointError: names a few missing, unexpected and shape-mismatched keys when the
            checkpoint was written by a model of another configuration (shape mismatches are
            errors even with ``strict=False``).
    """
    file = resolve_checkpoint(path) / WEIGHTS
    state = _read_weights(file)
    target = _unwrap(model).state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in state and state[k].shape != target[k].shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        for label, items in (
            ("missing from the checkpoint", missing),
            ("unexpected in the checkpoint", unexpected),
            ("with mismatched shapes", mismatched),
        ):
            if items:
                more = f", ... ({len(items)} in all)" if len(items) > 3 else ""
                parts.append(f"keys {label}: {', '.join(items[:3])}{more}")
        raise CheckpointError(
            f"the checkpoint {file} does not match the config of this "
            f"{type(_unwrap(model)).__name__}: {'; '.join(parts)}. Build the model from the "
            f"checkpoint's {CONFIG} (load_model) or fix the config."
        )
    _unwrap(model).load_state_dict(state, strict=strict)
    return model


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
        raise CheckpointError(f"could not read {file}: {e}") from e


def load_model(path: Path | str, *, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model from ``model.json`` with ``vqkit.models.build_model``, then its weights.

    Args:
        path: a checkpoint directory, a ``ckpt/`` folder or a run directory.
        device: where to put the model.
    """
    directory = resolve_checkpoint(path)
    file = directory / CONFIG
    if not file.is_file():
        raise CheckpointError(
            f"{directory} has no {CONFIG} (the model that wrote it had no `config` dict); "
            f"build the model yourself and call load_weights({str(directory)!r}, model)"
        )
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e
    from vqkit.models import build_model  # lazy: models import this package's neighbours

    model = build_model(config)
    load_weights(directory, model)
    return model.to(device)


# --- a run's series of checkpoints -----------------------------------------------------------


def latest_checkpoint(root: Path | str) -> Path | None:
    """The step directory that ``root/latest`` names, or None when there is no pointer."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not _STEP_DIR.match(name):
        raise CheckpointError(f"{pointer} holds {name!r}, not a step directory name")
    if not (root / name / WEIGHTS).is_file():
        raise CheckpointError(
            f"{pointer} names {name!r} but {root / name} holds no {WEIGHTS}; it was deleted "
            f"or moved by hand"
        )
    return root / name


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


def _step_key(name: str) -> tuple[int, int]:
    m = _STEP_DIR.match(name)
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
        _fsync_dir(tmp)
        os.replace(tmp, root / name)
        _fsync_dir(root)
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
    steps = [p.name for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
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
    atomic_write_bytes(directory / WEIGHTS, _weights_payload(_unwrap(model)))
    return directory
