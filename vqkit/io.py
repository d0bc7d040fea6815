"""Files that survive a crash mid-write, and a module's weights as safetensors.

The bottom layer of vqkit: it imports no other vqkit module, so every layer above may use it.

* :func:`atomic_write` and its helpers write a file to a temporary name in the same directory,
  fsync it, then move it into place with ``os.replace``, so a reader sees the old file or the new
  one, never half of one.
* A checkpoint directory holds ``model.safetensors`` (:data:`WEIGHTS`: tensors only, no pickle)
  and ``model.json`` (:data:`CONFIG`: the model's ``config`` dict). :func:`load_weights` loads
  the weights into a model you built; rebuilding a model by name is
  :func:`vqkit.bundle.load_model`, and trainer state lives in :mod:`vqkit.train.checkpoint`.

torch and safetensors are imported inside the functions that need them, so :mod:`vqkit.config`
can write files without pulling in torch.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
TRAINER = "trainer.pt"
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d+)(?:-(\d+))?$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, read, or does not fit the model."""


# --- atomic files ----------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
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
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (a kill never leaves half a file)."""
    atomic_write_bytes(Path(path), (json.dumps(data, indent=2) + "\n").encode())


# --- weights ---------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose state_dict keys we store: no DDP ``module.`` or compile prefixes."""
    from torch import nn  # noqa: PLC0415  (heavy; see the module docstring)

    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def weights_payload(model: nn.Module) -> bytes:
    """safetensors bytes; tied tensors are stored once and recorded as aliases."""
    import torch  # noqa: PLC0415
    from safetensors.torch import save as safetensors_bytes  # noqa: PLC0415

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


def latest_checkpoint(root: Path | str) -> Path | None:
    """The step directory that ``root/latest`` names, or None when there is no pointer."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not STEP_DIR.match(name):
        raise CheckpointError(f"{pointer} holds {name!r}, not a step directory name")
    if not (root / name / WEIGHTS).is_file():
        raise CheckpointError(
            f"{pointer} names {name!r} but {root / name} holds no {WEIGHTS}; it was deleted "
            f"or moved by hand"
        )
    return root / name


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


def read_error_reason(file: Path, error: BaseException) -> str:
    """What was wrong with a file that failed to load, never empty: "empty file (0 bytes)",
    "truncated or corrupt (N bytes): <the exception>"."""
    try:
        size = file.stat().st_size
    except OSError:
        size = None
    text = " ".join(str(error).split()) or type(error).__name__
    if size == 0:
        return "empty file (0 bytes)"
    if size is None:
        return text
    return f"truncated or corrupt ({size} bytes): {type(error).__name__}: {text}"


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open  # noqa: PLC0415

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:
        raise CheckpointError(
            f"could not read weights from {file}: {read_error_reason(file, e)}"
        ) from e
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
    target = unwrap(model).state_dict()
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
            f"{type(unwrap(model)).__name__}: {'; '.join(parts)}. Build the model from the "
            f"checkpoint's {CONFIG} (load_model) or fix the config."
        )
    unwrap(model).load_state_dict(state, strict=strict)
    return model
