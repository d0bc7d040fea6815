"""The fused numba generation kernel against the torch cached sampler and teacher forcing.

Every kind of WaveNet the toolkit builds: the audio decoder (codes upsampled to local
conditioning + speaker), a vocoder-like model (many local channels, no speaker), the prior over
codes (speaker only) and the plain model; kernel sizes 2 and 3, several stacks and widths,
temperatures 1, 0.7 and 0 (argmax), batch 1 and 3. Tiny sizes: the first test pays the kernel's
compile once (a few seconds, then cached on disk).
"""

from __future__ import annotations

import sys

import pytest
import torch

from vqkit.models import wavenet_fused
from vqkit.models.wavenet import WaveNet, wavenet_prior
from vqkit.models.wavenet_decoder import wavenet_decoder

N = 50  # samples per test: longer than every receptive field here, so the ring buffers wrap


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# name -> (builder(kernel_size), conditioning): "codes" = decoder codes (B, D, T'), "local" =
# sample-rate features (B, C_l, T), plus a speaker where the model has one.
def _decoder(kernel_size):
    return wavenet_decoder(
        code_dim=6, hop=5, num_speakers=3, residual_channels=8, skip_channels=12,
        layers_per_stack=3, stacks=2, kernel_size=kernel_size,
    )  # fmt: skip


def _vocoder(kernel_size):  # log-mel-like conditioning: many channels, any values
    return WaveNet(
        in_classes=32, out_classes=32, residual_channels=12, skip_channels=6, gate_channels=10,
        layers_per_stack=4, stacks=1, kernel_size=kernel_size, local_channels=40,
    )  # fmt: skip


def _prior(kernel_size):
    return wavenet_prior(
        num_codes=12, num_speakers=4, residual_channels=16, layers_per_stack=2, stacks=3,
        kernel_size=kernel_size,
    )  # fmt: skip


def _plain(kernel_size):
    return WaveNet(
        in_classes=24, out_classes=20, residual_channels=4, skip_channels=8, gate_channels=6,
        layers_per_stack=3, stacks=2, kernel_size=kernel_size,
    )  # fmt: skip


MODELS = {"decoder": _decoder, "vocoder": _vocoder, "prior": _prior, "plain": _plain}


def build(name: str, kernel_size: int):
    torch.manual_seed(0)
    model = MODELS[name](kernel_size).eval()
    with torch.no_grad():  # larger biases than the init: peaked, varied distributions
        for p in model.parameters():
            p.mul_(2.0)
    return model


