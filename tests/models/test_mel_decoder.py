"""The mel decoder of the audio VQ-VAE: lengths, speaker conditioning, gradients, rebuilding."""

import pytest
import torch
import torch.nn.functional as F

from vqkit.models import AudioVQVAE, MelDecoder, build_model, vqvae_audio
from vqkit.models.vqvae_audio import IGNORE

TINY = dict(
    decoder="mel",
    features="logmel",
    sample_rate=8000,
    mel_hop=16,
    n_mels=8,
    strides=[2],
    hidden=8,
    res_hidden=4,
    num_res_blocks=1,
    decoder_res_blocks=2,
    num_codes=8,
    code_dim=4,
)


def tiny(**kwargs) -> AudioVQVAE:
    return vqvae_audio(**{"num_speakers": 3, **TINY, **kwargs})


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("strides", [[2], [2, 2], [1], [3]])
@pytest.mark.parametrize("codes", [1, 2, 5, 7])
def test_output_length_is_frames_per_code_times_codes(strides, codes):
    dec = MelDecoder(4, 8, strides=strides, hidden=8, res_hidden=4, num_speakers=2)
    factor = 1
    for s in strides:
        factor *= s
    assert dec(torch.randn(2, 4, codes), torch.tensor([0, 1])).shape == (2, 8, codes * factor)


