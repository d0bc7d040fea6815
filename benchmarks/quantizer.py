"""The VQ layer: forward + backward and encode-only, time and peak memory, against baselines.

Candidates, all on the same input ``z`` (B, D, H, W) = (32, 64, 32, 32) and K = 512 by default:

* ``distance product``: the bare ``(B*H*W, D) @ (D, K)`` matmul every VQ layer must do, the floor.
* ``vqkit``: :class:`vqkit.quantize.VectorQuantizer` (codebook loss, no EMA), training mode.
* ``seed``: the usual formulation (distance expansion, argmin, one-hot scatter, one-hot @
  codebook, two MSE terms, straight-through); ``benchmarks/common.py``.
* ``vector-quantize-pytorch``: its ``VectorQuantize`` (a dev dependency; skipped if absent).

Then the further quantizers, each on the same ``z`` against vector-quantize-pytorch's
implementation of the same method at the same size and against vqkit's ``VectorQuantizer`` at
the same K (``--methods``):

* ``fsq``: vqkit ``FSQ([8, 5, 5, 5], 64)`` (K = 1000) / vqp ``FSQ`` / ``VectorQuantizer(1000)``;
* ``lfq``: vqkit ``LFQ(1024, 64)`` (entropy 0.1, commitment 0.25) / vqp ``LFQ`` with the same
  weights / ``VectorQuantizer(1024)``;
* ``simvq``: vqkit ``SimVQ(512, 64, rotation=True)`` / vqp ``SimVQ`` (rotation trick on, its
  default) / ``VectorQuantizer(512)``;
* ``vq-rotation``: ``VectorQuantizer(512, 64, rotation=True)`` / vqp ``VectorQuantize`` (its
  default rotation trick; it updates the codebook by EMA, vqkit here by the codebook loss) /
  ``VectorQuantizer(512)``.

With ``--lookup-k K...`` (off by default) a last table times the nearest-code search alone at large
K on ``--lookup-rows`` rows (2,048: a ``cifar10`` batch's 32 x 8 x 8 positions), in 16 and 64
dims: ``argmin``, one ``addmm`` per chunk of rows then ``argmin(1)``, as ``nearest_code`` did
before block minima; ``nearest_code`` as it is (``argmin_rows``); and SimVQ's lookup at
``code_dim=16``, D = 64, through the 64-dim implicit codebook against its own (the frozen codes'
16 dims). Both pairs must give the same codes; the script checks it.

Forward + backward is ``(out.quantized * g).sum() + out.loss`` then ``backward()``: the
reconstruction gradient through the straight-through path plus both loss terms. Peak memory is the
resident high-water mark above the level before one forward + backward, each candidate in a fresh
process. Timings are medians of interleaved repeats.

Run: ``uv run python benchmarks/quantizer.py [--threads N] [--repeats N] [--batch B] [--size S]
[--baselines ...] [--methods ...] [--lookup-k K ...] [--lookup-rows N]``
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

from vqkit.quantize import FSQ, LFQ, SimVQ, VectorQuantizer  # noqa: E402
from vqkit.quantize.codebook import MAX_DISTANCE_ELEMENTS, nearest_code  # noqa: E402

K, D = 512, 64
FSQ_LEVELS = [8, 5, 5, 5]
# method -> K; candidates are "vqkit <method>", "vqp <method>" and "vqkit VQ K=<K>"
METHODS = {"fsq": 1000, "lfq": 1024, "simvq": 512, "vq-rotation": 512}
VQP = "vector-quantize-pytorch"


def make_vqp(method: str) -> torch.nn.Module:
    import vector_quantize_pytorch as vqp

    if method == "fsq":
        return vqp.FSQ(levels=FSQ_LEVELS, dim=D)
    if method == "lfq":
        return vqp.LFQ(
            dim=D,
            codebook_size=METHODS["lfq"],
            entropy_loss_weight=0.1,
            commitment_loss_weight=0.25,
            diversity_gamma=1.0,
        )
    if method == "simvq":
        return vqp.SimVQ(dim=D, codebook_size=METHODS["simvq"], channel_first=True)
    if method == "vq-rotation":
        return vqp.VectorQuantize(
            dim=D, codebook_size=METHODS[method], decay=0.99, commitment_weight=0.25
        )
    raise ValueError(method)


def make_layer(name: str) -> torch.nn.Module | None:
    torch.manual_seed(0)
    if name.startswith("vqkit VQ K="):
        return VectorQuantizer(int(name.split("=")[1]), D)
    if name == "vqkit fsq":
        return FSQ(FSQ_LEVELS, D)
    if name == "vqkit lfq":
        return LFQ(METHODS["lfq"], D, beta=0.25, entropy_weight=0.1)
    if name == "vqkit simvq":
        return SimVQ(METHODS["simvq"], D, rotation=True)
    if name == "vqkit vq-rotation":
        return VectorQuantizer(METHODS["vq-rotation"], D, rotation=True)
    if name.startswith("vqp "):
        try:
            return make_vqp(name[4:])
        except ImportError:
            return None
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
    if name in ("vector-quantize-pytorch", "vqp vq-rotation"):
        # It takes (B, N, D) (or channel-first with accept_image_fmap); we give it the same rows.
        rows = z.detach().flatten(2).transpose(1, 2).contiguous().requires_grad_(True)
        grad = g.flatten(2).transpose(1, 2).contiguous()

        def step() -> None:
            quantized, _, loss = layer(rows)
            ((quantized * grad).sum() + loss.sum()).backward()
            rows.grad = None

        return step
    if name.startswith("vqp "):  # FSQ, LFQ, SimVQ: channel-first z; (quantized, ids[, loss])

        def step() -> None:
            out = layer(z)
            loss = out[2].sum() if len(out) > 2 else 0.0
            ((out[0] * g).sum() + loss).backward()
            z.grad = None
            layer.zero_grad(set_to_none=True)

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


def method_candidates(method: str, batch: int, size: int, with_vqp: bool) -> dict:
    """fwd+bwd closures of vqkit's ``method``, vqp's (if ``with_vqp``) and VQ at equal K."""
    z, g = make_input(batch, size)
    names = [f"vqkit {method}", f"vqp {method}", f"vqkit VQ K={METHODS[method]}"]
    train = {}
    for name in names:
        if name.startswith("vqp ") and not with_vqp:
            continue
        layer = make_layer(name)
        if layer is not None:
            train[name] = fwd_bwd(name, layer.train(), z, g)
    return train


def memory_child(name: str, batch: int, size: int) -> None:
    """Entry of the fresh process that measures one candidate's peak memory."""
    if " " in name and not name.startswith("vector-quantize"):  # a method's candidate
        z, g = make_input(batch, size)
        step = fwd_bwd(name, make_layer(name).train(), z, g)
        print(f"{peak_extra_mib(step):.1f}")
        return
    train, _, _ = candidates(batch, size, baselines=[name] if name in BASELINES else [])
    print(f"{peak_extra_mib(train[name]):.1f}")


