"""Device choice, mixed precision and seeding, kept in one place for every training run."""

from __future__ import annotations

import contextlib
import random
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vqkit.errors import InputError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a :class:`torch.device`.

    ``"auto"`` picks CUDA when it is available, else the CPU.

    Raises:
        ValueError: an unknown name, CUDA asked for but not available, or a CUDA index past the
            number of devices.
    """
    spec = str(device).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise InputError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise InputError(
            f"device {device!r} was requested but CUDA is not available here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
            "use --device cpu or --device auto"
        )
    if match.group(1) is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise InputError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    return torch.device(spec)


def autocast_context(
    device: torch.device | str, enabled: bool = True
) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op elsewhere.

    bf16 keeps fp32's exponent range, so no gradient scaler is needed. On the CPU autocast is
    slower than fp32 for the small convolutions here, so it is never used there.
    """
    device = torch.device(device)
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    if not torch.cuda.is_bf16_supported():
        warnings.warn(
            f"{torch.cuda.get_device_name(device)} has no bf16 support; training in fp32",
            stacklevel=2,
        )
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors inside tuples, lists and dicts moved to ``device``; anything else untouched."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) random generators."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- RNG state as plain tensors, so weights_only loading accepts it --------------------------


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain values."""
    version, py_state, gauss = random.getstate()
    np_key, np_state, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {
            "version": version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "key": np_key,
            "state": torch.from_numpy(np_state.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        count = min(len(state["cuda"]), torch.cuda.device_count())
        torch.cuda.set_rng_state_all(state["cuda"][:count])
