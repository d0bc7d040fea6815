"""WaveNet generation speed: naive (a forward pass per sample), torch cached (one step per layer)
and the fused numba kernel (the whole loop compiled, ``vqkit.models.wavenet_fused``).

Prints samples/s and the real-time factor (seconds of compute per second of output, per stream;
< 1 is faster than real time: 8 kHz audio, or the prior's 31.25 codes/s) at batch 1 and 16,
medians over a few repeats, for:

* the fsdd preset's WaveNet decoder: 8 layers, 32 residual / 32 skip channels, kernel 2,
  256 mu-law classes, 64-dim codes upsampled (repeat, hop 256) to local conditioning, 4 speakers;
* the default audio preset's prior over codes: 2 x 6 layers, 64 channels, K=128, 6 speakers;
* the paper-size 2 x 10-layer, 64-channel WaveNet with 256 classes, plain and with 64-channel
  local conditioning at sample rate plus a speaker.

The naive figure is its steady state: once the prefix is longer than the receptive field every
sample costs one forward pass over it, so that pass is timed directly. Also printed: the fused
kernel's first-call time in a fresh process with an empty numba cache (import + compile) and
with the cache filled (the start-up every later process pays).

Run: ``uv run python benchmarks/wavenet_generation.py [--threads N] [--samples N] [--repeats N]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, median_seconds  # noqa: E402

from vqkit.models import wavenet_fused  # noqa: E402
from vqkit.models.wavenet import WaveNet, sample_logits, wavenet_prior  # noqa: E402
from vqkit.models.wavenet_decoder import WaveNetDecoder, wavenet_decoder  # noqa: E402

SAMPLE_RATE = 8000
CODE_RATE = SAMPLE_RATE / 256  # the audio presets' codes: hop 256


def models() -> dict[str, tuple[WaveNet | WaveNetDecoder, float]]:
    """label -> (model, output rate in Hz for the real-time factor)."""

    def seeded(build: Callable[[], object]):
        torch.manual_seed(0)
        return build().eval()

    paper = dict(in_classes=256, out_classes=256, residual_channels=64, layers_per_stack=10)
    return {
        "fsdd decoder: 8 layers, 32/32 ch, codes (64-dim, hop 256) + 4 speakers": (
            seeded(
                lambda: wavenet_decoder(
                    code_dim=64,
                    hop=256,
                    num_speakers=4,
                    residual_channels=32,
                    skip_channels=32,
                    layers_per_stack=8,
                    stacks=1,
                )  # fmt: skip
            ),
            SAMPLE_RATE,
        ),
        "audio prior: 2 x 6 layers, 64 ch, K=128 + 6 speakers": (
            seeded(
                lambda: wavenet_prior(
                    num_codes=128,
                    num_speakers=6,
                    residual_channels=64,
                    layers_per_stack=6,
                    stacks=2,
                )  # fmt: skip
            ),
            CODE_RATE,
        ),
        "paper size: 2 x 10 layers, 64 ch, 256 classes": (
            seeded(lambda: WaveNet(stacks=2, **paper)),
            SAMPLE_RATE,
        ),
        "paper size + 64-ch local conditioning + speaker": (
            seeded(lambda: WaveNet(stacks=2, local_channels=64, global_classes=6, **paper)),
            SAMPLE_RATE,
        ),
    }


def generator_fn(model, batch: int, n: int, **options) -> tuple[Callable[[], object], int]:
    """A call that generates about n samples per stream, and the exact number it generates."""
    gen = torch.Generator().manual_seed(1)
    if isinstance(model, WaveNetDecoder):
        frames = -(-n // model.hop)
        z = torch.randn(batch, model.upsampler.in_channels, frames, generator=gen)
        speaker = torch.randint(0, model.wavenet.global_classes, (batch,), generator=gen)
        return lambda: model.generate(z, speaker, generator=gen, **options), frames * model.hop
    kwargs = {}
    if model.local_channels is not None:
        kwargs["local"] = torch.randn(batch, model.local_channels, n, generator=gen)
    if model.global_classes is not None:
        kwargs["speaker"] = torch.randint(0, model.global_classes, (batch,), generator=gen)
    return lambda: model.generate(n, batch=batch, generator=gen, **kwargs, **options), n


def rate(model, batch: int, n: int, repeats: int, **options) -> float:
    """Median total samples/s of generation (all streams), after one warm-up call."""
    fn, n = generator_fn(model, batch, n, **options)
    fn()
    return batch * n / median_seconds(fn, repeats)


@torch.inference_mode()
def naive_rate(model, batch: int, repeats: int) -> float:
    """Total samples/s of the naive sampler in steady state: a forward pass over the receptive
    field per sample, then a draw."""
    net = model.wavenet if isinstance(model, WaveNetDecoder) else model
    gen = torch.Generator().manual_seed(0)
    field = net.receptive_field
    window = torch.randint(0, net.in_classes, (batch, field), generator=gen)
    local = None
    if net.local_channels is not None:
        local = torch.randn(batch, net.local_channels, field, generator=gen)
    speaker = None
    if net.global_classes is not None:
        speaker = torch.randint(0, net.global_classes, (batch,), generator=gen)

    def one_sample() -> None:
        sample_logits(net(window, local, speaker)[:, :, -1], 1.0, gen)

    one_sample()  # warm-up
    return batch / median_seconds(one_sample, repeats)


STARTUP = """
import time, torch
torch.set_num_threads(1)
from vqkit.models.wavenet import WaveNet
model = WaveNet(residual_channels=8, layers_per_stack=2, stacks=1).eval()
start = time.perf_counter()
model.generate(1)
print(time.perf_counter() - start)
"""


def startup_seconds() -> tuple[float, float]:
    """Seconds of the first fused ``generate`` in a fresh process: with an empty numba cache
    (numba import + compile + cache write), then with that cache (import + cache load)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
        times = []
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-c", STARTUP], env=env, capture_output=True, text=True
            )
            if out.returncode:
                raise RuntimeError(out.stderr)
            times.append(float(out.stdout.split()[-1]))
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--samples", type=int, default=1000, help="samples per cached run")
    parser.add_argument("--fused-samples", type=int, default=8000, help="samples per fused run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if wavenet_fused.kernel() is None:
        sys.exit("the fused kernel needs numba: pip install 'numba>=0.60'")
    print("WaveNet generation: naive, torch cached and fused numba kernel")
    print(machine_line())
    compile_s, cached_s = startup_seconds()
    print(
        f"fused kernel, first generate in a fresh process: {compile_s:.2f} s with an empty numba "
        f"cache (compile), {cached_s:.2f} s with the cache filled"
    )
    print("targets (1 thread): fused batch 1 >= 32,000 samples/s (fsdd decoder), >= 8,000")
    print("(stretch 16,000) for the paper size; batch 16 fused >= 2x torch cached")
    for label, (model, hz) in models().items():
        net = model.wavenet if isinstance(model, WaveNetDecoder) else model
        print(f"\n{label}; receptive field {net.receptive_field}; RTF at {hz:g} Hz")
        head = f"{'batch':>5} {'method':>7} {'samples/s':>11} {'RTF':>8} {'x naive':>8}"
        print(f"{head} {'x cached':>9}")
        for batch in (1, 16):
            rates = {"naive": naive_rate(model, batch, args.repeats)}
            rates["cached"] = rate(model, batch, args.samples, args.repeats, fused=False)
            rates["fused"] = rate(model, batch, args.fused_samples, args.repeats, fused=True)
            for name, value in rates.items():
                rtf = batch * hz / value  # compute seconds per output second, per stream
                print(
                    f"{batch:>5} {name:>7} {value:>11.1f} {rtf:>8.3f} "
                    f"{value / rates['naive']:>7.1f}x {value / rates['cached']:>8.2f}x"
                )


if __name__ == "__main__":
    main()