def peak_in_fresh_process(name: str, args) -> float:
    return float(
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


def compare_methods(args) -> None:
    """The further quantizers: a table per method, then the targets."""
    with_vqp = VQP in args.baselines
    print()
    print(
        f"{'further quantizers, fwd+bwd':<28} {'ms':>8} {'peak MiB':>9} {'vqp / this':>11} "
        f"{'this / VQ':>10}"
    )
    checks = []
    for method in args.methods:
        train = method_candidates(method, args.batch, args.size, with_vqp)
        fb = interleaved_medians(train, repeats=args.repeats, warmup=2)
        mem = {name: peak_in_fresh_process(name, args) for name in train}
        ours, theirs = fb[f"vqkit {method}"], fb.get(f"vqp {method}")
        vq_name = f"vqkit VQ K={METHODS[method]}"
        for name, sec in fb.items():
            vs_vqp = f"{theirs / sec:10.2f}x" if theirs is not None else f"{'':>11}"
            print(
                f"{name:<28} {sec * 1e3:8.2f} {mem[name]:9.1f} {vs_vqp} {sec / fb[vq_name]:9.2f}x"
            )
        if theirs is None:
            print(f"(skipped vqp {method}: vector-quantize-pytorch not among --baselines)")
        else:
            checks.append((f"{method}: vqp / vqkit", theirs / ours, ">=", 1.0))
        checks.append((f"{method}: vqkit / VQ K={METHODS[method]}", ours / fb[vq_name], "<=", 2.0))
    print()
    print("targets: each further quantizer >= 1.0x as fast as vector-quantize-pytorch's,")
    print("and within 2x of vqkit's VectorQuantizer at equal K")
    report(checks)


def plain_nearest(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``nearest_code``'s chunks with a plain ``argmin(1)``: the baseline of ``argmin_rows``."""
    sq_norms = codebook.pow(2).sum(1)
    chunk = max(1, codebook.shape[1], MAX_DISTANCE_ELEMENTS // codebook.shape[0])
    parts = [
        torch.addmm(sq_norms, rows[s : s + chunk], codebook.t(), alpha=-2.0).argmin(1)
        for s in range(0, rows.shape[0], chunk)
    ]
    return torch.cat(parts)


def compare_lookups(args) -> None:
    """Nearest-code search alone at large K: plain argmin against block minima, and SimVQ's."""
    print()
    print(f"nearest code of {args.lookup_rows} rows, encode only")
    print(f"{'K':>7} {'dims':>5} {'candidate':<34} {'ms':>9} {'faster':>8}")
    gen = torch.Generator().manual_seed(0)
    for k in args.lookup_k:
        for dims in (16, 64):
            rows = torch.randn(args.lookup_rows, dims, generator=gen)
            table = torch.randn(k, dims, generator=gen)
            fns = {
                "addmm + argmin (before)": lambda r=rows, t=table: plain_nearest(r, t),
                "nearest_code (block minima)": lambda r=rows, t=table: nearest_code(r, t),
            }
            if not torch.equal(plain_nearest(rows, table), nearest_code(rows, table)):
                raise SystemExit(f"nearest_code and argmin disagree at K={k}, {dims} dims")
            times = interleaved_medians(fns, repeats=args.repeats, warmup=1)
            base = times["addmm + argmin (before)"]
            for name, sec in times.items():
                print(f"{k:>7} {dims:>5} {name:<34} {sec * 1e3:9.2f} {base / sec:7.2f}x")
        simvq = SimVQ(k, D, code_dim=16).eval()
        z = torch.randn(args.lookup_rows, D, 1, 1, generator=gen)
        rows, table = z[:, :, 0, 0], simvq.codebook.detach()
        with torch.inference_mode():
            if not torch.equal(simvq.encode(z).reshape(-1), nearest_code(rows, table)):
                raise SystemExit(f"SimVQ's lookup in 16 dims disagrees with 64 dims at K={k}")
            fns = {
                "SimVQ in the 64-dim codebook": lambda r=rows, t=table: nearest_code(r, t),
                "SimVQ in its 16-dim frozen codes": lambda z=z, q=simvq: q.encode(z),
            }
            times = interleaved_medians(fns, repeats=args.repeats, warmup=1)
        base = times["SimVQ in the 64-dim codebook"]
        for name, sec in times.items():
            print(f"{k:>7} {D:>5} {name:<34} {sec * 1e3:9.2f} {base / sec:7.2f}x")


def report(checks) -> None:
    for label, value, op, target in checks:
        ok = value <= target if op == "<=" else value >= target
        print(f"  {label:<30} {value:6.2f} {op} {target:<5} {'met' if ok else 'NOT met'}")


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
    parser.add_argument(
        "--methods",
        nargs="*",
        choices=list(METHODS),
        default=list(METHODS),
        help="further quantizers to compare (none: only the VQ layer)",
    )
    parser.add_argument(
        "--lookup-k",
        nargs="*",
        type=int,
        default=[],
        help="also time the nearest-code search alone at these K (e.g. 4096 16384 65536)",
    )
    parser.add_argument("--lookup-rows", type=int, default=2048)
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
    mem = {name: peak_in_fresh_process(name, args) for name in train if name != "distance product"}

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
    report(checks)
    if args.methods:
        compare_methods(args)
    if args.lookup_k:
        compare_lookups(args)


if __name__ == "__main__":
    main()