@pytest.mark.parametrize("num_samples", [32, 64, 96, 160])
def test_model_output_matches_the_input_frames(num_samples):
    """For any length (a multiple of the hop) the prediction has the true log-mel's frames."""
    model = tiny()
    audio = torch.randint(0, 256, (2, num_samples))
    out = model(audio, torch.tensor([0, 2]))
    assert out.logits is None
    assert out.mel.shape == out.target_mel.shape == (2, 8, num_samples // 16)
    torch.testing.assert_close(out.recon_loss, (out.mel - out.target_mel).abs().mean())
    torch.testing.assert_close(out.loss, out.recon_loss + out.quant.loss)
    codes = model.encode(audio)
    assert codes.shape == (2, num_samples // 32)
    assert model.decode_mel(codes, 1).shape == (2, 8, num_samples // 16)


def test_speaker_changes_the_output_and_enters_every_layer():
    torch.manual_seed(0)
    model = tiny()
    for film in model.decoder.films:  # zero at initialisation: give them something
        torch.nn.init.normal_(film.weight)
    codes = model.encode(torch.randint(0, 256, (1, 64)))
    a, b = model.decode_mel(codes, 0), model.decode_mel(codes, 1)
    assert not torch.allclose(a, b)
    # conv + every residual block + each upsampling stage but the output one
    assert len(model.decoder.films) == 1 + 2


def test_mel_loss_gradient_reaches_encoder_quantizer_and_decoder():
    torch.manual_seed(0)
    model = tiny()  # codebook learned by its own loss term (no EMA): it gets a gradient
    model(torch.randint(0, 256, (2, 64)), torch.tensor([0, 1])).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        # FiLM weights start at zero, so the embedding gets no gradient on the first step
        if not name.startswith(("decoder.films", "decoder.speaker_embed")):
            assert p.grad.abs().sum() > 0, name
    assert model.decoder.films[0].bias.grad.abs().sum() > 0
    assert model.decoder.films[0].weight.grad.abs().sum() > 0
    # once the FiLM weights move, the speakers used get a gradient too (and only they)
    model.zero_grad()
    for film in model.decoder.films:
        torch.nn.init.normal_(film.weight)
    model(torch.randint(0, 256, (2, 64)), torch.tensor([0, 1])).loss.backward()
    grad = model.decoder.speaker_embed.weight.grad.abs().sum(1)
    assert grad[0] > 0 and grad[1] > 0 and grad[2] == 0


def test_recon_loss_alone_reaches_the_encoder_through_the_straight_through_path():
    torch.manual_seed(0)
    model = tiny()
    out = model(torch.randint(0, 256, (2, 64)), torch.tensor([0, 1]))
    out.recon_loss.backward()
    assert model.encoder.frames.net[0].conv.weight.grad.abs().sum() > 0
    assert model.quantizer.codebook.grad is None or model.quantizer.codebook.grad.abs().sum() == 0


def test_rebuilds_from_config_and_decode_needs_a_vocoder():
    torch.manual_seed(0)
    model = tiny(mel_norm="instance", mel_warp=0.1, mel_loss="l2").eval()
    rebuilt = build_model(model.config).eval()
    rebuilt.load_state_dict(model.state_dict())
    audio, spk = torch.randint(0, 256, (2, 64)), torch.tensor([0, 1])
    torch.testing.assert_close(rebuilt(audio, spk).mel, model(audio, spk).mel)
    with pytest.raises(ValueError, match="decode_mel"):
        model.decode(model.encode(audio), spk)
    with pytest.raises(ValueError, match="features='logmel'"):
        vqvae_audio(num_speakers=2, decoder="mel")


def test_speaker_adversary_reverses_its_gradient_into_the_encoder():
    from vqkit.models.vqvae_audio import _ReverseGrad

    x = torch.randn(3, requires_grad=True)
    _ReverseGrad.apply(x).sum().backward()
    torch.testing.assert_close(x.grad, -torch.ones(3))
    torch.manual_seed(0)
    model = tiny(adversary=0.5)
    out = model(torch.randint(0, 256, (2, 64)), torch.tensor([0, 1]))
    torch.testing.assert_close(out.loss, out.recon_loss + out.quant.loss + 0.5 * out.adversary_loss)
    out.adversary_loss.backward()
    assert model.adversary.head.weight.grad.abs().sum() > 0
    assert model.encoder.frames.net[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.decoder.parameters())


def test_speaker_norm_uses_each_speakers_statistics():
    torch.manual_seed(0)
    model = tiny(mel_norm="speaker")
    utts = [torch.randint(0, 256, (96,)) for _ in range(6)]
    ids = [0, 0, 1, 1, 2, 2]
    model.set_speaker_stats(utts, ids)
    mean, std = model.speaker_stats(utts[2:4])
    torch.testing.assert_close(model.encoder.speaker_mean[1], mean)
    torch.testing.assert_close(model.encoder.speaker_std[1], std)
    model.eval()
    x = torch.stack(utts[2:4])
    torch.testing.assert_close(model.encode(x, 1), model.encode(x, stats=(mean, std)))
    out = model(x, torch.tensor([1, 1]))
    assert out.mel.shape == (2, 8, 6)
    with pytest.raises(ValueError, match="statistics"):
        model.encode(x)


def test_mel_cepstra_keeps_the_envelope_for_encoder_and_target():
    import torchaudio.functional as AF

    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 96))
    plain, smooth = tiny(), tiny(mel_cepstra=3)
    smooth.load_state_dict(plain.state_dict())  # the projection is no weight
    raw, got = plain.logmel(x), smooth.logmel(x)  # (B, n_mels, F)
    dct = AF.create_dct(8, 8, norm="ortho")  # (n_mels, all 8 coefficients)
    cep_raw, cep = torch.einsum("bmf,mc->bcf", raw, dct), torch.einsum("bmf,mc->bcf", got, dct)
    torch.testing.assert_close(cep[:, :3], cep_raw[:, :3], atol=1e-4, rtol=1e-4)  # envelope kept
    assert cep[:, 3:].abs().max() < 1e-4 < cep_raw[:, 3:].abs().max()  # the rest gone
    out = smooth(x, torch.tensor([0, 1]))
    torch.testing.assert_close(out.target_mel, got)  # the decoder's target is smoothed too
    with pytest.raises(ValueError, match="mel_cepstra"):
        tiny(mel_cepstra=9)


def test_encoder_cepstra_smooth_only_what_the_encoder_reads():
    import torchaudio.functional as AF

    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 96))
    plain, smooth = tiny(), tiny(encoder_cepstra=3)
    smooth.load_state_dict(plain.state_dict())  # the projection is no weight
    plain.eval(), smooth.eval()
    raw = plain.logmel(x)
    torch.testing.assert_close(smooth.logmel(x), raw)  # the log-mel itself is not smoothed
    dct = AF.create_dct(8, 8, norm="ortho")  # (n_mels, all 8 coefficients)
    envelope = torch.einsum("mc,nc,bnf->bmf", dct[:, :3], dct[:, :3], raw)
    # what the conv stack reads: the plain encoder's normalisation of the 3-coefficient envelope
    torch.testing.assert_close(
        smooth.encoder.normalise(raw), plain.encoder.normalise(envelope), atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(smooth.encoder.normalise(raw), plain.encoder.normalise(raw))
    out = smooth(x, torch.tensor([0, 1]))
    torch.testing.assert_close(out.target_mel, raw)  # the decoder's target keeps the harmonics
    with pytest.raises(ValueError, match="encoder_cepstra"):
        tiny(encoder_cepstra=9)


def test_cycle_term_decodes_in_another_voice_and_reencodes_to_the_codes():
    torch.manual_seed(0)
    model = tiny(cycle=0.5, mel_norm="speaker")
    model.set_speaker_stats([torch.randint(0, 256, (96,)) for _ in range(3)], [0, 1, 2])
    audio, spk = torch.randint(0, 256, (4, 64)), torch.tensor([0, 1, 2, 0])
    out = model(audio, spk)
    assert out.cycle_loss is not None and out.cycle_loss > 0
    torch.testing.assert_close(out.loss, out.recon_loss + out.quant.loss + 0.5 * out.cycle_loss)
    # by hand: the decoder in the other voice, then the encoder with that voice's statistics
    z_q, other = out.quant.quantized.detach(), torch.tensor([1, 2, 0, 2])
    stats = (model.encoder.speaker_mean[other], model.encoder.speaker_std[other])
    want = (model.encoder.encode_frames(model.decoder(z_q, other), stats) - z_q).square().mean()
    torch.testing.assert_close(model.cycle_loss(z_q, spk, other), want)
    # the other speaker drawn at random is never the source's own, and all others occur
    seen = []
    hook = model.decoder.speaker_embed.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    for _ in range(20):
        model.cycle_loss(z_q, spk)
    hook.remove()
    drawn = torch.stack(seen)  # (20, B)
    assert (drawn != spk).all()
    assert {int(s) for s in drawn[:, 0]} == {1, 2}
    # off at eval and without speakers; the plain loss is unchanged there
    model.eval()
    assert model(audio, spk).cycle_loss is None
    out = model(audio, spk)
    torch.testing.assert_close(out.loss, out.recon_loss + out.quant.loss)


def test_cycle_gradient_reaches_decoder_and_encoder_never_the_codebook():
    torch.manual_seed(0)
    model = tiny(cycle=1.0)  # codebook learned by its own loss term: it could get a gradient
    for film in model.decoder.films:
        torch.nn.init.normal_(film.weight)
    z_q = model.quantizer.decode(torch.randint(0, 8, (2, 4))).requires_grad_(True)
    model.cycle_loss(z_q, torch.tensor([0, 1]), torch.tensor([2, 2])).backward()
    assert z_q.grad is None  # a fixed input and target
    assert model.quantizer.codebook.grad is None or model.quantizer.codebook.grad.abs().sum() == 0
    assert model.encoder.frames.net[0].conv.weight.grad.abs().sum() > 0
    assert model.decoder.layers[0].weight.grad.abs().sum() > 0
    grad = model.decoder.speaker_embed.weight.grad.abs().sum(1)
    assert grad[2] > 0 and grad[0] == 0 and grad[1] == 0  # only the voice it decoded in


def test_cycle_needs_the_mel_decoder_and_two_speakers():
    with pytest.raises(ValueError, match="cycle must be >= 0"):
        tiny(cycle=-1.0)
    with pytest.raises(ValueError, match="cycle needs the mel decoder"):
        tiny(cycle=1.0, num_speakers=1)
    with pytest.raises(ValueError, match="cycle needs the mel decoder"):
        tiny(cycle=1.0, decoder="wavenet", features="waveform", layers_per_stack=2)


def test_mel_tilt_changes_gain_and_tilt_of_the_encoder_input_only_while_training():
    from vqkit.models.vqvae_audio import tilt_mel

    torch.manual_seed(0)
    mel = torch.randn(3, 8, 10)
    mel[:, :, 7:] = torch.log(torch.tensor(1e-5))  # padding: digital silence
    got = tilt_mel(mel, 0.5)
    assert got.shape == mel.shape
    torch.testing.assert_close(got[:, :, 7:], mel[:, :, 7:])  # silence stays at the floor
    delta = got[:, :, :7] - mel[:, :, :7]  # (B, n_mels, F): one line across the bands per item
    torch.testing.assert_close(delta, delta[:, :, :1].expand_as(delta))  # the same every frame
    line = delta[:, :, 0]
    torch.testing.assert_close(
        line[:, 2:] - 2 * line[:, 1:-1] + line[:, :-2], torch.zeros(3, 6), atol=1e-5, rtol=0
    )  # linear in the band
    gain, slope = line.mean(1), (line[:, -1] - line[:, 0]) / 2
    assert (gain.abs() <= 0.5).all() and (slope.abs() <= 0.5).all()
    assert not torch.allclose(line[0], line[1])  # drawn per utterance
    # in the model: the encoder's input only, while training; the target stays true
    audio, spk = torch.randint(0, 256, (2, 64)), torch.tensor([0, 1])

    def conv_inputs(tilt):  # what the conv stack reads: eval, eval, train
        model = tiny(mel_tilt=tilt, mel_norm="speaker")  # no batch statistics to differ
        out = model(audio, spk)
        torch.testing.assert_close(out.target_mel, model.logmel(audio))  # the target is true
        seen = []
        hook = model.encoder.frames.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        model.eval()
        model(audio, spk)
        model(audio, spk)
        model.train()
        model(audio, spk)
        hook.remove()
        return seen

    untilted, tilted = conv_inputs(0.0), conv_inputs(0.5)
    torch.testing.assert_close(untilted[0], untilted[2])
    torch.testing.assert_close(tilted[0], untilted[0])  # off at eval
    torch.testing.assert_close(tilted[0], tilted[1])
    assert not torch.allclose(tilted[0], tilted[2])  # on while training
    with pytest.raises(ValueError, match="mel_tilt"):
        tiny(mel_tilt=-0.1)


# --- the pseudo-label head (HuBERT-style targets) -----------------------------------------------


def plain(**kwargs) -> AudioVQVAE:
    """:func:`tiny` seeded, its codebook a parameter learned by its loss term (no EMA, no
    k-means start), so that a gradient into it would show."""
    torch.manual_seed(0)
    quantizer = {"ema": False, "kmeans_init": False, "restart_after": None}
    return tiny(quantizer=quantizer, **kwargs)


def pl_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 128), generator=g)  # 4 codes of 32 samples each
    return x, torch.tensor([0, 2]), torch.randint(0, 5, (2, 4), generator=g)


