"""The audio VQ-VAE: shapes, losses, gradients, encode/decode, voice conversion, rebuilding."""

import pytest
import torch
import torch.nn.functional as F

from vqkit.audio import MuLawDecode
from vqkit.bundle import load_model
from vqkit.models import AudioVQVAE, build_model, vqvae_audio, wavenet_decoder
from vqkit.models.vqvae_audio import time_jitter
from vqkit.nn import Encoder
from vqkit.quantize import VectorQuantizer
from vqkit.train.checkpoint import save_checkpoint

SPEAKERS = 3
TINY = dict(
    hidden=8,
    res_hidden=4,
    num_res_blocks=1,
    num_codes=8,
    code_dim=4,
    strides=[2, 2],
    residual_channels=6,
    layers_per_stack=3,
    stacks=1,
)


def tiny(**kwargs) -> AudioVQVAE:
    return vqvae_audio(**{"num_speakers": SPEAKERS, **TINY, **kwargs})


def audio(batch: int = 2, length: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_forward_shapes_and_loss_terms():
    torch.manual_seed(0)
    model = tiny()
    x, spk = audio(), torch.tensor([0, 2])
    out = model(x, spk)
    assert model.hop == 4
    assert out.logits.shape == (2, 256, 32)
    assert out.quant.codes.shape == (2, 8) and out.quant.codes.dtype == torch.int64
    torch.testing.assert_close(out.recon_loss, F.cross_entropy(out.logits, x))
    torch.testing.assert_close(out.loss, out.recon_loss + out.quant.loss)
    # The encoder reads the classes as the companded waveform in [-1, 1].
    floats = model.to_float(torch.tensor([[0, 255]]))
    assert floats.shape == (1, 1, 2) and floats.flatten().tolist() == [-1.0, 1.0]


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    # codebook learned by its loss term (no EMA), so it gets a gradient too
    model = tiny(quantizer={"ema": False, "kmeans_init": False, "restart_after": None})
    model(audio(), torch.tensor([1, 2])).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {
        "encoder",
        "quantizer",
        "decoder",
    }


def test_logits_are_causal_in_the_audio_given_the_codes():
    """With the codes fixed, logits at t depend on samples < t only (teacher forcing)."""
    torch.manual_seed(0)
    model = tiny().eval()
    x, spk = audio(1), torch.tensor([1])
    z_q = model.latents(model.encode(x))
    base = model.decoder(z_q, spk, x)
    y = x.clone()
    y[0, 20] = (y[0, 20] + 100) % 256
    moved = model.decoder(z_q, spk, y)
    torch.testing.assert_close(moved[:, :, :21], base[:, :, :21])
    assert not torch.allclose(moved[:, :, 21:], base[:, :, 21:])


def test_encode_equals_forward_codes_and_nll_matches_loss():
    torch.manual_seed(0)
    model = tiny(quantizer={"ema": True}).eval()
    x, spk = audio(), torch.tensor([0, 1])
    with torch.no_grad():
        out = model(x, spk)
    assert torch.equal(model.encode(x), out.quant.codes)
    bits = model.nll_bits(x, spk)
    assert bits.shape == (2,)
    torch.testing.assert_close(bits.mean(), out.recon_loss / torch.log(torch.tensor(2.0)))


def test_cached_decode_equals_naive_decode():
    torch.manual_seed(0)
    model = tiny().eval()
    codes = model.encode(audio(2, 24))
    spk = torch.tensor([2, 0])
    fast = model.decode(codes, spk, generator=torch.Generator().manual_seed(3))
    slow = model.decode(codes, spk, generator=torch.Generator().manual_seed(3), cached=False)
    assert fast.shape == (2, 24) and fast.dtype == torch.int64
    assert torch.equal(fast, slow)
    assert 0 <= int(fast.min()) and int(fast.max()) < 256


def test_conversion_changes_the_voice_not_the_codes():
    """Decoding one utterance's codes as another speaker uses that speaker's embedding."""
    torch.manual_seed(0)
    model = tiny().eval()
    x = audio(1)
    z_q = model.latents(model.encode(x))
    own = model.decoder(z_q, torch.tensor([0]), x)
    other = model.decoder(z_q, torch.tensor([1]), x)
    assert not torch.allclose(own, other)
    a = model.decode(model.encode(x), 0, temperature=0)
    b = model.decode(model.encode(x), 1, temperature=0)
    assert a.shape == b.shape == (1, 32)


def test_model_without_speakers():
    torch.manual_seed(0)
    model = tiny(num_speakers=None)
    assert model.num_speakers is None
    out = model(audio(), None)
    assert out.logits.shape == (2, 256, 32)
    with pytest.raises(ValueError, match="speaker"):
        model(audio(), torch.tensor([0, 1]))


def test_build_model_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny(quantizer={"ema": True, "beta": 0.5}, strides=[2, 4]).eval()
    assert model.config["builder"] == "vqvae_audio" and model.hop == 8
    rebuilt = build_model(model.config)
    rebuilt.load_state_dict(model.state_dict())  # strict: the same architecture
    x, spk = audio(2, 16), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x, spk).logits, model(x, spk).logits)
    save_checkpoint(tmp_path / "ckpt", model, step=1)
    loaded = load_model(tmp_path / "ckpt").eval()
    assert isinstance(loaded, AudioVQVAE) and loaded.quantizer.beta == 0.5
    assert torch.equal(loaded.encode(x), model.encode(x))


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="multiple of the hop 4"):
        model(audio(2, 30), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="int64"):
        model(audio().float(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        model.encode(audio() + 256)
    with pytest.raises(ValueError, match="num_codes"):
        tiny(quantizer={"num_codes": 4})
    encoder = Encoder(1, 1, 8, 4, strides=[2, 2], res_hidden=4, num_res_blocks=1)
    decoder = wavenet_decoder(code_dim=4, hop=8, residual_channels=4, layers_per_stack=2)
    with pytest.raises(ValueError, match="hop"):
        AudioVQVAE(encoder, VectorQuantizer(8, 4), decoder)


def tiny_logmel(**kwargs) -> AudioVQVAE:
    # 40 samples per log-mel frame at 8 kHz (5 ms), then one stride 2: hop 80
    return tiny(features="logmel", sample_rate=8000, mel_hop=40, n_mels=8, strides=[2], **kwargs)


def test_logmel_encoder_reads_the_expanded_waveform_as_log_mel_frames():
    torch.manual_seed(0)
    model = tiny_logmel().eval()
    assert model.hop == 80
    x = audio(2, 320)
    encoder = model.encoder
    # its mel frames are those of the mu-law decoded waveform, one per 40 samples
    frames = encoder.mel(MuLawDecode(256)(x))[..., :8]
    with torch.no_grad():
        via_encoder = encoder.frames(encoder.norm(frames))
        torch.testing.assert_close(encoder(model.to_float(x)), via_encoder)
    out = model(x, torch.tensor([0, 2]))
    assert out.quant.codes.shape == (2, 4) and out.logits.shape == (2, 256, 320)
    assert torch.equal(model.encode(x), out.quant.codes)
    assert model.encode(audio(1, 80)).shape == (1, 1)  # shorter than a window: zero-padded


def test_code_centre_is_the_middle_of_what_each_code_reads():
    """Code k is labelled at ``code_centre + k * hop`` (unit metrics): the middle of the log-mel
    frames it reads, half a log-mel frame before the middle of its hop, not the middle itself."""
    torch.manual_seed(0)
    model = tiny_logmel().eval()
    hop, mel_hop = model.hop, model.mel_hop
    assert (hop, mel_hop, model.code_centre) == (80, 40, 20.0)
    per = hop // mel_hop
    k = 3
    # The log-mel frames are centred on f * mel_hop: an impulse at code k's centre falls midway
    # between its two frames and lights them equally (at the middle of its hop, k * hop + 40,
    # it would sit on frame 2k + 1's centre alone).
    wave = torch.zeros(1, 8 * hop)
    wave[0, int(model.code_centre) + k * hop] = 1.0
    mel = model.encoder.mel(wave)[0].exp().sum(0)  # energy per frame
    assert mel.argmax() in (per * k, per * k + 1)
    torch.testing.assert_close(mel[per * k], mel[per * k + 1])
    # The conv stack's output k reads the frames around 2k + 0.5 symmetrically.
    x = torch.randn(1, model.encoder.n_mels, 16, requires_grad=True)
    model.encoder.frames(x)[0, :, k].sum().backward()
    used = (x.grad[0].abs().sum(0) > 0).nonzero().flatten()
    assert (used.min() + used.max()) / 2 == per * k + (per - 1) / 2
    assert tiny(strides=[2, 2]).code_centre == 1.5  # the waveform encoder: samples 0 .. 3


def test_logmel_model_trains_every_parameter_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = tiny_logmel()
    model(audio(2, 160), torch.tensor([1, 2])).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    model.eval()
    save_checkpoint(tmp_path / "ckpt", model, step=1)
    loaded = load_model(tmp_path / "ckpt").eval()
    x = audio(2, 160)
    assert torch.equal(loaded.encode(x), model.encode(x))  # band statistics travel too


def test_logmel_needs_a_sample_rate_and_known_features():
    with pytest.raises(ValueError, match="sample_rate"):
        tiny(features="logmel")
    with pytest.raises(ValueError, match="features must be one of"):
        tiny(features="mfcc")
    with pytest.raises(ValueError, match="mel_hop must be a positive int"):
        tiny(features="logmel", sample_rate=8000, mel_hop=0)


def test_time_jitter_copies_only_from_neighbours_and_only_while_training():
    torch.manual_seed(0)
    z = torch.arange(2 * 3 * 50, dtype=torch.float).reshape(2, 3, 50)
    out = time_jitter(z, 0.5)
    src = out[:, 0] - z[:, 0, :1]  # the time index each step copied (channel 0 holds t + const)
    shift = src - torch.arange(50)
    assert set(shift.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert 0.3 < (shift != 0).float().mean() < 0.7  # about half the steps moved
    assert torch.equal(out[:, 1] - out[:, 0], z[:, 1] - z[:, 0])  # whole vectors move together
    assert torch.equal(time_jitter(z, 0.0), z)
    with pytest.raises(ValueError, match="jitter"):
        time_jitter(z, 1.5)
    # in the model: the decoder reads jittered vectors in training mode only
    model = tiny(jitter=1.0, quantizer={"kmeans_init": True})  # codes that differ in time
    seen = []
    model.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x, spk = audio(1, 64), torch.tensor([0])
    torch.manual_seed(1)
    out = model(x, spk)
    torch.manual_seed(1)
    assert torch.equal(seen[-1], time_jitter(out.quant.quantized, 1.0))
    assert not torch.equal(seen[-1], out.quant.quantized)
    model.eval()
    out = model(x, spk)
    assert torch.equal(seen[-1], out.quant.quantized)
