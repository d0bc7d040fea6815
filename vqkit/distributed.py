"""Multi-process training: the process group that ``torchrun`` describes, and rank helpers.

``torchrun --nproc_per_node=N -m vqkit run ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`init_distributed` joins them into one process group (NCCL on CUDA, gloo on the CPU) and
pins each process to GPU ``LOCAL_RANK``. Everything here is a no-op in a single process, so code
written against it runs unchanged without ``torchrun``.

Who does what in a distributed run:
    - every rank trains (``fit`` wraps the model in DistributedDataParallel and gives each rank a
      disjoint slice of every global batch);
    - the quantizer keeps its codebook equal on all ranks itself (all-reduced EMA statistics,
      k-means and restarts on gathered rows; with the collectives below; see ``vqkit.quantize.codebook``);
    - rank 0 alone writes files: checkpoints, TensorBoard, ``history.jsonl``, config, metrics,
      the report; it alone shows progress bars.

This module sits at the bottom of vqkit's layers (it imports no other vqkit module), so the
quantizer and the training loop both take their collectives from here.
"""

from __future__ import annotations

import datetime
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

__all__ = [
    "agree",
    "all_reduce_sum_",
    "barrier",
    "broadcast_",
    "broadcast_object",
    "cleanup",
    "gather_rows",
    "init_distributed",
    "is_distributed",
    "is_main",
    "launched_by_torchrun",
    "mean_over_ranks",
    "on_main",
    "rank",
    "rank_device",
    "world",
    "wrap_ddp",
]


# --- collectives on tensors (the quantizer's): no-ops in a single process ----------------------


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks in place (no-op without an initialised process group)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``tensor`` with rank ``src``'s copy (no-op in a single process)."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def gather_rows(rows: Tensor) -> Tensor:
    """Concatenate every rank's ``(N, C)`` rows in rank order (ranks may hold different N)."""
    if not is_distributed():
        return rows
    n = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    biggest = int(max(s.item() for s in sizes))
    padded = rows.new_zeros(biggest, rows.shape[1])
    padded[: rows.shape[0]] = rows
    parts = [torch.zeros_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


# --- the process group ------------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one process (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(
    backend: str | None = None, *, timeout: datetime.timedelta | None = None
) -> bool:
    """Join the process group described by torchrun's environment variables.

    Does nothing (and returns False) when ``WORLD_SIZE`` is unset or 1, or when a group is
    already initialised (returns True then).

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else gloo.
        timeout: how long a collective may wait for the slowest rank (torch's default if None).

    Returns:
        Whether a process group with more than one rank is now active.

    Raises:
        ValueError: an environment variable is missing or malformed (names it and the fix).
    """
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    needed = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    missing = [k for k in needed if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set; launch with "
            f"torchrun (e.g. torchrun --nproc_per_node=2 -m vqkit run image), which sets them"
        )
    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend == "nccl":
        if not use_cuda:
            raise ValueError("backend 'nccl' needs CUDA; use backend='gloo' on the CPU")
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s); "
                f"lower --nproc_per_node"
            )
        torch.cuda.set_device(local)  # before any collective: NCCL binds to the current device
    kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://"}
    if timeout is not None:
        kwargs["timeout"] = timeout
    dist.init_process_group(**kwargs)
    return is_distributed()


def cleanup() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's global rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world() -> int:
    """The number of processes (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the rank that writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def rank_device(device: torch.device) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for any CUDA device when distributed.

    One GPU per process is the only layout DDP supports well, so a configured ``cuda:0`` is
    read as "a GPU" and every rank takes its own.
    """
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a picklable value made by this program itself)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def agree(flag: bool) -> bool:
    """True only if ``flag`` is True on every rank, so all ranks take the same branch."""
    if not is_distributed():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else None
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each key's mean over the ranks that have it (keys in rank 0's order, then the rest).

    Used for logged scalars: with equal per-rank batches, the mean of per-rank means is the
    mean over the global batch, so a 2-rank run logs what a 1-rank run logs.
    """
    if not is_distributed():
        return dict(values)
    parts: list[dict[str, float]] = [{} for _ in range(world())]
    dist.all_gather_object(parts, dict(values))
    keys = list(dict.fromkeys(k for p in parts for k in p))
    return {k: sum(p[k] for p in parts if k in p) / sum(k in p for p in parts) for k in keys}


def _nccl() -> bool:
    return dist.get_backend() == "nccl"


def on_main(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on the main rank only; every rank returns its result.

    If it raises on the main rank, every rank raises that error, so no rank is left waiting in
    a collective for one that stopped. Use it for file writes such as checkpoints.
    """
    if not is_distributed():
        return fn(*args, **kwargs)
    result, error = None, None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            error = e
    shared_result, shared_error = broadcast_object((result, error))
    if error is not None:
        raise error
    if shared_error is not None:
        raise shared_error
    return shared_result


class _StepModule(nn.Module):
    """Runs ``step_fn(model, batch)`` as its forward, so DDP sees every parameter the step uses.

    DDP synchronises gradients only for computations that pass through its ``forward``; a step
    that calls ``prior.loss(...)`` or ``model.decode(...)`` would bypass it. Wrapping the whole
    step keeps ``step_fn`` unchanged and lets it receive the plain model.
    """

    def __init__(self, model: nn.Module, step_fn: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.model = model
        self.step_fn = step_fn

    def forward(self, batch: Any) -> Any:
        return self.step_fn(self.model, batch)


def wrap_ddp(
    model: nn.Module, step_fn: Callable[[nn.Module, Any], Any], device: torch.device
) -> tuple[nn.Module, Callable[[nn.Module, Any], Any]]:
    """``(model, step_fn)`` as they are in one process; a DDP-wrapped pair when distributed.

    The returned step function is called like the original, ``step(wrapped, batch)``.

    Buffers are broadcast from rank 0 once here and never again: DDP's per-forward buffer
    broadcast is turned off because the quantizer keeps its buffers (EMA codebook, counts,
    k-means flag, dead-code counters) equal itself, from statistics all-reduced inside the
    forward. A per-step broadcast would only cost traffic and would mask a desynchronised
    codebook instead of keeping it correct. (Running statistics of BatchNorm would stay
    per-rank; vqkit's networks have none, and rank 0's are the ones saved.)
    """
    if not is_distributed():
        return model, step_fn
    for buf in model.buffers():  # equal starting state even if ranks built the model apart
        dist.broadcast(buf.data.view(torch.uint8) if buf.dtype == torch.bool else buf.data, 0)
    # torch >= 2.13 renamed broadcast_buffers (which also skipped the init sync we just did).
    params = inspect.signature(DDP).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    ddp = DDP(
        _StepModule(model, step_fn),
        device_ids=[device.index] if device.type == "cuda" else None,
        **{no_sync: False},
    )
    return ddp, _call


def _call(module: nn.Module, batch: Any) -> Any:
    return module(batch)