def test_off_is_todays_model_and_loss_bit_for_bit():
    x, spk, targets = pl_batch()
    today, off = plain(), plain(pseudo_label=0.0, pseudo_label_codes=5)
    assert off.pseudo_label_head is None
    a, b = today.state_dict(), off.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(3)
    ref = today(x, spk)
    torch.manual_seed(3)
    out = off(x, spk, targets)  # targets are ignored without a head
    assert out.pseudo_label_loss is None
    assert torch.equal(out.loss, ref.loss) and torch.equal(out.mel, ref.mel)


@pytest.mark.parametrize("where", ["latents", "quantized"])
def test_head_loss_and_where_its_gradient_goes(where):
    x, spk, targets = pl_batch()
    model = plain(pseudo_label=0.7, pseudo_label_codes=5, pseudo_label_input=where)
    out = model(x, spk, targets)
    assert out.pseudo_label_loss is not None and out.pseudo_label_loss > 0
    torch.testing.assert_close(
        out.loss, out.recon_loss + out.quant.loss + 0.7 * out.pseudo_label_loss
    )
    model.zero_grad()
    out.pseudo_label_loss.backward()
    assert model.pseudo_label_head.weight.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in model.encoder.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.decoder.parameters())
    # the codebook: none, or exact zeros (the lookup writes its gradient of the codebook loss)
    assert all(p.grad is None or not p.grad.any() for p in model.quantizer.parameters())


