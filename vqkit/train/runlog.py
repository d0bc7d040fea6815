"""Training logs: scalars averaged between log steps into history.jsonl, TensorBoard and the
progress bar; images logged without disturbing the training RNG streams."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vqkit.distributed import mean_over_ranks
from vqkit.io import atomic_write_bytes

SHOWN = ("loss", "usage", "perplexity")  # logs shown on the progress bar (by key suffix)
ImageFn = Callable[[nn.Module, int], Mapping[str, Tensor]]


class RunLog:
    """Scalars averaged between log steps, written to history.jsonl, TensorBoard and the bar.

    Tensors are summed on their device and read once per log step, so logging costs no
    device synchronisation on the other steps. In a distributed run every rank averages its
    scalars with the other ranks' (the same entries in ``history`` everywhere), and only the
    main rank (``main=True``) writes files, TensorBoard and the bar.
    """

    def __init__(
        self, out: Path, history: list, *, step: int, steps: int, progress: bool, main: bool = True
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import; only when training

        self.history = history
        self.writer = SummaryWriter(str(out / "tb")) if main else None
        self.file = (out / "history.jsonl").open("a") if main else None
        self.bar = tqdm(total=steps, initial=step, disable=not (progress and main), desc=out.name)
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
        means = mean_over_ranks({k: float(s) / self.counts[k] for k, s in self.sums.items()})
        self.sums, self.counts = {}, {}
        entry = {"step": step, **means, **more}
        self.history.append(entry)
        scalars = {k: v for k, v in entry.items() if k != "step"}
        if self.writer is None or self.file is None:  # not the main rank
            return scalars
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()  # the curve survives a kill
        for k, v in scalars.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        t0, s0 = self.since
        self.since = (now := time.perf_counter(), step)
        self.writer.add_scalar("speed/steps_per_s", (step - s0) / max(now - t0, 1e-9), step)
        shown = {k: f"{v:.4g}" for k, v in scalars.items() if k.endswith(SHOWN)}
        self.bar.set_postfix(shown, refresh=False)
        return scalars

    def rewind(self, step: int, file: Path) -> None:
        """Forget what was logged after ``step`` (in memory and in ``file``, history.jsonl)."""
        if self.file is None:  # not the main rank: the history mirrors the main rank's file
            self.history[:] = [e for e in self.history if e["step"] <= step]
        else:
            self.file.close()
            self.history[:] = read_history(file, upto=step)
            self.file = file.open("a")
        self.sums, self.counts = {}, {}
        self.since = (time.perf_counter(), step)
        self.bar.n = step

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None and self.file is not None:
            self.writer.close()
            self.file.close()


def log_images(writer: Any, image_fn: ImageFn, model: nn.Module, step: int, device) -> None:
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


def read_history(file: Path, upto: int) -> list[dict[str, float]]:
    """Entries up to step ``upto``; rewrites the file without later ones (logged after the
    checkpoint by a run that was then killed) so the resumed run does not log them twice."""
    if not file.is_file():
        return []
    lines = [line for line in file.read_text().splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a crash in the middle of writing it
            continue
        if entry["step"] <= upto:
            kept.append(entry)
    if len(kept) != len(lines):
        atomic_write_bytes(file, "".join(json.dumps(e) + "\n" for e in kept).encode())
    return kept
