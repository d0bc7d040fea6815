"""WaveNet generation speed: naive (a forward pass per sample) vs cached (one step per layer).

Prints samples/s and the real-time factor at 8 kHz (seconds of compute per second of audio, per
stream; < 1 is faster than real time) for 2 x 10-layer WaveNets with 64 residual channels: the
plain 256-class model, the audio decoder's (local conditioning by the codes, upsampled to the
sample rate, and a speaker embedding) and the prior over codes (K=512, per speaker), batch 1 and
16, medians over a few repeats. The naive figure is its steady state: once
the prefix is longer than the receptive field (2047 samples) every sample costs one forward pass
over 2047 inputs, so that pass is timed directly rather than generating thousands of samples.

Run: ``uv run python benchmarks/wavenet_generation.py [--threads N] [--samples N] [--repeats N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, median_seconds  # noqa: E402

from vqkit.models.wavenet import WaveNet, sample_logits, wavenet_prior  # noqa: E402

SAMPLE_RATE = 8000


def conditioning(model: WaveNet, batch: int, n: int) -> dict:
    """Random local (B, C_l, n) and speaker (B,) inputs for the conditioning the model has."""
    gen = torch.Generator().manual_seed(1)
    kwargs = {}
    if model.local_channels is not None:
        kwargs["local"] = torch.randn(batch, model.local_channels, n, generator=gen)
    if model.global_classes is not None:
        kwargs["speaker"] = torch.randint(0, model.global_classes, (batch,), generator=gen)
    return kwargs


def time_cached(model: WaveNet, batch: int, n: int, repeats: int) -> float:
    """Median seconds for ``model.generate(n)`` at this batch size."""
    gen = torch.Generator().manual_seed(0)
    kwargs = conditioning(model, batch, n)
    model.generate(n, batch=batch, generator=gen, **kwargs)  # warm-up
    return median_seconds(lambda: model.generate(n, batch=batch, generator=gen, **kwargs), repeats)


@torch.inference_mode()
def time_naive(model: WaveNet, batch: int, repeats: int) -> float:
    """Median seconds of one naive sample in steady state: what ``generate_naive`` does per
    sample once the prefix exceeds the receptive field (a forward pass over it, then sampling)."""
    gen = torch.Generator().manual_seed(0)
    field = model.receptive_field
    window = torch.randint(0, model.in_classes, (batch, field))
    kwargs = conditioning(model, batch, field)

    def one_sample() -> None:
        sample_logits(model(window, kwargs.get("local"), kwargs.get("speaker"))[:, :, -1], 1.0, gen)

    one_sample()  # warm-up
    return median_seconds(one_sample, repeats)


def models() -> dict[str, WaveNet]:
    torch.manual_seed(0)
    common = dict(residual_channels=64, layers_per_stack=10, stacks=2)
    return {
        "WaveNet, 256 classes (the issue's reference model)": WaveNet(
            in_classes=256, out_classes=256, **common
        ),
        "decoder: + codes (64 ch at sample rate) + speaker": WaveNet(
            in_classes=256, out_classes=256, local_channels=64, global_classes=6, **common
        ),
        "prior over codes: K=512 + speaker": wavenet_prior(num_codes=512, num_speakers=6, **common),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--samples", type=int, default=1000, help="samples per cached run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("WaveNet generation, 2 stacks x 10 dilated layers, 64 residual channels")
    print(machine_line())
    print("targets (reference model): cached >= 50x naive at batch 1, >= 250x at batch 16;")
    print("stretch: >= 8000 samples/s at batch 1 (real time at 8 kHz)")
    for label, model in models().items():
        model.eval()
        print(f"\n{label}; receptive field {model.receptive_field}")
        print(f"{'batch':>5} {'method':>7} {'samples/s':>11} {'RTF@8kHz':>10} {'speedup':>8}")
        for batch in (1, 16):
            cached_rate = (
                batch * args.samples / time_cached(model, batch, args.samples, args.repeats)
            )
            naive_rate = batch / time_naive(model, batch, args.repeats)
            for name, rate in (("naive", naive_rate), ("cached", cached_rate)):
                rtf = batch * SAMPLE_RATE / rate  # compute seconds per audio second, per stream
                print(f"{batch:>5} {name:>7} {rate:>11.1f} {rtf:>10.3f} {rate / naive_rate:>7.1f}x")


if __name__ == "__main__":
    main()