@pytest.mark.parametrize("where", ["latents", "quantized"])
def test_head_gradient_into_the_latents_is_exact(where):
    # latents: d CE(head(z)) / dz; quantized: the same taken at the quantised vectors and passed
    # straight through to z (the codebook gets none of it).
    x, spk, targets = pl_batch()
    model = plain(pseudo_label=1.0, pseudo_label_codes=5, pseudo_label_input=where)
    z = torch.randn(2, 4, 4, requires_grad=True)
    quant = model.quantizer(z)
    model.pseudo_label_loss(z, quant.quantized, targets).backward()
    at = (z if where == "latents" else quant.quantized).detach().requires_grad_(True)
    head = model.pseudo_label_head
    F.cross_entropy(F.conv1d(at, head.weight, head.bias), targets).backward()
    torch.testing.assert_close(z.grad, at.grad, rtol=0, atol=1e-7)
    grad = model.quantizer.codebook.grad
    assert grad is None or not grad.any()


def test_ignored_frames_are_left_out_and_all_ignored_gives_zero():
    model = plain(pseudo_label=1.0, pseudo_label_codes=5)
    z = torch.randn(2, 4, 4)
    targets = torch.tensor([[1, 2, IGNORE, IGNORE], [0, IGNORE, 4, 3]])
    logits = model.pseudo_label_head(z)
    keep = targets != IGNORE
    want = F.cross_entropy(logits.transpose(1, 2)[keep], targets[keep])
    torch.testing.assert_close(model.pseudo_label_loss(z, z, targets), want)
    none = torch.full((2, 4), IGNORE)
    assert model.pseudo_label_loss(z, z, none).item() == 0.0
    with pytest.raises(ValueError, match="targets"):
        model.pseudo_label_loss(z, z, targets[:, :3])