def wavenet_and_inputs(model, batch: int, seed: int = 1):
    """(the WaveNet, generate kwargs with sample-rate local and speaker, n)."""
    g = torch.Generator().manual_seed(seed)
    net = getattr(model, "wavenet", model)
    kwargs = {}
    if hasattr(model, "upsampler"):
        z = torch.randn(batch, model.upsampler.in_channels, N // model.hop, generator=g)
        with torch.no_grad():
            kwargs["local"] = model.upsampler(z)
    elif net.local_channels is not None:
        kwargs["local"] = torch.randn(batch, net.local_channels, N, generator=g) * 2
    if net.global_classes is not None:
        kwargs["speaker"] = torch.randint(0, net.global_classes, (batch,), generator=g)
    return net, kwargs


def both(net, kwargs, batch, temperature, seed=5, **extra):
    out = {}
    for fused in (True, False):
        out[fused] = net.generate(
            N, batch=batch, temperature=temperature, fused=fused, return_logits=True,
            generator=torch.Generator().manual_seed(seed), **kwargs, **extra,
        )  # fmt: skip
    return out[True], out[False]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_fused_draws_the_cached_samples_and_teacher_forced_logits(
    name, kernel_size, batch, temperature
):
    net, kwargs = wavenet_and_inputs(build(name, kernel_size), batch)
    (samples, logits), (ref, ref_logits) = both(net, kwargs, batch, temperature)
    assert samples.shape == (batch, N) and samples.dtype == torch.long
    assert torch.equal(samples, ref)
    assert logits.shape == (batch, net.out_classes, N) and logits.dtype == torch.float32
    with torch.no_grad():
        full = net(net.shift_right(samples), kwargs.get("local"), kwargs.get("speaker"))
    assert (logits - full).abs().max().item() < 1e-4
    assert (logits - ref_logits).abs().max().item() < 1e-4
    if temperature > 0:  # not a trivial sequence: the uniforms are really used
        assert samples.unique().numel() > 3
        other = net.generate(N, batch=batch, generator=torch.Generator().manual_seed(6), **kwargs)
        assert not torch.equal(other, samples)
    else:
        assert torch.equal(samples, logits.argmax(1))


@pytest.mark.parametrize("name", ["decoder", "prior"])
def test_fused_temperature_divides_the_logits(name):
    net, kwargs = wavenet_and_inputs(build(name, 2), 3)
    (samples, _), (ref, _) = both(net, kwargs, 3, 0.7)
    assert torch.equal(samples, ref)
    (hot, _), _ = both(net, kwargs, 3, 3.0)
    assert not torch.equal(hot, samples)  # same uniforms, other distribution


def test_fused_state_carries_across_kernel_calls(monkeypatch):
    """Long generations run in blocks (local projections are bounded in memory); ring buffers,
    the last input and time must carry over from one kernel call to the next."""
    net, kwargs = wavenet_and_inputs(build("decoder", 3), 3)
    monkeypatch.setattr(wavenet_fused, "BLOCK_FLOATS", 1)
    monkeypatch.setattr(wavenet_fused, "MIN_BLOCK", 7)  # 50 samples: 8 calls
    (samples, logits), (ref, ref_logits) = both(net, kwargs, 3, 1.0, first=torch.tensor([0, 9, 3]))
    assert torch.equal(samples, ref)
    assert (logits - ref_logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["vocoder", "prior"])  # with and without local conditioning
def test_a_progress_bar_changes_no_sample(name, capsys):
    net, kwargs = wavenet_and_inputs(build(name, 3), 2)
    ref_fused, ref_torch = both(net, kwargs, 2, 1.0)
    capsys.readouterr()
    shown_fused, shown_torch = both(net, kwargs, 2, 1.0, progress="decode")
    for (a, la), (b, lb) in ((ref_fused, shown_fused), (ref_torch, shown_torch)):
        assert torch.equal(a, b) and torch.equal(la, lb)
    err = capsys.readouterr().err
    assert err.count(f"decode:   0%|          | 0/{N} ") == 2  # the fused and torch paths


def test_fused_streams_in_parallel_chunks_match():
    """With 2 threads the 3 streams run in 2 chunks (numba caps it at its own thread count); each
    stream is what it would be alone."""
    net, kwargs = wavenet_and_inputs(build("prior", 2), 3)
    torch.set_num_threads(2)
    (samples, _), (ref, _) = both(net, kwargs, 3, 1.0)
    assert torch.equal(samples, ref)
    torch.set_num_threads(1)
    (samples, _), _ = both(net, kwargs, 3, 1.0)
    assert torch.equal(samples, ref)


def test_decoder_and_prior_generate_use_the_kernel_by_default(monkeypatch):
    calls = []
    real = wavenet_fused.generate

    def spy(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(wavenet_fused, "generate", spy)
    decoder = build("decoder", 2)
    z = torch.randn(2, 6, 4)
    fast = decoder.generate(z, torch.tensor([0, 2]), generator=torch.Generator().manual_seed(0))
    assert calls == [20]
    slow = decoder.generate(
        z, torch.tensor([0, 2]), generator=torch.Generator().manual_seed(0), fused=False
    )
    assert calls == [20] and torch.equal(fast, slow)
    build("prior", 2).generate(7, speaker=1, batch=2)
    assert calls == [20, 7]
    build("plain", 2).generate(5, cached=False)  # the naive reference never runs it
    assert calls == [20, 7]


def test_fused_refuses_what_it_cannot_run():
    model = build("plain", 2)
    with pytest.raises(ValueError, match="cached=True"):
        model.generate(5, fused=True, cached=False)
    model64 = build("plain", 2).double()
    with pytest.raises(ValueError, match="float32 models on the CPU"):
        model64.generate(5, fused=True)
    a = model64.generate(N, generator=torch.Generator().manual_seed(1))  # auto: torch path
    assert torch.equal(a, model.generate(N, generator=torch.Generator().manual_seed(1)))


def test_without_numba_generate_falls_back_with_one_warning(monkeypatch):
    model = build("prior", 2)
    kwargs = dict(speaker=torch.tensor([1, 3]), generator=torch.Generator().manual_seed(4))
    ref = model.generate(N, fused=False, **kwargs, batch=2)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` now raises ImportError
    monkeypatch.setattr(wavenet_fused, "_KERNELS", {})
    monkeypatch.setattr(wavenet_fused, "_WARNED", False)
    monkeypatch.setattr(
        wavenet_fused, "generate", lambda *a, **k: pytest.fail("the kernel ran without numba")
    )
    kwargs["generator"] = torch.Generator().manual_seed(4)
    with pytest.warns(RuntimeWarning, match="numba is not available") as record:
        out = model.generate(N, batch=2, **kwargs)
        model.generate(3, batch=2, speaker=kwargs["speaker"], fused=True)
    assert len(record) == 1
    assert torch.equal(out, ref)


def test_fused_weights_follow_parameter_updates():
    """The kernel's weight arrays are kept per model between calls; an in-place update (an
    optimizer step, load_state_dict) or a dtype round trip must rebuild them."""
    net, kwargs = wavenet_and_inputs(build("decoder", 2), 3)
    before, _ = both(net, kwargs, 3, 0.0)
    with torch.no_grad():
        net.head[3].bias.add_(torch.linspace(-3, 3, net.out_classes))
    after, ref = both(net, kwargs, 3, 0.0)
    assert torch.equal(after[0], ref[0]) and not torch.equal(after[0], before[0])
    assert (after[1] - ref[1]).abs().max().item() < 1e-4
    net.double().float()
    with torch.no_grad():
        net.layers[0].conv.weight.mul_(-1)
    again, ref = both(net, kwargs, 3, 0.0)
    assert torch.equal(again[0], ref[0]) and (again[1] - ref[1]).abs().max().item() < 1e-4


def test_one_compiled_signature_serves_every_model():
    """Every argument keeps one numba type (C-contiguous, writable arrays), so the kernel is
    compiled once per process (or loaded once from the disk cache), whatever the model."""
    for name in MODELS:
        for batch in (1, 3):
            net, kwargs = wavenet_and_inputs(build(name, 2), batch)
            both(net, kwargs, batch, 1.0)
            net.generate(5, batch=batch, temperature=0, **{
                key: value[..., :5] if key == "local" else value for key, value in kwargs.items()
            })  # fmt: skip
    assert len(wavenet_fused.kernel(parallel=False).signatures) == 1
