"""Distributed training on the CPU: 2 processes (gloo, DDP) against 1, in samples/s.

Trains a small image VQ-VAE (EMA codebook with k-means init and dead-code restarts, 32x32
synthetic shapes) with the real training loop, ``vqkit.train.fit``, for the same global batches:
once in 1 process, once in 2 processes each taking half of every batch (what
``torchrun --nproc_per_node=2 -m vqkit run image`` does). Every process uses ``--threads``
threads, so the 2-process run uses twice the cores; a 1-process run with twice the threads is
printed too, to compare at equal cores. The rate is measured on rank 0 between the step after
the warm-up and the last step (start-up, DDP set-up and the final checkpoint excluded).

Run: ``uv run python benchmarks/ddp_cpu.py [--steps N] [--batch N] [--threads N]``
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

WARMUP = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(args.threads)
    from vqkit.datasets import build_image_dataset
    from vqkit.distributed import cleanup, init_distributed
    from vqkit.models import vqvae_image
    from vqkit.train import TrainConfig, fit

    init_distributed()
    try:
        data = build_image_dataset("builtin", split="train", size=args.batch * 8, image_size=32)
        torch.manual_seed(0)
        model = vqvae_image(
            hidden=args.hidden,
            res_hidden=args.hidden // 2,
            num_res_blocks=1,
            num_codes=128,
            code_dim=16,
            quantizer=dict(ema=True, kmeans_init=True, restart_after=50),
        )
        stamps: list[float] = []

        def step(model, batch):
            stamps.append(time.perf_counter())
            x, _ = batch
            out = model(x - 0.5)
            return out.loss, {"usage": out.quant.usage}

        cfg = TrainConfig(
            steps=args.steps,
            batch_size=args.batch,
            device="cpu",
            amp=False,
            ckpt_every=10**9,
            log_every=10,
        )
        with tempfile.TemporaryDirectory() as tmp:
            fit(model, step, data, cfg=cfg, run_dir=Path(tmp), name="vqvae", progress=False)
        if rank == 0:
            steps_timed = len(stamps) - 1 - WARMUP
            rate = steps_timed * args.batch / (stamps[-1] - stamps[WARMUP])
            Path(out).write_text(str(rate))
    finally:
        cleanup()


def samples_per_s(world: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rate"
        mp.spawn(_worker, args=(world, _free_port(), args, str(out)), nprocs=world, join=True)
        return float(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--hidden", type=int, default=64, help="VQ-VAE hidden channels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    print(
        f"image VQ-VAE hidden={args.hidden}, 32x32, global batch {args.batch}, "
        f"{args.steps} steps ({WARMUP} warm-up), {os.cpu_count()} CPU cores"
    )
    one = samples_per_s(1, args)
    two = samples_per_s(2, args)
    print(f"1 process  x {args.threads} thread(s): {one:8.1f} samples/s")
    print(f"2 processes x {args.threads} thread(s): {two:8.1f} samples/s  ({two / one:.2f}x)")
    wide = argparse.Namespace(**{**vars(args), "threads": 2 * args.threads})
    one_wide = samples_per_s(1, wide)
    print(
        f"1 process  x {wide.threads} thread(s): {one_wide:8.1f} samples/s  "
        f"(2 processes / this, equal cores: {two / one_wide:.2f}x)"
    )


if __name__ == "__main__":
    main()