def test_several_label_sets_each_get_their_own_outputs_and_the_loss_is_their_mean():
    # sets=3: the head's outputs are 3 blocks of 5 classes, block j scored on targets[..., j];
    # the loss is the mean of the three sets' cross-entropies (no frame ignored) and set j's
    # gradient reaches only block j of the head.
    model = plain(pseudo_label=1.0, pseudo_label_codes=5, pseudo_label_sets=3)
    head = model.pseudo_label_head
    assert head.out_channels == 15
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 4, 4)
    targets = torch.randint(0, 5, (2, 4, 3), generator=g)
    logits = head(z)
    each = [F.cross_entropy(logits[:, 5 * j : 5 * j + 5], targets[..., j]) for j in range(3)]
    torch.testing.assert_close(model.pseudo_label_loss(z, z, targets), sum(each) / 3)
    only = targets.clone()
    only[..., 1:] = IGNORE  # set 0 alone: the other blocks get no gradient
    model.zero_grad()
    model.pseudo_label_loss(z, z, only).backward()
    assert head.weight.grad[:5].abs().sum() > 0 and not head.weight.grad[5:].any()
    with pytest.raises(ValueError, match="sets"):
        model.pseudo_label_loss(z, z, targets[..., 0])  # (B, T') for 3 sets
    with pytest.raises(ValueError, match="pseudo_label_sets must be >= 1"):
        plain(pseudo_label=1.0, pseudo_label_sets=0)
    # the forward pass takes (B, T', sets) targets, the masked pass too
    x, spk, _ = pl_batch()
    three = torch.randint(0, 5, (2, 4, 3), generator=g)
    assert model(x, spk, three).pseudo_label_loss > 0
    masked = plain(pseudo_label=1.0, pseudo_label_codes=5, pseudo_label_sets=3,
                   pseudo_label_mask=1.0)  # fmt: skip
    zeros = torch.zeros(2, 8, 8)
    lg = masked.pseudo_label_head(masked.encoder.frames(zeros))
    want = sum(F.cross_entropy(lg[:, 5 * j : 5 * j + 5], three[..., j]) for j in range(3)) / 3
    torch.testing.assert_close(masked(x, spk, three).pseudo_label_loss, want)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="pseudo_label must be >= 0"):
        plain(pseudo_label=-1.0)
    with pytest.raises(ValueError, match="pseudo_label_codes"):
        plain(pseudo_label=1.0, pseudo_label_codes=1)
    with pytest.raises(ValueError, match="pseudo_label_input"):
        plain(pseudo_label=1.0, pseudo_label_input="codes")


