"""Vocoders from log-mel: Griffin-Lim keeps a sine's pitch; the WaveNet vocoder's conditioning
is aligned with the frames, and its cached sampler equals the naive one."""

import math

import pytest
import torch

from vqkit.models import build_model, griffinlim, wavenet_vocoder

HOP = 16


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def tiny_wavenet(**kwargs):
    torch.manual_seed(0)
    args = dict(sample_rate=8000, n_mels=8, mel_hop=HOP, residual_channels=6, layers_per_stack=3)
    return wavenet_vocoder(**{**args, **kwargs}).eval()


@pytest.mark.parametrize("freq", [300.0, 440.0, 1000.0, 2500.0])
def test_griffinlim_keeps_a_sines_frequency(freq):
    sr, n = 8000, 8192
    voc = griffinlim(sample_rate=sr, n_mels=80, mel_hop=64)
    wav = 0.5 * torch.sin(2 * math.pi * freq * torch.arange(n) / sr)[None]
    mel = voc.features(wav)[..., : n // 64]
    out = voc.render(mel)
    assert out.shape == (1, n) and out.abs().max() <= 1.0
    spectrum = torch.fft.rfft(out[0] * torch.hann_window(n)).abs()
    peak = spectrum.argmax().item() * sr / n
    # within one bin of the mel-spectrogram's STFT (n_fft 256: 31.25 Hz)
    assert abs(peak - freq) <= sr / 256, peak


def test_render_shapes_and_registry_rebuild():
    voc = tiny_wavenet()
    assert voc.render(torch.randn(2, 8, 3), seed=1).shape == (2, 3 * HOP)
    again = build_model(voc.config).eval()
    again.load_state_dict(voc.state_dict())
    mel = torch.randn(1, 8, 4)
    torch.testing.assert_close(again.render(mel, seed=3), voc.render(mel, seed=3))
    gl = build_model(griffinlim(sample_rate=8000, n_mels=8, mel_hop=HOP).config)
    assert gl.render(torch.randn(1, 8, 20)).shape == (1, 20 * HOP)


def test_conditioning_is_aligned_with_the_frames():
    """Changing frame i changes teacher-forced logits from the first sample whose nearest frame
    is i (inside frame i's analysis window) on, and never before; past the samples nearest to
    frame i, only the WaveNet's receptive field carries the change."""
    voc = tiny_wavenet()
    frames, i = 6, 3
    mel = torch.randn(1, 8, frames)
    audio = torch.randint(0, 256, (1, frames * HOP))
    base = voc(mel, audio)
    changed = mel.clone()
    changed[..., i] += 3.0
    diff = (voc(changed, audio) - base).abs().amax(1)[0]  # (T,)
    first, last = i * HOP - HOP // 2, i * HOP + HOP // 2  # samples nearest to frame i
    window = voc.features.mel.spectrogram.win_length // 2
    assert first >= i * HOP - window and last <= i * HOP + window  # they lie in its window
    assert diff[:first].max() == 0
    assert (diff[first:last] > 0).all()
    rf = voc.wavenet.receptive_field
    assert diff[last + rf - 1 :].max() == 0


def test_cached_and_naive_sampling_are_identical():
    voc = tiny_wavenet()
    mel = torch.randn(2, 8, 5)
    for temperature in (1.0, 0.0):
        fast = voc.generate(mel, temperature=temperature, seed=7)
        slow = voc.generate(mel, temperature=temperature, seed=7, cached=False)
        assert torch.equal(fast, slow)


def test_teacher_forcing_loss_on_true_logmel_trains():
    voc = tiny_wavenet()
    sr = 8000
    wav = 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(4 * HOP * 8) / sr)[None]
    import torchaudio.functional as AF

    audio = AF.mu_law_encoding(wav, 256)
    voc.fit_norm([voc.logmel(audio)[0]])
    assert voc.logmel(audio).shape == (1, 8, audio.shape[1] // HOP)
    opt = torch.optim.Adam(voc.parameters(), lr=1e-2)
    first = voc.loss(audio).item()
    voc.train()
    for _ in range(30):
        loss = voc.loss(audio)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_render_many_equals_each_alone():
    """One padded batch of log-mels of different lengths renders what each renders alone (the
    WaveNet with argmax sampling; Griffin-Lim renders each alone)."""
    voc = tiny_wavenet()
    mels = [torch.randn(8, n, generator=torch.Generator().manual_seed(n)) for n in (2, 5, 3)]
    many = voc.render_many(mels, temperature=0.0)
    for m, w in zip(mels, many):
        assert w.shape == (m.shape[-1] * HOP,)
        torch.testing.assert_close(w, voc.render(m[None], temperature=0.0)[0], rtol=0, atol=0)
    gl = griffinlim(sample_rate=8000, n_mels=8, mel_hop=HOP)
    mels = [torch.randn(8, n, generator=torch.Generator().manual_seed(n)) for n in (20, 50, 30)]
    for m, w in zip(mels, gl.render_many(mels)):
        assert torch.equal(w, gl.render(m[None])[0])


def test_griffinlim_shows_progress_over_rows_and_renders_the_same(capsys):
    voc = griffinlim(sample_rate=8000, n_mels=40, mel_hop=64)
    mel = torch.randn(11, 40, 12, generator=torch.Generator().manual_seed(0)) * 0.5 - 3
    plain = voc.render(mel)
    assert torch.equal(voc.render(mel, progress="vocoder"), plain)  # rendered GL_ROWS at a time
    many = voc.render_many([mel[0], mel[1, :, :7]], progress="vocoder alone")
    assert torch.equal(many[0], plain[0]) and many[1].shape == (7 * 64,)
    err = capsys.readouterr().err
    assert "vocoder:   0%" in err and "/11 " in err and "vocoder alone:   0%" in err and "/2 " in err



@pytest.mark.parametrize("frames", [7, 13, 125])
def test_griffinlim_renders_a_lone_row_as_it_renders_that_row_in_a_batch(frames):
    voc = griffinlim(sample_rate=8000, n_mels=40, mel_hop=64)
    mel = torch.randn(5, 40, frames, generator=torch.Generator().manual_seed(frames)) * 0.5 - 3
    batch = voc.render(mel)
    for i in range(len(mel)):
        assert torch.equal(voc.render(mel[i : i + 1])[0], batch[i])
