"""WaveNet: causal conv step path, causality, receptive field, cached == naive generation,
conditioning, fitting, the audio decoder and the builders. Tiny sizes: residual 8, 2 x 3 layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqkit.models.registry import build_model
from vqkit.models.wavenet import WaveNet, sample_logits, wavenet_prior
from vqkit.models.wavenet_decoder import CodeUpsampler, WaveNetDecoder, wavenet_decoder
from vqkit.nn.causal import CausalConv1d

K, B, T, C_LOCAL, SPEAKERS = 16, 3, 40, 5, 4


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops gain nothing from threads, and on a shared machine intra-op threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference (torch.testing's first import costs seconds here)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def tiny(conditioning: str = "none", seed: int = 0, **kwargs) -> WaveNet:
    torch.manual_seed(seed)
    options = dict(
        in_classes=K,
        out_classes=K,
        residual_channels=8,
        skip_channels=16,
        gate_channels=16,
        layers_per_stack=3,
        stacks=2,
        local_channels=C_LOCAL if conditioning in ("local", "both") else None,
        global_classes=SPEAKERS if conditioning in ("speaker", "both") else None,
    )
    return WaveNet(**{**options, **kwargs}).eval()


def cond_inputs(model: WaveNet, batch: int, length: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    local = (
        None if model.local_channels is None else torch.randn(batch, C_LOCAL, length, generator=g)
    )
    speaker = None
    if model.global_classes is not None:
        speaker = torch.randint(0, SPEAKERS, (batch,), generator=g)
    return local, speaker


# ---------------------------------------------------------------- CausalConv1d


@pytest.mark.parametrize("kernel_size,dilation", [(1, 1), (2, 1), (2, 4), (3, 2), (4, 5)])
def test_causal_conv_step_matches_forward(kernel_size, dilation):
    torch.manual_seed(0)
    conv = CausalConv1d(3, 5, kernel_size, dilation=dilation)
    x = torch.randn(2, 3, 30)
    with torch.inference_mode():
        full = conv(x)
        state = conv.init_state(2)
        steps = torch.stack([conv.step(x[:, :, t], state, t) for t in range(30)], dim=-1)
    assert full.shape == (2, 5, 30)
    assert max_diff(steps, full) < 1e-5


@pytest.mark.parametrize("kernel_size,dilation", [(2, 1), (2, 4), (3, 3)])
def test_causal_conv_gradient_support_is_exactly_the_taps(kernel_size, dilation):
    torch.manual_seed(0)
    conv = CausalConv1d(2, 2, kernel_size, dilation=dilation).double()
    x = torch.randn(1, 2, 20, dtype=torch.double, requires_grad=True)
    out = conv(x)
    for t in range(20):
        (grad,) = torch.autograd.grad(out[0, :, t].sum(), x, retain_graph=True)
        support = set(torch.nonzero(grad[0].abs().sum(0)).flatten().tolist())
        taps = {t - dilation * j for j in range(kernel_size)}
        assert support == {s for s in taps if s >= 0}


def test_causal_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dilation"):
        CausalConv1d(2, 2, 2, dilation=0)
    with pytest.raises(ValueError, match=r"\(B, 2, T\)"):
        CausalConv1d(2, 2)(torch.randn(1, 3, 5))


# ---------------------------------------------------------------- causality and receptive field


def test_forward_shape_and_receptive_field_formula():
    model = tiny()
    assert model(torch.randint(0, K, (B, T))).shape == (B, K, T)
    assert model.receptive_field == 2 * (1 + 2 + 4) + 1
    assert WaveNet(residual_channels=4, layers_per_stack=10, stacks=2).receptive_field == 2047
    assert tiny(kernel_size=3).receptive_field == 2 * 14 + 1


@pytest.mark.parametrize("t", [0, 7, 25, 39])
def test_perturbing_input_t_changes_outputs_from_t_on_only(t):
    model = tiny("both")
    x = torch.randint(0, K, (B, T))
    local, speaker = cond_inputs(model, B, T)
    y = x.clone()
    y[:, t] = (x[:, t] + 1) % K
    with torch.no_grad():
        a, b = model(x, local, speaker), model(y, local, speaker)
    diff = (a - b).abs().amax(dim=(0, 1))  # (T,)
    assert torch.all(diff[:t] < 1e-6)
    assert diff[t] > 1e-4  # convention: output t sees input t (it predicts sample t + 1)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_gradient_support_is_causal_and_equals_receptive_field(kernel_size):
    model = tiny("local", kernel_size=kernel_size).double()
    x = torch.randint(0, K, (1, T))
    emb = model.embed(x).transpose(1, 2).detach().requires_grad_()  # (1, R, T)
    local = torch.randn(1, C_LOCAL, T, dtype=torch.double, requires_grad=True)
    logits = model.forward_embeddings(emb, local)
    r = torch.randn(K, dtype=torch.double)  # a random readout avoids structured cancellation
    d_emb = torch.zeros(T, T, dtype=torch.double)  # [s, t]: |d logits[s] / d emb[t]|
    d_local = torch.zeros(T, T, dtype=torch.double)
    for s in range(T):
        g_emb, g_local = torch.autograd.grad(
            (logits[0, :, s] * r).sum(), (emb, local), retain_graph=True
        )
        d_emb[s], d_local[s] = g_emb[0].abs().sum(0), g_local[0].abs().sum(0)
    s, t = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    in_field = (t <= s) & (t > s - model.receptive_field)
    assert torch.all(d_emb[~in_field] == 0) and torch.all(d_emb[in_field] > 0)
    assert torch.all(d_local[t > s] == 0)  # local conditioning is causal too
    # The measured receptive field (widest gradient support of one output) is the property.
    support = (d_emb > 0).sum(1)
    assert support.max().item() == model.receptive_field < T


# ---------------------------------------------------------------- cached generation


@pytest.mark.parametrize("conditioning", ["none", "local", "speaker", "both"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_cached_generation_equals_naive(conditioning, batch, temperature):
    model = tiny(conditioning)
    n = 45  # > receptive field, so the naive sampler's window slides
    local, speaker = cond_inputs(model, batch, n)
    kwargs = dict(local=local, speaker=speaker, batch=batch, temperature=temperature)
    fast = model.generate(n, generator=torch.Generator().manual_seed(5), **kwargs)
    slow = model.generate_naive(n, generator=torch.Generator().manual_seed(5), **kwargs)
    assert fast.shape == (batch, n) and fast.dtype == torch.long
    assert torch.equal(fast, slow)
    if temperature > 0:  # not a trivial sequence, and the generator is really used
        assert fast.unique().numel() > 4
        other = model.generate(n, generator=torch.Generator().manual_seed(6), **kwargs)
        assert not torch.equal(fast, other)


@pytest.mark.parametrize("conditioning", ["none", "both"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_sampler_logits_equal_teacher_forced_logits_on_sampled_sequence(conditioning, dtype, tol):
    """Pins the exactness of both samplers at the logit level. Sample equality alone would not
    notice a tiny error: a naive window one input short changes these logits by ~2e-8 only,
    which float64 with a 1e-10 tolerance catches."""
    model = tiny(conditioning).to(dtype)
    local, speaker = cond_inputs(model, B, T)
    kwargs = dict(local=local, speaker=speaker, batch=B, return_logits=True)
    samples, fast = model.generate(T, generator=torch.Generator().manual_seed(2), **kwargs)
    same, slow = model.generate_naive(T, generator=torch.Generator().manual_seed(2), **kwargs)
    local = None if local is None else local.to(dtype)
    with torch.no_grad():
        full = model(model.shift_right(samples), local, speaker)  # inputs [first, y_0, ..]
    assert torch.equal(samples, same)
    assert fast.shape == (B, K, T) and fast.dtype == dtype
    assert max_diff(fast, full) < tol
    assert max_diff(slow, full) < tol


def test_sample_logits_inverse_cdf_and_argmax():
    logits = torch.tensor([[0.0, -torch.inf, 0.0, -torch.inf]]).repeat(2000, 1)
    draws = sample_logits(logits, 1.0, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 2}  # never a zero-probability class
    assert 0.45 < (draws == 0).float().mean().item() < 0.55
    peaked = torch.tensor([[1.0, 3.0, 2.0]])
    assert sample_logits(peaked, 0, None).item() == 1
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    sample_logits(peaked, 0, g)
    assert torch.equal(g.get_state(), state)  # argmax draws nothing


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.0])
def test_sample_logits_log_prob_and_several_draws_per_row(temperature):
    torch.manual_seed(0)
    logits = torch.randn(50, 7) * 3
    logits[0, 3] = -torch.inf  # a class that can never be drawn
    u = torch.rand(50, 4)
    if temperature:
        one = [sample_logits(logits, temperature, None, u[:, j]) for j in range(4)]
        several, log_p = sample_logits(logits, temperature, None, u, log_prob=True)
        assert several.shape == log_p.shape == (50, 4)
        assert torch.equal(several, torch.stack(one, 1))  # one softmax, the same draws
        single, single_log_p = sample_logits(logits, temperature, None, u[:, 0], log_prob=True)
        assert torch.equal(single, one[0]) and torch.equal(single_log_p, log_p[:, 0])
    else:
        several, log_p = sample_logits(logits, 0, None, log_prob=True)
        assert torch.equal(several, logits.argmax(-1))
        several, log_p = several[:, None], log_p[:, None]
    for shape in ((0,), (0, 3)):  # no rows: nothing drawn
        none, none_log_p = sample_logits(logits[:0], 1.0, None, torch.rand(shape), log_prob=True)
        assert none.shape == none_log_p.shape == shape
    # log p of each draw under softmax(logits / T) (the argmax's under T = 1 when T = 0)
    scaled = logits / (temperature or 1.0)
    expect = torch.log_softmax(scaled, -1).gather(1, several)
    assert torch.allclose(log_p, expect, atol=1e-5) and bool(torch.isfinite(log_p).all())


# ---------------------------------------------------------------- conditioning and fitting


def test_speaker_embedding_changes_the_output():
    model = tiny("speaker")
    x = torch.randint(0, K, (2, T))
    with torch.no_grad():
        a = model(x, speaker=torch.tensor([0, 0]))
        b = model(x, speaker=torch.tensor([1, 1]))
    assert (a - b).abs().amax(dim=(1, 2)).min() > 1e-3
    samples = [
        model.generate(30, speaker=speaker, batch=2, generator=torch.Generator().manual_seed(0))
        for speaker in (0, 1)
    ]
    assert not torch.equal(*samples)  # same random draws, different speaker


def test_tiny_model_fits_a_periodic_sequence():
    model = tiny().train()
    period = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    y = period.repeat(6)[None, :T]  # (1, T)
    # Plain Adam by hand: constructing a torch.optim optimizer first imports torch._dynamo, which
    # costs seconds without a bytecode cache.
    params = list(model.parameters())
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    losses = []
    for step in range(1, 41):
        loss = model.loss(y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, (m, v) in zip(params, grads, moments):
                m.lerp_(g, 0.1)
                v.lerp_(g * g, 0.001)
                p -= 1e-2 * (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8)
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    model.eval()
    assert torch.equal(model.generate(T, temperature=0), y)  # greedy decoding continues it


# ---------------------------------------------------------------- audio decoder and prior


def tiny_decoder(upsample: str = "repeat", speakers: int | None = 3) -> WaveNetDecoder:
    torch.manual_seed(0)
    return wavenet_decoder(
        code_dim=6, hop=4, num_speakers=speakers, residual_channels=8, layers_per_stack=3,
        stacks=2, upsample=upsample,
    ).eval()  # fmt: skip


@pytest.mark.parametrize("mode", ["repeat", "transposed"])
def test_code_upsampler_maps_frame_f_to_samples_f_hop(mode):
    torch.manual_seed(0)
    up = CodeUpsampler(6, 5, 4, mode=mode)
    z = torch.randn(2, 6, 7)
    out = up(z)
    assert out.shape == (2, 5, 28)
    z2 = z.clone()
    z2[:, :, 3] += 1.0
    changed = (up(z2) - out).abs().amax(dim=(0, 1)) > 1e-6
    assert changed.nonzero().flatten().tolist() == list(range(12, 16))
    frames = out.reshape(2, 5, 7, 4)
    same = torch.allclose(frames, frames[..., :1].expand_as(frames))
    assert same == (mode == "repeat")  # repeat: one vector per frame; transposed: per position


def test_decoder_shift_convention_and_loss():
    decoder = tiny_decoder()
    z_q, speaker = torch.randn(2, 6, 10), torch.tensor([0, 2])
    audio = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        logits = decoder(z_q, speaker, audio)
        assert logits.shape == (2, 256, 40)
        t = 17
        other = audio.clone()
        other[:, t] = (audio[:, t] + 100) % 256
        diff = (decoder(z_q, speaker, other) - logits).abs().amax(dim=(0, 1))
    assert diff[: t + 1].max() < 1e-6  # logits[t] predicts audio[t] from audio[< t]
    assert diff[t + 1] > 1e-4
    expected = F.cross_entropy(logits, audio)
    assert max_diff(decoder.loss(z_q, speaker, audio), expected) < 1e-6


@pytest.mark.parametrize("upsample", ["repeat", "transposed"])
def test_decoder_generation_cached_equals_naive(upsample):
    decoder = tiny_decoder(upsample)
    z_q, speaker = torch.randn(2, 6, 10), torch.tensor([1, 2])
    fast = decoder.generate(z_q, speaker, generator=torch.Generator().manual_seed(0))
    slow = decoder.generate(z_q, speaker, generator=torch.Generator().manual_seed(0), cached=False)
    assert fast.shape == (2, 40) and torch.equal(fast, slow)
    assert 0 <= fast.min() and fast.max() < 256


def test_decoder_rejects_mismatched_audio():
    decoder = tiny_decoder()
    with pytest.raises(ValueError, match="crop the audio"):
        decoder(torch.randn(2, 6, 10), torch.tensor([0, 1]), torch.randint(0, 256, (2, 39)))
    with pytest.raises(ValueError, match="speaker"):
        decoder(torch.randn(2, 6, 10), None, torch.randint(0, 256, (2, 40)))


def test_prior_over_codes_with_speakers():
    torch.manual_seed(0)
    prior = wavenet_prior(num_codes=32, num_speakers=2, residual_channels=8, layers_per_stack=3)
    codes = torch.randint(0, 32, (2, 12))
    speaker = torch.tensor([0, 1])
    assert prior(codes, speaker=speaker).shape == (2, 32, 12)
    assert prior.loss(codes, speaker=speaker).ndim == 0
    assert prior.nll_bits(codes, speaker=speaker).shape == (2,)
    g = dict(speaker=speaker, generator=torch.Generator().manual_seed(0))
    sample = prior.generate(12, **g)
    assert sample.shape == (2, 12) and sample.max() < 32


def test_builders_record_config_and_rebuild():
    for model in (tiny_decoder("transposed"), wavenet_prior(num_codes=8, residual_channels=4)):
        rebuilt = build_model(model.config)
        assert type(rebuilt) is type(model)
        rebuilt.load_state_dict(model.state_dict())  # strict: identical architecture
    assert tiny_decoder().config["builder"] == "wavenet_decoder"
    assert wavenet_prior(num_codes=8).config["kwargs"]["num_codes"] == 8


# ---------------------------------------------------------------- validation


def test_bad_arguments_raise_value_errors():
    model = tiny("speaker")
    x = torch.randint(0, K, (2, 10))
    with pytest.raises(ValueError, match="int64"):
        model(x.float(), speaker=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model(x + K, speaker=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="speaker"):
        model(x)
    with pytest.raises(ValueError, match="local"):
        model(x, torch.randn(2, 3, 10), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="speaker"):
        model(x, speaker=torch.tensor([0, SPEAKERS]))
    with pytest.raises(ValueError, match="temperature"):
        model.generate(5, speaker=0, temperature=-1.0)
    with pytest.raises(ValueError, match="batch sizes disagree"):
        model.generate(5, speaker=torch.tensor([0, 1]), batch=3)
    with pytest.raises(ValueError, match="n_samples"):
        model.generate(0, speaker=0)
    with pytest.raises(ValueError, match="local must have shape"):
        tiny("local").generate(5, local=torch.randn(1, C_LOCAL, 4))
    with pytest.raises(ValueError, match="gate_channels"):
        WaveNet(gate_channels=7)
    with pytest.raises(ValueError, match="kernel_size"):
        WaveNet(kernel_size=1)
    with pytest.raises(ValueError, match="global_channels"):
        WaveNet(global_classes=2, global_channels=0)
    with pytest.raises(ValueError, match="upsampling mode"):
        CodeUpsampler(4, 4, 2, mode="linear")