def test_span_mask_runs():
    from vqkit.models.vqvae_audio import span_mask

    torch.manual_seed(0)
    m = span_mask((500, 40), 0.1, 3)
    assert m.shape == (500, 40) and m.dtype == torch.bool
    assert 0.2 < m.float().mean() < 0.3  # 1 - 0.9^3 = 0.271 of the steps
    assert span_mask((2, 5), 1.0, 2).all() and not span_mask((2, 5), 0.0, 2).any()
    # every masked run, but one cut by the end, is at least `span` long
    for row in m:
        runs = "".join("1" if v else "0" for v in row.tolist()).strip("0").split("0")
        assert all(len(r) >= 3 for r in runs if r) or row[-1]


def test_masked_prediction_reads_a_masked_pass_and_scores_masked_frames():
    x, spk, targets = pl_batch()
    model = plain(pseudo_label=1.0, pseudo_label_codes=5, pseudo_label_mask=1.0)
    out = model(x, spk, targets)  # every frame masked: the second pass reads zeros
    zeros = torch.zeros(2, 8, 8)  # (B, n_mels, frames): 2 frames per code
    want = F.cross_entropy(model.pseudo_label_head(model.encoder.frames(zeros)), targets)
    torch.testing.assert_close(out.pseudo_label_loss, want)
    model.zero_grad()
    out.pseudo_label_loss.backward()
    # the encoder learns from it (its first weights not, reading zeros; their bias does)
    assert model.encoder.frames.net[0].conv.bias.grad.abs().sum() > 0
    assert model.encoder.frames.net[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.decoder.parameters())
    model.eval()  # no mask out of training: the latents of the one pass
    with torch.no_grad():
        out = model(x, spk, targets)
        z = model.encoder(model.to_float(x))
        torch.testing.assert_close(out.pseudo_label_loss, model.pseudo_label_loss(z, z, targets))
    with pytest.raises(ValueError, match="pseudo_label_input='latents'"):
        plain(pseudo_label=1.0, pseudo_label_mask=0.5, pseudo_label_input="quantized")
    with pytest.raises(ValueError, match="pseudo_label_mask must lie"):
        plain(pseudo_label=1.0, pseudo_label_mask=1.5)


# ------------------------------------------------------------------ speaker in the last layers


def _films_on(model):
    torch.manual_seed(1)
    for film in model.decoder.films:  # zero at initialisation: give them something
        torch.nn.init.normal_(film.weight)


