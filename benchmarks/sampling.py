"""Prior sampling speed: cached against naive (Gated PixelCNN, video prior); MaskGIT against
the cached PixelCNN.

* PixelCNN: ``gated_pixelcnn(num_codes=512)`` (default 128 channels, 12 layers), 32x32 code maps,
  batch 16. The cached sampler computes one horizontal pixel per layer per code and one
  vertical row per layer per finished row (Ramachandran et al. 2017).
* Video prior: ``video_prior`` at the video recipe's default size (K=256, an 8x8x8 volume,
  dim 128, 4 layers, action-conditioned), batch 8, continuing 3 context steps (6 frames).
  The cached sampler keeps keys and values of every layer and computes one position per code.

Naive sampling runs one full forward pass per code, so its time is ``codes x (time of one
forward pass over the whole map + one draw)``; that per-code time is measured (median of
interleaved repeats) and multiplied out rather than spending minutes on a full naive run. The
cached samplers are timed end to end. Exactness of cached against naive sampling is a test
(``tests/models/test_pixelcnn.py``, ``tests/models/test_video_prior.py``), not part of this script.

MaskGIT draws a whole grid in ``steps`` parallel passes of a bidirectional transformer; it is
timed end to end against the cached PixelCNN in the same run, at two sizes: the PixelCNN row's
(32x32 codes, K=512, batch 16, unconditional, PixelCNN 128 channels x 12 layers) and the default
image preset's (8x8 codes, K=256, 10 classes, batch 16, the preset's PixelCNN: the builder's 64
channels, 6 layers). MaskGIT has the builder's default size and steps unless
``--maskgit-dim/--maskgit-layers/--maskgit-steps`` say otherwise, and is timed with a token per
code (patch 1, the default) and per 2x2 and 4x4 patch of codes (``--maskgit-patches``). Beside
the wall-time ratio it prints the ratio of the process CPU seconds of the same calls, which
other jobs on a shared machine move less.

Run: ``uv run python benchmarks/sampling.py [--threads N] [--repeats N] [--only pixelcnn|video|maskgit]``
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, machine_line, median_seconds  # noqa: E402

from vqkit.models import gated_pixelcnn, maskgit  # noqa: E402
from vqkit.models.video_prior import video_prior  # noqa: E402
from vqkit.models.wavenet import sample_logits  # noqa: E402


def pixelcnn(args) -> tuple[str, float, float, int]:
    torch.manual_seed(0)
    model = gated_pixelcnn(
        num_codes=512, channels=args.pixelcnn_channels, num_layers=args.pixelcnn_layers
    ).eval()
    n, size = args.pixelcnn_batch, args.pixelcnn_size
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 512, (n, size, size), generator=gen)

    @torch.inference_mode()
    def naive_code() -> None:  # what the naive sampler does for every one of the H*W codes
        model._pick(model(codes)[:, :, 0, 0], 1.0, gen)

    per_code = interleaved_medians({"naive": naive_code}, repeats=args.repeats)["naive"]
    model.sample((n, 4, 4), generator=gen)  # warm-up
    cached = median_seconds(
        lambda: model.sample((n, size, size), generator=gen), max(1, args.repeats // 3)
    )
    label = (
        f"PixelCNN {args.pixelcnn_channels} ch x {args.pixelcnn_layers} layers, K=512, "
        f"{size}x{size}, batch {n}"
    )
    return label, per_code * size * size, cached, n


def video(args) -> tuple[str, float, float, int]:
    torch.manual_seed(0)
    shape = (8, 8, 8)
    model = video_prior(num_codes=256, shape=shape, num_conds=5, cond_per_step=2).eval()
    b, context_steps = args.video_batch, 3
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (b, *shape), generator=gen)
    cond = torch.randint(0, 5, (b, shape[0], 2), generator=gen)
    context = codes[:, :context_steps]
    new_codes = (shape[0] - context_steps) * shape[1] * shape[2]

    @torch.inference_mode()
    def naive_code() -> None:  # one full forward pass over the volume, then a draw
        sample_logits(model(codes, cond).flatten(2)[:, :, -1], 1.0, gen)

    per_code = interleaved_medians({"naive": naive_code}, repeats=args.repeats)["naive"]
    model.generate(context=codes[:, : shape[0] - 1], cond=cond, generator=gen)  # warm-up

    def cached() -> None:
        model.generate(context=context, cond=cond, generator=gen)

    cached_s = median_seconds(cached, max(1, args.repeats // 3))
    label = f"video prior dim 128 x 4 layers, K=256, 8x8x8 from 3 context steps, batch {b}"
    return label, per_code * new_codes, cached_s, b


def maskgit_rows(args) -> list[tuple[str, float, float, float]]:
    """(label, cached PixelCNN s, MaskGIT s, PixelCNN / MaskGIT CPU seconds) at the PixelCNN
    row's size and the preset's, for each patch in ``--maskgit-patches`` that divides the
    grid."""
    sizes = [  # K, H = W, classes, PixelCNN channels, layers
        (512, args.pixelcnn_size, None, args.pixelcnn_channels, args.pixelcnn_layers),
        (256, args.preset_size, 10, 64, 6),
    ]
    overrides = {
        key: value
        for key, value in (
            ("dim", args.maskgit_dim),
            ("layers", args.maskgit_layers),
            ("steps", args.maskgit_steps),
        )
        if value is not None
    }
    patches = [int(p) for p in args.maskgit_patches.split(",")]
    n, rows = args.pixelcnn_batch, []
    for k, size, classes, channels, layers in sizes:
        torch.manual_seed(0)
        pcnn = gated_pixelcnn(
            num_codes=k, channels=channels, num_layers=layers, num_classes=classes
        ).eval()
        y = torch.arange(n) % classes if classes else None
        gen = torch.Generator().manual_seed(0)
        shape = (n, size, size)
        fns = {"pixelcnn": functools.partial(pcnn.sample, shape, y=y, generator=gen)}
        models = {}
        for p in patches:
            if size % p == 0:
                models[p] = maskgit(
                    num_codes=k, grid=(size, size), num_classes=classes, patch=p, **overrides
                ).eval()
                fns[p] = functools.partial(models[p].sample, shape, y=y, generator=gen)
        times, cpu = interleaved_medians(fns, repeats=max(1, args.repeats // 3), cpu=True)
        for p, mg in models.items():
            cfg = mg.config["kwargs"]
            label = (
                f"MaskGIT dim {cfg['dim']} x {cfg['layers']}, patch {p}x{p}, {cfg['steps']} steps"
                f" vs PixelCNN {channels} ch x {layers}, K={k}, {size}x{size}, "
                f"{'class-cond., ' if classes else ''}batch {n}"
            )
            rows.append((label, times["pixelcnn"], times[p], cpu["pixelcnn"] / cpu[p]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--only", choices=["pixelcnn", "video", "maskgit"])
    parser.add_argument("--pixelcnn-channels", type=int, default=128)
    parser.add_argument("--pixelcnn-layers", type=int, default=12)
    parser.add_argument("--pixelcnn-batch", type=int, default=16)
    parser.add_argument("--pixelcnn-size", type=int, default=32, help="H = W of the code map")
    parser.add_argument("--video-batch", type=int, default=8)
    parser.add_argument("--preset-size", type=int, default=8, help="the image preset's H = W")
    parser.add_argument("--maskgit-dim", type=int, help="default: the builder's")
    parser.add_argument("--maskgit-layers", type=int, help="default: the builder's")
    parser.add_argument("--maskgit-steps", type=int, help="default: the builder's")
    parser.add_argument("--maskgit-patches", default="1,2,4", help="patch sizes to time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    if args.only != "maskgit":
        print(f"{'model':<78} {'naive s':>9} {'cached s':>9} {'speedup':>8}")
    for name, fn in (("pixelcnn", pixelcnn), ("video", video)):
        if args.only in (None, name):
            label, naive_s, cached_s, _ = fn(args)
            print(f"{label:<78} {naive_s:9.2f} {cached_s:9.3f} {naive_s / cached_s:7.1f}x")
    if args.only in (None, "pixelcnn"):
        print("target: PixelCNN cached >= 100x naive at 32x32, K=512, batch 16")
    if args.only in (None, "maskgit"):
        print(
            f"{'model':<108} {'PixelCNN s':>10} {'MaskGIT s':>10} {'faster by':>9} {'by CPU s':>8}"
        )
        for label, pcnn_s, mg_s, cpu_ratio in maskgit_rows(args):
            print(
                f"{label:<108} {pcnn_s:10.3f} {mg_s:10.3f} {pcnn_s / mg_s:8.1f}x {cpu_ratio:7.1f}x"
            )
        print("target: MaskGIT >= 20x faster than the cached PixelCNN at 32x32, K=512, batch 16")


if __name__ == "__main__":
    main()
