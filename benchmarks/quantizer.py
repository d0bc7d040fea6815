"""The VQ layer: forward + backward and encode-only, time and peak memory, against baselines.

Candidates, all on the same input ``z`` (B, D, H, W) = (32, 64, 32, 32) and K = 512 by default:

* ``distance product``: the bare ``(B*H*W, D) @ (D, K)`` matmul every VQ layer must do, the floor.
* ``vqkit``: :class:`vqkit.quantize.VectorQuantizer` (codebook loss, no EMA), training mode.
* ``seed``: the usual formulation (distance expansion, argmin, one-hot scatter, one-hot @
  codebook, two MSE terms, straight-through); ``benchmarks/common.py``.
* ``vector-quantize-pytorch``: its ``VectorQuantize`` (a dev dependency; skipped if absent).

Forward + backward is ``(out.quantized * g).sum() + out.loss`` then ``backward()``: the
reconstruction gradient through the straight-through path plus both loss terms. Peak memory is the
resident high-water mark above the level before one forward + backward, each candidate in a fresh
process. Timings are medians of interleaved repeats.

Run: ``uv run python benchmarks/quantizer.py [--threads N] [--repeats N] [--batch B] [--size S]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SeedVectorQuantizer,
    in_subprocess,
    interleaved_medians,
    machine_line,
    peak_extra_mib,
)

from vqkit.quantize import VectorQuantizer  # noqa: E402

K, D = 512, 64


def make_layer(name: str) -> torch.nn.Module | None:
    torch.manual_seed(0)
    if name == "vqkit":
        return VectorQuantizer(K, D)
    if name == "seed":
        return SeedVectorQuantizer(K, D)
    if name == "vector-quantize-pytorch":
        try:
            from vector_quantize_pytorch import VectorQuantize
        except ImportError:
            return None
        return VectorQuantize(dim=D, codebook_size=K, decay=0.99, commitment_weight=0.25)
    raise ValueError(name)


def make_input(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(batch, D, size, size, generator=gen).requires_grad_(True)
    g = torch.randn(batch, D, size, size, generator=gen)
    return z, g


def fwd_bwd(name: str, layer: torch.nn.Module, z: torch.Tensor, g: torch.Tensor):
    """One training step of the layer alone: returns a closure."""
    if name == "vector-quantize-pytorch":
        # It takes (B, N, D) (or channel-first with accept_image_fmap); we give it the same rows.
        rows = z.detach().flatten(2).transpose(1, 2).contiguous().requires_grad_(True)
        grad = g.flatten(2).transpose(1, 2).contiguous()

        def step() -> None:
            quantized, _, loss = layer(rows)
            ((quantized * grad).sum() + loss.sum()).backward()
            rows.grad = None

        return step

    def step() -> None:
        out = layer(z)
        ((out.quantized * g).sum() + out.loss).backward()
        z.grad = None
        layer.zero_grad(set_to_none=True)

    return step


BASELINES = ("seed", "vector-quantize-pytorch")


def candidates(batch: int, size: int, baselines=BASELINES) -> tuple[dict, dict, list[str]]:
    z, g = make_input(batch, size)
    rows = z.detach().movedim(1, -1).reshape(-1, D).contiguous()
    table = torch.randn(K, D)
    train, encode, missing = {}, {}, []
    train["distance product"] = encode["distance product"] = lambda: rows @ table.t()
    for name in ("vqkit", *baselines):
        layer = make_layer(name)
        if layer is None:
            missing.append(name)
            continue
        layer.train()
        train[name] = fwd_bwd(name, layer, z, g)
    vq = make_layer("vqkit").eval()
    encode["vqkit"] = lambda: vq.encode(z.detach())
    return train, encode, missing


def memory_child(name: str, batch: int, size: int) -> None:
    """Entry of the fresh process that measures one candidate's peak memory."""
    train, _, _ = candidates(batch, size, baselines=[name] if name in BASELINES else [])
    print(f"{peak_extra_mib(train[name]):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="H = W of the latent map")
    parser.add_argument(
        "--baselines",
        nargs="*",
        choices=BASELINES,
        default=list(BASELINES),
        help="baselines to compare with (vector-quantize-pytorch takes ~15 s to import)",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.batch, args.size)
        return

    n = args.batch * args.size * args.size
    print(
        f"VQ layer, z ({args.batch}, {D}, {args.size}, {args.size}), K={K}: {n} x {D} @ {D} x {K}"
    )
    print(machine_line())
    train, encode, missing = candidates(args.batch, args.size, args.baselines)
    for name in missing:
        print(f"(skipped {name}: not installed; `uv sync` installs the dev group)")
    with torch.inference_mode():
        enc = interleaved_medians(encode, repeats=args.repeats, warmup=2)
    fb = interleaved_medians(train, repeats=args.repeats, warmup=2)
    mem = {}
    for name in train:
        if name != "distance product":
            mem[name] = float(
                in_subprocess(
                    __file__,
                    "--memory-child",
                    name,
                    "--threads",
                    str(args.threads),
                    "--batch",
                    str(args.batch),
                    "--size",
                    str(args.size),
                )
            )

    floor = fb["distance product"]
    print()
    print(
        f"{'forward + backward':<26} {'ms':>8} {'x distance':>11} {'vqkit faster':>13} {'peak MiB':>9}"
    )
    for name, sec in fb.items():
        peak = f"{mem[name]:9.1f}" if name in mem else f"{'':>9}"
        print(f"{name:<26} {sec * 1e3:8.2f} {sec / floor:10.2f}x {sec / fb['vqkit']:12.2f}x {peak}")
    print()
    print(f"{'encode only':<26} {'ms':>8} {'x distance':>11}")
    for name, sec in enc.items():
        print(f"{name:<26} {sec * 1e3:8.2f} {sec / enc['distance product']:10.2f}x")
    print()
    print("targets: fwd+bwd <= 2.5x distance; >= 4x faster than seed; >= 6x faster than")
    print("vector-quantize-pytorch; peak <= 1/4 of seed's; encode <= 2x distance")
    checks = [
        ("fwd+bwd / distance", fb["vqkit"] / floor, "<=", 2.5),
        ("encode / distance", enc["vqkit"] / enc["distance product"], "<=", 2.0),
    ]
    if "seed" in fb:
        checks.insert(1, ("seed / vqkit", fb["seed"] / fb["vqkit"], ">=", 4.0))
        checks.insert(2, ("vqkit peak / seed peak", mem["vqkit"] / mem["seed"], "<=", 0.25))
    if "vector-quantize-pytorch" in fb:
        checks.insert(2, ("vqp / vqkit", fb["vector-quantize-pytorch"] / fb["vqkit"], ">=", 6.0))
    for label, value, op, target in checks:
        ok = value <= target if op == "<=" else value >= target
        print(f"  {label:<24} {value:6.2f} {op} {target:<5} {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
