"""Shared parts of the benchmark scripts: interleaved timing, peak memory, the seed quantizer.

Every script compares against baselines measured in the same run: the candidates are timed in
turn (A, B, C, A, B, C, ...) so that a change in machine load hits all of them alike, and the
median of the repeats is reported.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.quantize import QuantizerOutput
from vqkit.quantize.base import code_stats


def machine_line() -> str:
    """One line naming what the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"torch {torch.__version__}, {cpu}, {os.cpu_count()} CPUs visible, "
        f"{torch.get_num_threads()} torch thread(s)"
    )


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` (for runs too long to interleave)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1, cpu: bool = False
) -> dict[str, float] | tuple[dict[str, float], dict[str, float]]:
    """Median seconds per call of each function, timed in interleaved rounds; ``cpu=True`` also
    returns the medians of the process's CPU seconds per call (less moved by other jobs on a
    shared machine than the wall time)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu_times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - start_cpu)
    wall = {name: statistics.median(ts) for name, ts in times.items()}
    if not cpu:
        return wall
    return wall, {name: statistics.median(ts) for name, ts in cpu_times.items()}


# ---------------------------------------------------------------- peak memory


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory above the current level while ``fn`` runs once, in MiB (Linux).

    Resets the process's high-water mark (``/proc/self/clear_refs``), runs ``fn`` and reads
    ``VmHWM - VmRSS(before)``. Call it in a fresh process started by :func:`in_subprocess`, so
    allocator caches from earlier work do not hide allocations.
    """
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def in_subprocess(script: str, *args: str) -> str:
    """Run ``script`` with ``args`` in a fresh interpreter; returns its last stdout line.

    Large blocks are mmap'd (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the resident
    set at once and the peak measured there is the true one.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, script, *args], env=env, check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------- the seed formulation


class SeedVectorQuantizer(nn.Module):
    """The VQ layer as most VQ-VAE code writes it, the baseline vqkit is measured against.

    Squared-distance expansion, argmin, one-hot scatter, one-hot @ codebook, the two MSE terms
    and the straight-through ``z + (q - z).detach()``. Same interface as
    :class:`vqkit.quantize.VectorQuantizer` (plain codebook loss, no options), so a VQ-VAE can be
    built with either.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.num_codes, self.beta = num_codes, beta
        self.codebook = nn.Parameter(
            torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        )

    def forward(self, z: Tensor) -> QuantizerOutput:
        flat = z.movedim(1, -1)
        shape = flat.shape
        flat = flat.reshape(-1, shape[-1])
        distances = (
            flat.pow(2).sum(1, keepdim=True)
            + self.codebook.pow(2).sum(1)
            - 2 * flat @ self.codebook.t()
        )
        ids = distances.argmin(1)
        one_hot = torch.zeros(flat.shape[0], self.num_codes, device=z.device)
        one_hot.scatter_(1, ids.unsqueeze(1), 1.0)
        quantized = one_hot @ self.codebook
        codebook_loss = F.mse_loss(quantized, flat.detach())
        commitment_loss = F.mse_loss(flat, quantized.detach())
        straight = flat + (quantized - flat).detach()
        stats = code_stats(ids, self.num_codes)
        return QuantizerOutput(
            quantized=straight.reshape(shape).movedim(-1, 1),
            codes=ids.reshape(shape[:-1]),
            loss=codebook_loss + self.beta * commitment_loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            **stats._asdict(),
        )
