"""The audio VQ-VAE's log-mel encoder and its input normalisations.

:class:`LogMelEncoder` reads mu-law audio, takes log-mel frames and runs the shared
:class:`vqkit.nn.Encoder` (dims=1) over them; its log-mel is also the mel decoder's target.
The frames are normalised per band by batch statistics, per utterance
(:class:`InstanceMelNorm`) or per speaker (:func:`mel_stats`), and can be warped along the mel
axis while training (:func:`warp_mel`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vqkit.audio import LogMel
from vqkit.nn.conv import Stride
from vqkit.nn.encoder import Encoder

MEL_NORMS = ("batch", "instance", "speaker")  # how the log-mel encoder normalises its input


class LogMelEncoder(nn.Module):
    """Log-mel front-end, then the shared :class:`vqkit.nn.Encoder` (dims=1) over the frames.

    Reads the same ``(B, 1, T)`` companded waveform in ``[-1, 1]`` as the waveform encoder,
    expands the mu-law, takes log-mel frames every ``mel_hop`` samples (window 25 ms), normalises
    each band (batch statistics while training, running ones after: ``BatchNorm1d`` without
    affine), and downsamples the frames further by ``strides``. The total hop is ``mel_hop *
    prod(strides)``. Spectral frames make codes follow phones much more closely than strided
    convolutions over samples do in short training.

    Args:
        sample_rate: rate of the audio (for the mel filters).
        out_channels: latent channels D.
        mel_hop: samples per log-mel frame.
        n_mels: mel bands.
        classes: mu-law classes of the audio (to undo the companding).
        hidden, strides, res_hidden, num_res_blocks: the :class:`~vqkit.nn.Encoder` over frames.
        norm: ``"batch"`` (per band, batch statistics; the default) or ``"instance"`` (per band
            and per utterance: mean and variance over the utterance's frames, padding left out,
            which removes much of a speaker's spectral colouring from what the codes see; see
            :class:`InstanceMelNorm`), or ``"speaker"`` (per band, with each speaker's mean
            and deviation over all their frames: the speaker's average colouring goes, the
            digit- or phone-dependent part stays; set the statistics of the training speakers
            with :meth:`AudioVQVAE.set_speaker_stats` before training, and give those of a new
            speaker, from :meth:`AudioVQVAE.speaker_stats`, to ``encode(..., stats=)``).
        num_speakers: training speakers (``norm="speaker"``).
        cepstra: when positive, every log-mel frame (the encoder's input and the mel decoder's
            target alike) is smoothed to its first ``cepstra`` cepstral coefficients (DCT-II,
            orthonormal; 13 is the MFCCs' envelope): the codes need not carry the harmonics of
            the pitch. 0: the log-mel as it is.
        input_cepstra: when positive, only what the conv stack reads is smoothed to its first
            ``input_cepstra`` cepstral coefficients (before the normalisation): the codes see
            the spectral envelope without the pitch's harmonics, while the mel decoder's
            target keeps them, so the decoder draws the harmonics from the speaker embedding
            (the target voice's pitch range) instead of copying the source's. 0: off.
        warp: while training, stretch the mel axis of the encoder's input by a random factor in
            ``[1 - warp, 1 + warp]`` per utterance (vocal-tract-length perturbation on the mel
            bins; 0: off). The decoder's target is never warped.
        tilt: while training, add a random spectral tilt and gain to the encoder's input, each
            drawn per utterance in ``[-tilt, tilt]`` nats (:func:`tilt_mel`; a change of voice
            colour and loudness, not of content; 0: off). The decoder's target stays as it is.
    """

    def __init__(
        self,
        sample_rate: int,
        out_channels: int,
        *,
        mel_hop: int,
        n_mels: int = 40,
        classes: int = 256,
        hidden: int = 128,
        strides: Sequence[Stride] = (2,),
        res_hidden: int = 32,
        num_res_blocks: int = 2,
        norm: str = "batch",
        warp: float = 0.0,
        num_speakers: int | None = None,
        cepstra: int = 0,
        tilt: float = 0.0,
        input_cepstra: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(mel_hop, int) or mel_hop < 1:
            raise ValueError(f"mel_hop must be a positive int (samples per frame), got {mel_hop!r}")
        if norm not in MEL_NORMS:
            raise ValueError(f"mel_norm must be one of {MEL_NORMS}, got {norm!r}")
        if not 0.0 <= warp < 1.0:
            raise ValueError(f"mel_warp must lie in [0, 1), got {warp}")
        self.mel = LogMel(
            sample_rate, n_mels=n_mels, hop_ms=1000.0 * mel_hop / sample_rate, pad_mode="constant"
        )
        if not tilt >= 0.0:
            raise ValueError(f"mel_tilt must be >= 0 (nats; 0: off), got {tilt}")
        self.mel_hop, self.n_mels, self.warp, self.tilt = mel_hop, n_mels, warp, float(tilt)
        if not 0 <= cepstra <= n_mels:
            raise ValueError(f"mel_cepstra must lie in [0, n_mels={n_mels}], got {cepstra}")
        if not 0 <= input_cepstra <= n_mels:
            raise ValueError(
                f"encoder_cepstra must lie in [0, n_mels={n_mels}], got {input_cepstra}"
            )
        self.cepstra, self.input_cepstra = cepstra, input_cepstra
        if cepstra:
            self.register_buffer("smooth", _envelope_projection(cepstra, n_mels), persistent=False)
        if input_cepstra:
            self.register_buffer(
                "input_smooth", _envelope_projection(input_cepstra, n_mels), persistent=False
            )
        self.mu = classes - 1  # the companding of MuLawEncode / MuLawDecode
        self.norm_kind = norm
        if norm == "batch":
            self.norm = nn.BatchNorm1d(n_mels, affine=False)
        elif norm == "instance":
            self.norm = InstanceMelNorm()
        else:
            if not num_speakers:
                raise ValueError("mel_norm='speaker' needs num_speakers")
            self.norm = None
            self.register_buffer("speaker_mean", torch.zeros(num_speakers, n_mels))
            self.register_buffer("speaker_std", torch.ones(num_speakers, n_mels))
        self.frames = Encoder(
            1,
            n_mels,
            hidden,
            out_channels,
            strides=strides,
            res_hidden=res_hidden,
            num_res_blocks=num_res_blocks,
        )
        self.factor = (mel_hop * math.prod(self.frames.factor),)

    def logmel(self, x: Tensor) -> Tensor:
        """``(B, 1, T)`` companded waveform -> ``(B, n_mels, T / mel_hop)`` log-mel (float32);
        frame f is centred on sample ``f * mel_hop``."""
        import torchaudio.functional as AF  # what MuLawDecode uses; it takes float levels too

        wav = AF.mu_law_decoding((x[:, 0].float() + 1.0) * (self.mu / 2.0), self.mu + 1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            mel = self.mel(wav)[..., : wav.shape[-1] // self.mel.hop]
            if self.cepstra:  # keep the spectral envelope, drop the harmonics' fine detail
                mel = torch.einsum("mn,bnf->bmf", self.smooth, mel)
            return mel

    def encode_frames(
        self,
        mel: Tensor,
        stats: tuple[Tensor, Tensor] | None = None,
        frame_mask: Tensor | None = None,
    ) -> Tensor:
        """``(B, n_mels, F)`` log-mel -> ``(B, D, F / prod(strides))`` latents.

        ``stats``: ``(mean, std)``, each ``(B, n_mels)`` or ``(n_mels,)``: the speaker
        statistics of ``norm="speaker"`` (required there, ignored otherwise). ``frame_mask``:
        ``(B, F)`` bool, frames set to 0 (the normalised mean) before the conv stack (masked
        prediction); None: none.
        """
        if self.training and self.warp > 0:
            mel = warp_mel(mel, self.warp)
        if self.training and self.tilt > 0:
            mel = tilt_mel(mel, self.tilt)
        x = self.normalise(mel, stats)
        if frame_mask is not None:
            x = x.masked_fill(frame_mask.unsqueeze(1), 0.0)
        return self.frames(x.to(self.frames.net[-1].weight.dtype))

    def normalise(self, mel: Tensor, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``(B, n_mels, F)`` log-mel -> the same normalised as the conv stack reads it (``stats``
        as in :meth:`encode_frames`), smoothed first to ``input_cepstra`` coefficients if set.
        The speaker statistics stay those of the unsmoothed log-mel: measured on the smoothed
        one instead, the ``builtin`` conversions kept 2.2 points fewer of the frames' phones
        (docs/voice_conversion.md, run bstat)."""
        if self.input_cepstra:
            mel = torch.einsum("mn,bnf->bmf", self.input_smooth.to(mel.dtype), mel)
        if self.norm is None:
            if stats is None:
                raise ValueError(
                    "mel_norm='speaker' needs the speaker's statistics: pass speaker ids of "
                    "training speakers or stats=model.speaker_stats(utterances)"
                )
            mean, std = (s.to(mel.dtype).expand(mel.shape[0], -1).unsqueeze(-1) for s in stats)
            return (mel - mean) / std
        return self.norm(mel)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1, T)`` companded waveform -> ``(B, D, T / (mel_hop * prod(strides)))``."""
        return self.encode_frames(self.logmel(x))


def _envelope_projection(cepstra: int, n_mels: int) -> Tensor:
    """``(n_mels, n_mels)`` projection onto the first ``cepstra`` DCT-II (orthonormal) bases:
    a log-mel frame's spectral envelope."""
    import torchaudio.functional as AF

    dct = AF.create_dct(cepstra, n_mels, norm="ortho")  # (n_mels, cepstra)
    return dct @ dct.t()


def mel_stats(mels: Sequence[Tensor], floor: float = math.log(1e-5)) -> tuple[Tensor, Tensor]:
    """Per-band mean and deviation ``(n_mels,)`` over all frames of ``(n_mels, F_i)`` log-mels
    that are not digital silence (every band at the log floor)."""
    frames = torch.cat([m.reshape(m.shape[-2], -1) for m in mels], dim=1)  # (n_mels, sum F)
    frames = frames[:, frames.amax(0) > floor + 1.0]
    return frames.mean(1), frames.std(1).clamp_min(1e-3)


class InstanceMelNorm(nn.Module):
    """Per-utterance, per-band normalisation of log-mel ``(B, n_mels, F)``, over the frames
    that are not digital silence (padding: every band at the log floor), so that a crop padded
    with silence while training gets the same statistics as the whole utterance later."""

    def __init__(self, floor: float = math.log(1e-5), eps: float = 1e-5) -> None:
        super().__init__()
        self.floor, self.eps = floor, eps

    def forward(self, mel: Tensor) -> Tensor:
        keep = (mel.amax(1, keepdim=True) > self.floor + 1.0).to(mel.dtype)  # (B, 1, F)
        count = keep.sum(-1, keepdim=True).clamp_min(1.0)
        mean = (mel * keep).sum(-1, keepdim=True) / count
        var = ((mel - mean).square() * keep).sum(-1, keepdim=True) / count
        return (mel - mean) / (var + self.eps).sqrt()


def warp_mel(mel: Tensor, warp: float) -> Tensor:
    """Stretch ``(B, n_mels, F)`` along the mel axis by a random factor per item in
    ``[1 - warp, 1 + warp]`` (linear interpolation between bins, the top bin repeated)."""
    b, n, _ = mel.shape
    alpha = 1.0 + (torch.rand(b, 1, device=mel.device) * 2.0 - 1.0) * warp  # (B, 1)
    pos = (torch.arange(n, device=mel.device, dtype=mel.dtype)[None] / alpha).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo).unsqueeze(-1)  # (B, n, 1)
    gather = lambda idx: mel.gather(1, idx.unsqueeze(-1).expand_as(mel))  # noqa: E731
    return gather(lo) * (1.0 - frac) + gather(hi) * frac


def tilt_mel(mel: Tensor, tilt: float, floor: float = math.log(1e-5)) -> Tensor:
    """Add to ``(B, n_mels, F)`` log-mel a random gain and a random spectral tilt per item, each
    in ``[-tilt, tilt]`` nats (the tilt a line across the bands, from ``-a`` at the lowest to
    ``+a`` at the highest), on every frame but digital silence (padding stays at the floor)."""
    b, n, _ = mel.shape
    gain, slope = ((torch.rand(2, b, 1, 1, device=mel.device) * 2.0 - 1.0) * tilt).to(mel.dtype)
    line = torch.linspace(-1.0, 1.0, n, device=mel.device, dtype=mel.dtype)[None, :, None]
    keep = (mel.amax(1, keepdim=True) > floor + 1.0).to(mel.dtype)  # (B, 1, F)
    return mel + (gain + slope * line) * keep
