"""Peak CPU memory of one video VQ-VAE training step (forward, backward, Adam update).

Run it in a fresh process, so the peak is this step's and nothing else's::

    uv run python recipes/video/measure_memory.py --preset builtin --batch 8 --frames 16 --size 64

It builds the VQ-VAE of the preset, feeds it a random ``(batch, 3, frames, size, size)`` batch,
and prints the process's peak resident memory (``getrusage`` maxrss) after importing and building,
and after the training steps, with the step time.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vqkit.config import builder_kwargs, load_config
from vqkit.models import to_model, vqvae_video
from vqkit.runs import load_recipe, preset_path


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="builtin")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    recipe = load_recipe("video")
    cfg = load_config(recipe.CONFIG, preset_path("video", args.preset), args.set)
    model = vqvae_video(**builder_kwargs(cfg.vqvae)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = to_model(torch.rand(args.batch, 3, args.frames, args.size, args.size))
    before = maxrss_mib()
    start = time.perf_counter()
    for _ in range(args.steps):
        out = model(x)
        opt.zero_grad(set_to_none=True)
        (out.recon_loss + out.quant.loss).backward()
        opt.step()
    seconds = (time.perf_counter() - start) / args.steps
    params = sum(p.numel() for p in model.parameters())
    print(
        f"preset={args.preset} batch={tuple(x.shape)} codes={tuple(out.quant.codes.shape)} "
        f"params={params / 1e6:.2f}M threads={torch.get_num_threads()}\n"
        f"peak RSS after build: {before:.0f} MiB; after {args.steps} training steps: "
        f"{maxrss_mib():.0f} MiB; {seconds:.2f} s/step"
    )


if __name__ == "__main__":
    main()
