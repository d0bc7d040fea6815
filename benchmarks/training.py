"""Image VQ-VAE training throughput: vqkit's quantizer against the seed formulation, same model.

Two sizes: DeepMind Sonnet's CIFAR-10 example (32x32 images, 128 hidden, 2 residual blocks of 32,
K=512, D=64, batch 32) and the paper's image model (128x128 images, 256 hidden, two stride-2
convs to a 32x32 latent, K=512, D=64, batch 16 by default to keep the run short on a CPU). Each
size is built twice from the same seed, once with :class:`vqkit.quantize.VectorQuantizer` (plain
codebook loss, as in the paper) and once with the seed quantizer of ``benchmarks/common.py``;
everything else is identical. A step is forward, backward and an Adam update; the figure is
images per second from the median of interleaved steps.

Run: ``uv run python benchmarks/training.py [--threads N] [--repeats N] [--paper-batch N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SeedVectorQuantizer, interleaved_medians, machine_line  # noqa: E402

from vqkit.models import vqvae_image  # noqa: E402


def build(size: dict, seed_quantizer: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = vqvae_image(
        hidden=size["hidden"], res_hidden=size["res_hidden"], num_codes=512, code_dim=64
    )
    if seed_quantizer:
        model.quantizer = SeedVectorQuantizer(512, 64)
    return model.train()


def step_fn(model: torch.nn.Module, x: torch.Tensor):
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step() -> None:
        out = model(x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--paper-batch", type=int, default=16)
    parser.add_argument("--only", choices=["sonnet", "paper"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = {
        "Sonnet CIFAR-10 (32x32, 128 hidden)": dict(hidden=128, res_hidden=32, image=32, batch=32),
        "paper (128x128, 256 hidden)": dict(
            hidden=256, res_hidden=256, image=128, batch=args.paper_batch
        ),
    }
    print("Image VQ-VAE training step (forward, backward, Adam), K=512, D=64")
    print(machine_line())
    print(f"{'size':<38} {'batch':>5} {'seed img/s':>11} {'vqkit img/s':>12} {'ratio':>6}")
    for label, size in sizes.items():
        if args.only and not label.lower().startswith(args.only):
            continue
        x = torch.rand(size["batch"], 3, size["image"], size["image"]) - 0.5
        steps = {
            "seed": step_fn(build(size, True), x),
            "vqkit": step_fn(build(size, False), x),
        }
        med = interleaved_medians(steps, repeats=args.repeats, warmup=2)
        seed, ours = size["batch"] / med["seed"], size["batch"] / med["vqkit"]
        print(f"{label:<38} {size['batch']:>5} {seed:11.1f} {ours:12.1f} {ours / seed:5.2f}x")
    print("target: ratio >= 1.0")


if __name__ == "__main__":
    main()
