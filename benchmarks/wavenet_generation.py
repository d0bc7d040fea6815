"""WaveNet generation speed: naive (a forward pass per sample) vs cached (one step per layer).

Prints samples/s and the real-time factor at 8 kHz (seconds of compute per second of audio, per
stream; < 1 is faster than real time) for a 2 x 10-layer WaveNet with 64 residual channels and 256
classes, batch 1 and 16, medians over a few repeats. The naive figure is its steady state: once
the prefix is longer than the receptive field (2047 samples) every sample costs one forward pass
over 2047 inputs, so that pass is timed directly rather than generating thousands of samples.

Run: ``uv run python benchmarks/wavenet_generation.py [--threads N] [--samples N] [--repeats N]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vqkit.models.wavenet import WaveNet, sample_logits

SAMPLE_RATE = 8000


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_cached(model: WaveNet, batch: int, n: int, repeats: int) -> float:
    """Median seconds for ``model.generate(n)`` at this batch size."""
    gen = torch.Generator().manual_seed(0)
    model.generate(20, batch=batch, generator=gen)  # warm-up
    return median_seconds(lambda: model.generate(n, batch=batch, generator=gen), repeats)


@torch.inference_mode()
def time_naive(model: WaveNet, batch: int, repeats: int) -> float:
    """Median seconds of one naive sample in steady state: what ``generate_naive`` does per
    sample once the prefix exceeds the receptive field (a forward pass over it, then sampling)."""
    gen = torch.Generator().manual_seed(0)
    window = torch.randint(0, 256, (batch, model.receptive_field))

    def one_sample() -> None:
        sample_logits(model(window)[:, :, -1], 1.0, gen)

    one_sample()  # warm-up
    return median_seconds(one_sample, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--samples", type=int, default=1000, help="samples per cached run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = WaveNet(
        in_classes=256, out_classes=256, residual_channels=64, layers_per_stack=10, stacks=2
    ).eval()
    field = model.receptive_field
    print(
        f"WaveNet 2 x 10 layers, residual 64, skip {model.skip_channels}, gate "
        f"{model.gate_channels}, 256 classes, receptive field {field}; "
        f"torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s)"
    )
    print(f"{'batch':>5} {'method':>7} {'samples/s':>11} {'RTF@8kHz':>10} {'speedup':>8}")
    for batch in (1, 16):
        cached_rate = batch * args.samples / time_cached(model, batch, args.samples, args.repeats)
        naive_rate = batch / time_naive(model, batch, args.repeats)
        for name, rate in (("naive", naive_rate), ("cached", cached_rate)):
            rtf = batch * SAMPLE_RATE / rate  # compute seconds per audio second, per stream
            speedup = rate / naive_rate
            print(f"{batch:>5} {name:>7} {rate:>11.1f} {rtf:>10.3f} {speedup:>7.1f}x")


if __name__ == "__main__":
    main()