def test_speaker_layers_film_only_the_last_layers_and_the_first_read_the_codes_alone():
    model = tiny(decoder_speaker_layers=1)
    everywhere = tiny()
    assert len(everywhere.decoder.films) == 3 and len(model.decoder.films) == 1
    assert model.decoder.film_at == everywhere.decoder.film_at[-1:]
    _films_on(model)
    z = torch.randn(2, 4, 5)
    seen = {}
    hooks = [
        layer.register_forward_hook(lambda m, i, o, k=k: seen.setdefault(k, []).append(o))
        for k, layer in enumerate(model.decoder.layers)
    ]
    a, b = model.decoder(z, torch.tensor([0, 0])), model.decoder(z, torch.tensor([1, 1]))
    for h in hooks:
        h.remove()
    assert not torch.allclose(a, b)  # the speaker still changes the output
    first_filmed = model.decoder.film_at[0]
    for k, (x, y) in seen.items():  # every layer up to the filmed one: the same for both voices
        if k <= first_filmed:
            torch.testing.assert_close(x, y)
        else:
            assert not torch.allclose(x, y)


@pytest.mark.parametrize("bad", [0, 4, -1])
def test_speaker_layers_out_of_range_are_refused_with_the_range(bad):
    with pytest.raises(ValueError, match=r"speaker_layers must lie in \[1, 3\]"):
        tiny(decoder_speaker_layers=bad)


# ------------------------------------------------------------------ speaker de-normalised output


def _denorm_model(**kwargs):
    torch.manual_seed(0)
    model = tiny(mel_norm="speaker", mel_denorm=True, **kwargs)
    utts = [torch.randint(0, 256, (96,)) * (k + 1) // 3 for k in range(6)]
    model.set_speaker_stats(utts, [0, 0, 1, 1, 2, 2])
    return model


def test_mel_denorm_decodes_in_the_target_speakers_statistics():
    model = _denorm_model()
    _films_on(model)
    audio, spk = torch.randint(0, 256, (2, 64)), torch.tensor([0, 2])
    codes = model.encode(audio, spk)
    z_q = model.latents(codes)
    for target in (0, 1, 2):
        ids = torch.full((2,), target)
        mean, std = model.encoder.speaker_mean[target], model.encoder.speaker_std[target]
        want = model.decoder(z_q, ids) * std[:, None] + mean[:, None]
        torch.testing.assert_close(model.decode_mel(codes, target), want)
    # the training loss compares the de-normalised frames with the true log-mel
    out = model(audio, spk)
    torch.testing.assert_close(out.mel, model.mel_frames(out.quant.quantized, spk))
    torch.testing.assert_close(out.recon_loss, (out.mel - out.target_mel).abs().mean())


def test_mel_denorm_trains_the_decoder_never_the_statistics():
    model = _denorm_model()
    before = model.encoder.speaker_mean.clone(), model.encoder.speaker_std.clone()
    out = model(torch.randint(0, 256, (2, 64)), torch.tensor([0, 1]))
    out.recon_loss.backward()
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad)
    assert model.encoder.speaker_mean.grad is None  # statistics are buffers: never trained
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    torch.testing.assert_close((model.encoder.speaker_mean, model.encoder.speaker_std), before)


def test_mel_denorm_needs_speaker_statistics_and_the_mel_decoder():
    with pytest.raises(ValueError, match="mel_norm='speaker'"):
        tiny(mel_denorm=True)
    wavenet = dict(num_speakers=2, strides=[2, 2], hidden=8, res_hidden=4, num_codes=8,
                   code_dim=4, residual_channels=8, layers_per_stack=2)
    with pytest.raises(ValueError, match="mel_denorm is a setting of the mel decoder"):
        vqvae_audio(**wavenet, mel_denorm=True)
    with pytest.raises(ValueError, match="decoder_speaker_layers=1 is a setting of the mel"):
        vqvae_audio(**wavenet, decoder_speaker_layers=1)
