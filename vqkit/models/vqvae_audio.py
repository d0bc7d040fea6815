"""The audio VQ-VAE (van den Oord et al. 2017, section 4.3): strided conv encoder -> quantizer ->
a decoder conditioned on the codes and on a speaker: a WaveNet over samples (the paper), or a
mel decoder to log-mel frames (:class:`~vqkit.models.mel_decoder.MelDecoder`) that a vocoder
(:mod:`vqkit.models.vocoder`) renders.

Audio travels as 8-bit mu-law classes ``(B, T)`` int64 in ``[0, 256)`` everywhere: the encoder
reads them as floats in ``[-1, 1]`` (the companded waveform), the decoder predicts them. Voice
conversion is ``decode(encode(audio), other_speaker)``.

Example:
    >>> model = vqvae_audio(num_speakers=3, hidden=16, res_hidden=8, num_codes=16, code_dim=8,
    ...                     strides=[2, 2], residual_channels=8, layers_per_stack=3, stacks=1)
    >>> audio, speaker = torch.randint(0, 256, (2, 64)), torch.tensor([0, 2])
    >>> out = model(audio, speaker)
    >>> out.logits.shape, out.quant.codes.shape
    (torch.Size([2, 256, 64]), torch.Size([2, 16]))
    >>> model.decode(model.encode(audio), torch.tensor([1, 1])).shape  # both as speaker 1
    torch.Size([2, 64])
    >>> mel = vqvae_audio(num_speakers=3, decoder="mel", features="logmel", sample_rate=8000,
    ...                   mel_hop=16, strides=[2], hidden=16, res_hidden=8, code_dim=8)
    >>> out = mel(audio, speaker)  # L1 between predicted and true log-mel frames
    >>> mel.decode_mel(mel.encode(audio), torch.tensor([1, 1])).shape  # (B, n_mels, frames)
    torch.Size([2, 40, 4])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.models.logmel_encoder import (
    MEL_NORMS,
    InstanceMelNorm,
    LogMelEncoder,
    mel_stats,
    tilt_mel,
    warp_mel,
)
from vqkit.models.mel_decoder import MelDecoder
from vqkit.models.registry import register
from vqkit.models.vqvae import make_quantizer
from vqkit.models.wavenet_decoder import WaveNetDecoder, wavenet_decoder
from vqkit.nn.conv import Stride
from vqkit.nn.encoder import Encoder, check_sizes
from vqkit.quantize import QuantizerOutput

__all__ = [
    "MEL_NORMS",
    "AudioVQVAE",
    "AudioVQVAEOutput",
    "InstanceMelNorm",
    "LogMelEncoder",
    "SpeakerAdversary",
    "mel_stats",
    "span_mask",
    "tilt_mel",
    "time_jitter",
    "vqvae_audio",
    "warp_mel",
]


@dataclass
class AudioVQVAEOutput:
    """What :meth:`AudioVQVAE.forward` returns.

    Attributes:
        logits: ``(B, classes, T)`` teacher-forced logits; ``logits[:, :, t]`` predicts sample t
            (WaveNet decoder; None with the mel decoder).
        quant: the quantizer's output (codes ``(B, T / hop)``, loss terms, perplexity).
        recon_loss: WaveNet: mean cross-entropy in nats per sample; mel: mean L1 (or L2)
            between predicted and true log-mel (scalar).
        loss: ``recon_loss + quant.loss``, the quantity to minimise.
        mel: ``(B, n_mels, T / mel_hop)`` predicted log-mel (mel decoder; None otherwise).
        target_mel: the true log-mel of the input it was compared with (mel decoder).
        adversary_loss: cross-entropy of the speaker adversary on the latents (when the model
            has one and speakers were given); ``loss`` includes ``adversary * adversary_loss``.
        pseudo_label_loss: cross-entropy of the pseudo-label head (when the model has one and
            ``targets`` were given); ``loss`` includes ``pseudo_label * pseudo_label_loss``.
        cycle_loss: the speaker-swap cycle term (:meth:`AudioVQVAE.cycle_loss`; while training,
            when the model has one and speakers were given); ``loss`` includes
            ``cycle * cycle_loss``.
    """

    logits: Tensor | None
    quant: QuantizerOutput
    recon_loss: Tensor
    loss: Tensor
    mel: Tensor | None = None
    target_mel: Tensor | None = None
    adversary_loss: Tensor | None = None
    pseudo_label_loss: Tensor | None = None
    cycle_loss: Tensor | None = None


FEATURES = ("waveform", "logmel")  # what the audio encoder reads
DECODERS = ("wavenet", "mel")  # what it decodes to: mu-law samples, or log-mel frames
MEL_LOSSES = ("l1", "l2")
PSEUDO_LABEL_INPUTS = ("latents", "quantized")  # what the pseudo-label head reads
IGNORE = -100  # a target frame with no pseudo-label (padding): left out of the head's loss


class _ReverseGrad(torch.autograd.Function):
    """Identity forward, negated gradient backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return -grad


class SpeakerAdversary(nn.Module):
    """Predicts the speaker from the encoder's latents ``(B, D, T')`` through a gradient
    reversal: the classifier learns to tell speakers apart, the encoder to stop it."""

    def __init__(self, code_dim: int, num_speakers: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(code_dim, hidden, 3, padding=1), nn.ReLU(), nn.Conv1d(hidden, hidden, 1)
        )
        self.head = nn.Linear(hidden, num_speakers)

    def forward(self, z: Tensor, speaker: Tensor) -> Tensor:
        """Mean cross-entropy (nats) of the speaker given the latents (scalar)."""
        h = self.net(_ReverseGrad.apply(z)).relu().mean(-1)  # (B, hidden)
        return F.cross_entropy(self.head(h), speaker)


def time_jitter(z: Tensor, p: float) -> Tensor:
    """Time-jitter regularisation (Chorowski et al. 2019): in ``(B, D, T)`` each step takes the
    vector of its left neighbour with probability ``p / 2`` and of its right one with ``p / 2``
    (the ends stay within the sequence). Gradients flow to the vectors that were used."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"jitter must lie in [0, 1], got {p}")
    if p == 0.0 or z.shape[-1] < 2:
        return z
    b, d, t = z.shape
    u = torch.rand(b, t, device=z.device)
    shift = (u < p).long() * torch.where(u < p / 2, -1, 1)
    idx = (torch.arange(t, device=z.device) + shift).clamp(0, t - 1)
    return z.gather(2, idx.unsqueeze(1).expand(b, d, t))


def span_mask(shape: tuple[int, int], p: float, span: int) -> Tensor:
    """``(B, T)`` bool: each step starts, with probability ``p``, a run of ``span`` masked steps
    (runs may overlap and are cut at the end), drawn from torch's global generator."""
    starts = (torch.rand(shape) < p).float().unsqueeze(1)  # (B, 1, T)
    return F.max_pool1d(F.pad(starts, (span - 1, 0)), span, stride=1)[:, 0] > 0


class AudioVQVAE(nn.Module):
    """Encoder -> quantizer -> decoder: a :class:`~vqkit.models.wavenet_decoder.WaveNetDecoder`
    (mu-law samples) or a :class:`~vqkit.models.mel_decoder.MelDecoder` (log-mel frames).

    Args:
        encoder: ``(B, 1, T) -> (B, D, T / hop)``, e.g. :class:`vqkit.nn.Encoder` with dims=1;
            a :class:`LogMelEncoder` for the mel decoder (whose log-mel is also the target).
        quantizer: a :class:`vqkit.quantize.Quantizer` over ``D`` channels.
        decoder: a WaveNetDecoder whose ``hop`` equals the encoder's total stride, or a
            MelDecoder whose frames per code equal the encoder's strides over frames.
        jitter: time-jitter probability applied to the quantised vectors while training
            (:func:`time_jitter`; 0: off). Chorowski et al. (2019) use 0.12 so that codes
            cannot carry exact timing and follow phones more closely.
        mel_loss: ``"l1"`` or ``"l2"`` between predicted and true log-mel (mel decoder).
        adversary: weight of a :class:`SpeakerAdversary` on the encoder's latents (0: none;
            needs ``num_speakers``); it pushes speaker information out of the codes.
        num_speakers: speakers of the adversary (the decoder's own count when None).
        pseudo_label: weight of a cross-entropy head predicting each code frame's pseudo-label
            (HuBERT-style targets, e.g. k-means clusters of MFCCs; 0: no head). ``forward``
            takes the targets as ``targets=``.
        pseudo_label_codes: classes of the pseudo-labels (the head's outputs).
        pseudo_label_sets: independent sets of pseudo-labels (e.g. k-means fits with other
            seeds), each predicted by its own ``pseudo_label_codes`` outputs of the head; the
            loss is their mean cross-entropy. With more than one, ``targets`` are
            ``(B, T', sets)``.
        pseudo_label_input: what the head reads: ``"latents"`` (the encoder's output before
            quantisation) or ``"quantized"`` (the straight-through quantised vectors); either
            way its gradient reaches the encoder, neither the codebook nor the decoder.
        pseudo_label_mask: masked prediction (HuBERT) while training: each code frame starts,
            with this probability, a span of ``pseudo_label_span`` code frames whose input
            frames are set to 0 (the normalised mean) in a second pass of the encoder, whose
            latents the head reads; the loss covers the masked frames only (0: no mask, one
            pass; needs the log-mel encoder and ``pseudo_label_input="latents"``).
        pseudo_label_span: code frames per masked span.
        cycle: weight of the speaker-swap cycle term while training (:meth:`cycle_loss`; 0:
            none; needs the mel decoder with at least 2 speakers).
        mel_denorm: the mel decoder predicts speaker-normalised log-mel, which the target
            speaker's statistics (those ``mel_norm="speaker"`` normalises the input with) turn
            back into log-mel: ``decoder(z_q, s) * std[s] + mean[s]`` (:meth:`mel_frames`).

    Attributes:
        config: the dict :func:`vqkit.models.build_model` takes, when built by a builder.
    """

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: nn.Module,
        decoder: WaveNetDecoder | MelDecoder,
        *,
        jitter: float = 0.0,
        mel_loss: str = "l1",
        adversary: float = 0.0,
        num_speakers: int | None = None,
        pseudo_label: float = 0.0,
        pseudo_label_codes: int = 100,
        pseudo_label_sets: int = 1,
        pseudo_label_input: str = "latents",
        pseudo_label_mask: float = 0.0,
        pseudo_label_span: int = 3,
        cycle: float = 0.0,
        mel_denorm: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= pseudo_label_mask <= 1.0:
            raise ValueError(f"pseudo_label_mask must lie in [0, 1], got {pseudo_label_mask}")
        if pseudo_label_span < 1:
            raise ValueError(f"pseudo_label_span must be >= 1, got {pseudo_label_span}")
        if pseudo_label and pseudo_label_mask:
            if not isinstance(encoder, LogMelEncoder):
                raise ValueError("pseudo_label_mask needs the log-mel encoder (features='logmel')")
            if pseudo_label_input != "latents":
                raise ValueError(
                    "pseudo_label_mask reads the latents of a masked pass: set "
                    "pseudo_label_input='latents' (or pseudo_label_mask=0)"
                )
        if pseudo_label < 0:
            raise ValueError(f"pseudo_label must be >= 0, got {pseudo_label}")
        if pseudo_label_sets < 1:
            raise ValueError(f"pseudo_label_sets must be >= 1, got {pseudo_label_sets}")
        if pseudo_label and pseudo_label_codes < 2:
            raise ValueError(f"pseudo_label_codes must be >= 2, got {pseudo_label_codes}")
        if pseudo_label_input not in PSEUDO_LABEL_INPUTS:
            raise ValueError(
                f"pseudo_label_input must be one of {PSEUDO_LABEL_INPUTS}, got "
                f"{pseudo_label_input!r}"
            )
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must lie in [0, 1], got {jitter}")
        if not cycle >= 0.0:
            raise ValueError(f"cycle must be >= 0 (0: off), got {cycle}")
        if mel_loss not in MEL_LOSSES:
            raise ValueError(f"mel_loss must be one of {MEL_LOSSES}, got {mel_loss!r}")
        self.jitter, self.mel_loss = jitter, mel_loss
        hop = math.prod(encoder.factor)
        if isinstance(decoder, MelDecoder):
            if not isinstance(encoder, LogMelEncoder):
                raise ValueError("the mel decoder needs the log-mel encoder (features='logmel')")
            if encoder.mel_hop * decoder.factor != hop or decoder.n_mels != encoder.n_mels:
                raise ValueError(
                    f"the mel decoder's {decoder.factor} frames per code of {decoder.n_mels} "
                    f"bands must match the encoder's {hop // encoder.mel_hop} of "
                    f"{encoder.n_mels}"
                )
        elif decoder.hop != hop:
            raise ValueError(
                f"the decoder's hop ({decoder.hop}) must equal the encoder's total stride ({hop})"
            )
        self._hop = hop
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.cycle_weight = float(cycle)
        self.mel_denorm = bool(mel_denorm)
        if mel_denorm and not (self.is_mel and self.speaker_norm and self.num_speakers):
            raise ValueError(
                "mel_denorm de-normalises the mel decoder's output with the speaker statistics "
                "of mel_norm='speaker': it needs decoder='mel', mel_norm='speaker' and speakers; "
                "set mel_denorm=false"
            )
        if cycle and (not self.is_mel or (self.num_speakers or 0) < 2):
            raise ValueError(
                f"cycle needs the mel decoder (decoder='mel') with at least 2 speakers, got "
                f"{type(decoder).__name__} with num_speakers={self.num_speakers}; set cycle=0"
            )
        self.adversary_weight = float(adversary)
        self.adversary = None
        if adversary:
            num_speakers = self.num_speakers if num_speakers is None else num_speakers
            if not num_speakers:
                raise ValueError("a speaker adversary needs num_speakers")
            self.adversary = SpeakerAdversary(quantizer.dim, num_speakers)
        self.pseudo_label_weight = float(pseudo_label)
        self.pseudo_label_input = pseudo_label_input
        self.pseudo_label_mask, self.pseudo_label_span = pseudo_label_mask, pseudo_label_span
        self.pseudo_label_sets = pseudo_label_sets
        self.pseudo_label_head = None  # no module at all when off: today's model exactly
        if pseudo_label:
            outputs = pseudo_label_codes * pseudo_label_sets
            self.pseudo_label_head = nn.Conv1d(quantizer.dim, outputs, 1)
        self.config: dict | None = None

    @property
    def speaker_norm(self) -> bool:
        """True when the encoder reads log-mel normalised with each speaker's statistics
        (``mel_norm="speaker"``): encoding needs a speaker id or ``stats=``."""
        return getattr(self.encoder, "norm_kind", None) == "speaker"

    @property
    def is_mel(self) -> bool:
        """True when the decoder predicts log-mel frames (render them with a vocoder)."""
        return isinstance(self.decoder, MelDecoder)

    @property
    def hop(self) -> int:
        """Samples per code."""
        return self._hop

    @property
    def mel_hop(self) -> int | None:
        """Samples per log-mel frame of the log-mel encoder (None: waveform encoder)."""
        return getattr(self.encoder, "mel_hop", None)

    @property
    def code_centre(self) -> float:
        """Where code 0 is centred in the audio, in samples (code i: this + ``i * hop``): the
        mean of the centres of the input frames it reads. Log-mel frame f is centred on sample
        ``f * mel_hop`` (a centred STFT), so code 0, reading frames ``0 .. hop / mel_hop - 1``,
        is centred on ``(hop - mel_hop) / 2``, half a log-mel frame before the middle of its
        hop; the waveform encoder's code 0 reads samples ``0 .. hop - 1``: ``(hop - 1) / 2``.
        Labels of the codes are read there (``frame_labels(first_centre_s=...)``)."""
        return (self.hop - (self.mel_hop or 1)) / 2

    @property
    def classes(self) -> int:
        """Mu-law classes of the audio."""
        if self.is_mel:
            return self.encoder.mu + 1
        return self.decoder.wavenet.in_classes

    @property
    def num_speakers(self) -> int | None:
        """Speakers of the decoder's speaker conditioning (None: no speaker input)."""
        if self.is_mel:
            return self.decoder.num_speakers
        return self.decoder.wavenet.global_classes

    def _check_audio(self, audio: Tensor) -> None:
        if not (isinstance(audio, Tensor) and audio.dim() == 2 and audio.dtype == torch.long):
            got = f"{audio.dtype} {tuple(audio.shape)}" if isinstance(audio, Tensor) else audio
            raise ValueError(f"audio must be mu-law classes (B, T) int64, got {got}")
        if audio.shape[1] == 0 or audio.shape[1] % self.hop:
            raise ValueError(
                f"audio length {audio.shape[1]} must be a positive multiple of the hop "
                f"{self.hop}; crop or pad it, e.g. to {max(1, audio.shape[1] // self.hop) * self.hop}"
            )
        if int(audio.min()) < 0 or int(audio.max()) >= self.classes:
            raise ValueError(
                f"audio classes must lie in [0, {self.classes}), got "
                f"[{int(audio.min())}, {int(audio.max())}]"
            )

    def to_float(self, audio: Tensor) -> Tensor:
        """Mu-law classes ``(B, T)`` -> the encoder's input ``(B, 1, T)`` in ``[-1, 1]``."""
        scale = 2.0 / (self.classes - 1)
        return (audio.to(self._dtype()) * scale - 1.0).unsqueeze(1)

    def forward(
        self, audio: Tensor, speaker: Tensor | None = None, targets: Tensor | None = None
    ) -> AudioVQVAEOutput:
        """Teacher-forced pass: ``audio`` ``(B, T)`` classes, ``speaker`` ``(B,)`` ids or None,
        ``targets`` ``(B, T / hop)`` pseudo-labels of the code frames (``IGNORE``: none) for the
        pseudo-label head (ignored without one)."""
        self._check_audio(audio)
        if self.is_mel:
            target = self.encoder.logmel(self.to_float(audio))  # (B, n_mels, T / mel_hop)
            z = self.encoder.encode_frames(target, self._stats(speaker, None))  # (B, D, T / hop)
        else:
            z = self.encoder(self.to_float(audio))  # (B, D, T / hop)
        quant = self.quantizer(z)
        z_q = time_jitter(quant.quantized, self.jitter) if self.training else quant.quantized
        adv = None
        if self.adversary is not None and speaker is not None:
            adv = self.adversary(z, speaker)
        extra = quant.loss if adv is None else quant.loss + self.adversary_weight * adv
        pl = None
        if self.pseudo_label_head is not None and targets is not None:
            if self.training and self.pseudo_label_mask > 0:
                shape = tuple(targets.shape[:2])
                masked = span_mask(shape, self.pseudo_label_mask, self.pseudo_label_span)
                frames = masked.to(z.device).repeat_interleave(self.hop // self.mel_hop, dim=1)
                mel = target if self.is_mel else self.encoder.logmel(self.to_float(audio))
                z_m = self.encoder.encode_frames(mel, self._stats(speaker, None), frames)
                keep = masked.to(targets.device).view(shape + (1,) * (targets.dim() - 2))
                pl = self.pseudo_label_loss(z_m, z_m, targets.masked_fill(~keep, IGNORE))
            else:
                pl = self.pseudo_label_loss(z, quant.quantized, targets)
            extra = extra + self.pseudo_label_weight * pl
        if self.is_mel:
            mel = self.mel_frames(z_q, speaker)  # (B, n_mels, T / mel_hop)
            diff = mel - target.to(mel.dtype)
            recon_loss = diff.abs().mean() if self.mel_loss == "l1" else diff.square().mean()
            cyc = None
            if self.cycle_weight and self.training and speaker is not None:
                cyc = self.cycle_loss(quant.quantized, speaker)
                extra = extra + self.cycle_weight * cyc
            return AudioVQVAEOutput(
                None, quant, recon_loss, recon_loss + extra, mel, target, adv, pl, cyc
            )
        logits = self.decoder(z_q, speaker, audio)  # (B, classes, T)
        recon_loss = F.cross_entropy(logits, audio)
        return AudioVQVAEOutput(
            logits, quant, recon_loss, recon_loss + extra, adversary_loss=adv, pseudo_label_loss=pl
        )

    def pseudo_label_loss(self, z: Tensor, z_q: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy (nats) of the pseudo-label head over the frames of ``targets``
        ``(B, T')`` (``(B, T', sets)`` with ``pseudo_label_sets > 1``: the mean over the sets'
        frames) that are not ``IGNORE``, reading the latents ``z`` or the straight-through
        quantised ``z_q`` (both ``(B, D, T')``) as ``pseudo_label_input`` says."""
        sets = self.pseudo_label_sets
        want = z.shape[:1] + z.shape[2:] + ((sets,) if sets > 1 else ())
        if targets.shape != want:
            raise ValueError(
                f"pseudo-label targets {tuple(targets.shape)} must be {tuple(want)} (B, T'"
                f"{', sets' if sets > 1 else ''}) for the latents {tuple(z.shape)}"
            )
        h = z if self.pseudo_label_input == "latents" else z_q
        logits = self.pseudo_label_head(h.to(self.pseudo_label_head.weight.dtype)).float()
        if not bool((targets != IGNORE).any()):  # every frame padding: nothing to predict
            return logits.sum() * 0.0
        if sets > 1:  # (B, sets * K, T') -> (B * sets, K, T'), targets (B * sets, T')
            b, _, t = logits.shape
            logits = logits.view(b * sets, -1, t)
            targets = targets.permute(0, 2, 1).reshape(b * sets, t)
        return F.cross_entropy(logits, targets.long(), ignore_index=IGNORE)

    def cycle_loss(self, z_q: Tensor, speaker: Tensor, other: Tensor | None = None) -> Tensor:
        """The speaker-swap cycle term: decode the quantized latents ``z_q`` ``(B, D, T')`` in
        another speaker's voice, encode that log-mel again (with the other speaker's
        statistics under ``mel_norm="speaker"``), and return the mean squared distance of its
        pre-quantisation latents to ``z_q``, the codes conversion must keep (scalar).

        ``other``: ``(B,)`` speaker ids, each different from ``speaker`` (default: drawn at
        random among the others). ``z_q`` is a fixed input and target: the gradient reaches the
        mel decoder (its output in the other voice must carry the same codes) and the encoder
        (it must read them from another voice), never the codebook.
        """
        n = self.num_speakers or 0
        if not self.is_mel or n < 2:
            raise ValueError("cycle_loss() needs the mel decoder with at least 2 speakers")
        if other is None:
            shift = torch.randint(1, n, speaker.shape, device=speaker.device)
            other = (speaker + shift) % n
        z_q = z_q.detach()
        mel = self.mel_frames(z_q, other)  # (B, n_mels, T / mel_hop) in the other voice
        z = self.encoder.encode_frames(mel, self._stats(other, None))
        return F.mse_loss(z.to(z_q.dtype), z_q)

    @torch.no_grad()
    def logmel(self, audio: Tensor) -> Tensor:
        """``(B, T)`` mu-law classes -> ``(B, n_mels, T / mel_hop)`` true log-mel: what the mel
        decoder is trained to predict and a vocoder renders."""
        if self.mel_hop is None:
            raise ValueError("logmel() needs the log-mel encoder (features='logmel')")
        self._check_audio(audio)
        return self.encoder.logmel(self.to_float(audio))

    def _stats(self, speaker, stats):
        """The speaker statistics of ``mel_norm="speaker"`` (None for other encoders)."""
        if not self.speaker_norm:
            return None
        if stats is not None:
            return stats
        if speaker is None:
            return None  # encode_frames says what is missing
        return self.encoder.speaker_mean[speaker], self.encoder.speaker_std[speaker]

    @torch.no_grad()
    def speaker_stats(self, audios: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-band log-mel mean and deviation ``(n_mels,)`` of one speaker's utterances (mu-law
        classes ``(T_i,)``; a tail shorter than ``mel_hop`` is dropped), silent frames left out."""
        if self.mel_hop is None:
            raise ValueError("speaker_stats() needs the log-mel encoder (features='logmel')")
        mels = []
        for a in audios:
            a = a.reshape(1, -1)[:, : a.numel() // self.mel_hop * self.mel_hop]
            mels.append(self.encoder.logmel(self.to_float(a.long()))[0])
        return mel_stats(mels)

    @torch.no_grad()
    def set_speaker_stats(self, audios: Sequence[Tensor], speakers: Sequence[int]) -> None:
        """Set the statistics of ``mel_norm="speaker"`` from training utterances (mu-law classes
        ``(T_i,)``) and their speaker ids."""
        if not self.speaker_norm:
            raise ValueError("set_speaker_stats() is for mel_norm='speaker'")
        for k in sorted(set(int(s) for s in speakers)):
            mean, std = self.speaker_stats([a for a, s in zip(audios, speakers) if int(s) == k])
            self.encoder.speaker_mean[k], self.encoder.speaker_std[k] = mean, std

    @torch.no_grad()
    def encode(
        self,
        audio: Tensor,
        speaker: Tensor | int | None = None,
        *,
        stats: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``(B, T)`` mu-law classes -> ``(B, T / hop)`` int64 codes.

        ``speaker`` (ids of training speakers) or ``stats`` (:meth:`speaker_stats` of any
        speaker) are needed by ``mel_norm="speaker"`` only.
        """
        return self.quantizer.encode(self.encode_latents(audio, speaker, stats=stats))

    @torch.no_grad()
    def encode_latents(
        self,
        audio: Tensor,
        speaker: Tensor | int | None = None,
        *,
        stats: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``(B, T)`` mu-law classes -> the encoder's latents ``(B, D, T / hop)`` before
        quantisation (``speaker``/``stats`` as in :meth:`encode`)."""
        self._check_audio(audio)
        speaker = _speaker_ids(speaker, audio.shape[0])
        norm_stats = self._stats(speaker, stats)
        if norm_stats is None:
            return self.encoder(self.to_float(audio))
        mel = self.encoder.logmel(self.to_float(audio))
        return self.encoder.encode_frames(mel, norm_stats)

    @torch.no_grad()
    def encoder_input(
        self,
        audio: Tensor,
        speaker: Tensor | int | None = None,
        *,
        stats: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """What the encoder's conv stack reads of ``(B, T)`` mu-law classes: the normalised
        log-mel ``(B, n_mels, T / mel_hop)`` of the log-mel encoder (``speaker``/``stats`` as in
        :meth:`encode`), or the companded waveform ``(B, 1, T)``."""
        self._check_audio(audio)
        speaker = _speaker_ids(speaker, audio.shape[0])
        x = self.to_float(audio)
        if self.mel_hop is None:
            return x
        return self.encoder.normalise(self.encoder.logmel(x), self._stats(speaker, stats))

    def latents(self, codes: Tensor) -> Tensor:
        """Codes ``(B, T')`` -> quantized vectors ``(B, D, T')`` in the decoder's dtype."""
        return self.quantizer.decode(codes).to(self._dtype())

    @torch.no_grad()
    def nll_bits(self, audio: Tensor, speaker: Tensor | None = None) -> Tensor:
        """``(B,)`` teacher-forced reconstruction NLL ``-log2 p(x | z_q(x), speaker)`` per sample.

        Goes through ``encode``, so no codebook state changes. WaveNet decoder only.
        """
        if self.is_mel:
            raise ValueError("nll_bits() needs the WaveNet decoder; the mel decoder has no NLL")
        logits = self.decoder(self.latents(self.encode(audio)), speaker, audio)
        return F.cross_entropy(logits, audio, reduction="none").mean(1) / math.log(2)

    @torch.inference_mode()
    def decode(
        self,
        codes: Tensor,
        speaker: Tensor | int | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        cached: bool = True,
        fused: bool | None = None,
        progress: str | None = None,
    ) -> Tensor:
        """Generate audio from codes ``(B, T')``: mu-law classes ``(B, T' * hop)``.

        One sample at a time with the WaveNet's cached sampler (``cached=False``: the slow
        reference, same samples). Passing another speaker than the one who spoke converts the
        voice.

        Args:
            codes: ``(B, T')`` int64 codes.
            speaker: ``(B,)`` ids or one int, iff the model has speakers.
            temperature: divides the logits; 0 takes the argmax (usually buzzy: sample instead).
            generator: for reproducible samples, on the model's device.
            cached: use the cached sampler.
            fused: with ``cached``, the fused CPU kernel (None: on the CPU when numba imports;
                see :meth:`WaveNet.generate`).
            progress: title of a progress bar over the samples (None: none).
        """
        if self.is_mel:
            raise ValueError(
                "decode() generates samples with the WaveNet decoder; this model has a mel "
                "decoder: take decode_mel(codes, speaker) and render it with a vocoder "
                "(vqkit.models.vocoder)"
            )
        return self.decoder.generate(
            self.latents(codes),
            speaker,
            temperature=temperature,
            generator=generator,
            cached=cached,
            fused=fused,
            progress=progress,
        )

    @torch.no_grad()
    def decode_mel(self, codes: Tensor, speaker: Tensor | int | None = None) -> Tensor:
        """Predicted log-mel ``(B, n_mels, T' * frames per code)`` of codes ``(B, T')`` spoken
        by ``speaker`` (``(B,)`` ids or one int; another speaker than the source's converts).
        Mel decoder only; a vocoder's ``render`` turns the frames into a waveform."""
        if not self.is_mel:
            raise ValueError("decode_mel() needs the mel decoder (vqvae_audio(decoder='mel'))")
        speaker = _speaker_ids(speaker, codes.shape[0])
        if speaker is not None:
            speaker = speaker.to(codes.device)
        return self.mel_frames(self.latents(codes), speaker)

    def mel_frames(self, z_q: Tensor, speaker: Tensor | None) -> Tensor:
        """The mel decoder's log-mel ``(B, n_mels, T' * frames per code)`` of quantized latents
        ``(B, D, T')`` in the voice of ``speaker`` ``(B,)``; under ``mel_denorm`` the decoder's
        output is speaker-normalised and the speaker's statistics de-normalise it."""
        mel = self.decoder(z_q, speaker)
        if not self.mel_denorm:
            return mel
        if speaker is None:
            raise ValueError("mel_denorm decodes in a speaker's statistics: pass speaker ids")
        mean, std = self.encoder.speaker_mean[speaker], self.encoder.speaker_std[speaker]
        return mel * std.unsqueeze(-1).to(mel.dtype) + mean.unsqueeze(-1).to(mel.dtype)

    def _dtype(self) -> torch.dtype:
        if self.is_mel:
            return self.decoder.layers[0].weight.dtype
        return self.decoder.wavenet.embed.weight.dtype


def _speaker_ids(speaker: Tensor | int | None, batch: int) -> Tensor | None:
    """One int speaker as ``(batch,)`` ids; ids or None unchanged."""
    if isinstance(speaker, int):
        return torch.full((batch,), speaker, dtype=torch.long)
    return speaker


@register("vqvae_audio")
def vqvae_audio(
    *,
    num_speakers: int | None,
    strides: Sequence[Stride] = (2, 2, 2, 2, 2, 2, 2, 2),
    hidden: int = 64,
    res_hidden: int = 32,
    num_res_blocks: int = 2,
    num_codes: int = 128,
    code_dim: int = 64,
    classes: int = 256,
    residual_channels: int = 32,
    skip_channels: int | None = 32,
    gate_channels: int | None = None,
    local_channels: int | None = None,
    speaker_channels: int | None = None,
    kernel_size: int = 2,
    layers_per_stack: int = 8,
    stacks: int = 1,
    upsample: str = "repeat",
    features: str = "waveform",
    sample_rate: int | None = None,
    mel_hop: int = 80,
    n_mels: int = 40,
    jitter: float = 0.0,
    quantizer: dict[str, Any] | None = None,
    decoder: str = "wavenet",
    decoder_hidden: int | None = None,
    decoder_res_hidden: int | None = None,
    decoder_res_blocks: int = 4,
    mel_loss: str = "l1",
    mel_norm: str = "batch",
    mel_warp: float = 0.0,
    mel_cepstra: int = 0,
    encoder_cepstra: int = 0,
    mel_tilt: float = 0.0,
    adversary: float = 0.0,
    pseudo_label: float = 0.0,
    pseudo_label_codes: int = 100,
    pseudo_label_sets: int = 1,
    pseudo_label_input: str = "latents",
    pseudo_label_mask: float = 0.0,
    pseudo_label_span: int = 3,
    cycle: float = 0.0,
    mel_denorm: bool = False,
    decoder_speaker_layers: int | None = None,
) -> AudioVQVAE:
    """The audio VQ-VAE: strided convs (or log-mel frames) -> codes -> a WaveNet decoder.

    The defaults are the built-in recipe's model (8 stride-2 convs: hop 256, 31.25 Hz at 8 kHz;
    an 8-layer, 32-channel WaveNet). The paper's model is ``strides=[2] * 6`` (64x),
    ``residual_channels=64, skip_channels=None, layers_per_stack=10, stacks=2``.

    Args:
        num_speakers: speakers of the decoder's learned speaker embedding (None: none).
        strides: per-stage encoder strides; their product is the hop (samples per code), e.g.
            ``[4, 4, 4, 5]`` for 320 (50 Hz at 16 kHz).
        hidden, res_hidden, num_res_blocks: the encoder's conv stack (:class:`vqkit.nn.Encoder`).
        num_codes: codebook size K.
        code_dim: latent channels D.
        classes: mu-law classes of the audio (256: 8 bit).
        residual_channels, skip_channels, gate_channels, local_channels, speaker_channels,
            kernel_size, layers_per_stack, stacks, upsample: the WaveNet decoder
            (:func:`vqkit.models.wavenet_decoder.wavenet_decoder`).
        features: what the encoder reads: ``"waveform"`` (the paper: strided convs over
            samples) or ``"logmel"`` (:class:`LogMelEncoder`: log-mel frames every
            ``mel_hop`` samples, then ``strides`` over frames; the hop is ``mel_hop *
            prod(strides)``).
        sample_rate: rate of the audio; needed by ``"logmel"``.
        mel_hop, n_mels: the log-mel frames of ``"logmel"``.
        jitter: time-jitter probability while training (:class:`AudioVQVAE`).
        quantizer: further :class:`~vqkit.quantize.VectorQuantizer` keyword arguments.
        decoder: ``"wavenet"`` (mu-law samples from the codes, the paper; the WaveNet arguments
            above) or ``"mel"`` (:class:`~vqkit.models.mel_decoder.MelDecoder`: log-mel frames
            at ``mel_hop``, the encoder's own log-mel as target; needs ``features="logmel"``;
            render with a vocoder from :mod:`vqkit.models.vocoder`).
        decoder_hidden, decoder_res_hidden, decoder_res_blocks: the mel decoder's conv stack
            (defaults: ``hidden``, ``res_hidden``; 4 residual blocks).
        mel_loss: ``"l1"`` or ``"l2"`` on the log-mel (mel decoder).
        mel_norm: ``"batch"``, ``"instance"`` or ``"speaker"`` normalisation of the encoder's
            log-mel input
            (:class:`LogMelEncoder`).
        mel_warp: random mel-axis stretch of the encoder's input while training, in
            ``[1 - mel_warp, 1 + mel_warp]`` (:class:`LogMelEncoder`; 0: off).
        mel_cepstra: log-mel frames smoothed to this many cepstral coefficients, for the encoder
            and the mel decoder's target (:class:`LogMelEncoder`; 0: off).
        encoder_cepstra: the encoder's input alone smoothed to this many cepstral
            coefficients; the mel decoder's target keeps the harmonics (``input_cepstra`` of
            :class:`LogMelEncoder`; 0: off).
        mel_tilt: random spectral tilt and gain of the encoder's input while training, each in
            ``[-mel_tilt, mel_tilt]`` nats (:class:`LogMelEncoder`; 0: off).
        adversary: weight of a speaker adversary (gradient reversal) on the encoder's latents
            (:class:`AudioVQVAE`; 0: none).
        pseudo_label, pseudo_label_codes, pseudo_label_sets, pseudo_label_input,
            pseudo_label_mask, pseudo_label_span: the pseudo-label head's weight (0: none),
            classes, sets of labels, input and masked prediction (:class:`AudioVQVAE`); the
            audio recipe fits the labels, k-means of speaker-normalised MFCCs (one fit per set,
            each with its own seed), on the training split.
        cycle: weight of the speaker-swap cycle term (:meth:`AudioVQVAE.cycle_loss`: the codes
            decoded in another training speaker's voice must encode back to themselves; mel
            decoder only; 0: none).
        mel_denorm: the mel decoder predicts speaker-normalised log-mel that the target
            speaker's ``mel_norm="speaker"`` statistics de-normalise (:class:`AudioVQVAE`).
        decoder_speaker_layers: the mel decoder FiLMs the speaker into only its last this many
            layers (:class:`~vqkit.models.mel_decoder.MelDecoder`; None: every layer).

    Examples:
        >>> model = vqvae_audio(num_speakers=4)
        >>> model.hop, model.decoder.wavenet.receptive_field
        (256, 256)
    """
    # The builder's names, not its parts': the config keys a user sets.
    check_sizes(hidden=hidden, res_hidden=res_hidden, num_codes=num_codes, code_dim=code_dim)
    check_sizes(n_mels=n_mels, residual_channels=residual_channels)
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "mel" and features != "logmel":
        raise ValueError("decoder='mel' needs features='logmel' (its log-mel is the target)")
    encoder: nn.Module
    if features == "logmel":
        if sample_rate is None:
            raise ValueError("features='logmel' needs sample_rate= (for the mel filters)")
        encoder = LogMelEncoder(
            sample_rate,
            code_dim,
            mel_hop=mel_hop,
            n_mels=n_mels,
            classes=classes,
            hidden=hidden,
            strides=strides,
            res_hidden=res_hidden,
            num_res_blocks=num_res_blocks,
            norm=mel_norm,
            warp=mel_warp,
            cepstra=mel_cepstra,
            input_cepstra=encoder_cepstra,
            tilt=mel_tilt,
            num_speakers=num_speakers,
        )
    else:
        encoder = Encoder(
            1,
            1,
            hidden,
            code_dim,
            strides=strides,
            res_hidden=res_hidden,
            num_res_blocks=num_res_blocks,
        )
    if decoder == "mel":
        quantizer_module = make_quantizer(num_codes, code_dim, quantizer)
        mel_decoder = MelDecoder(
            code_dim,
            n_mels,
            strides=strides,
            hidden=hidden if decoder_hidden is None else decoder_hidden,
            res_hidden=res_hidden if decoder_res_hidden is None else decoder_res_hidden,
            num_res_blocks=decoder_res_blocks,
            num_speakers=num_speakers,
            speaker_channels=speaker_channels,
            speaker_layers=decoder_speaker_layers,
        )
        return AudioVQVAE(
            encoder,
            quantizer_module,
            mel_decoder,
            jitter=jitter,
            mel_loss=mel_loss,
            adversary=adversary,
            num_speakers=num_speakers,
            pseudo_label=pseudo_label,
            pseudo_label_codes=pseudo_label_codes,
            pseudo_label_sets=pseudo_label_sets,
            pseudo_label_input=pseudo_label_input,
            pseudo_label_mask=pseudo_label_mask,
            pseudo_label_span=pseudo_label_span,
            cycle=cycle,
            mel_denorm=mel_denorm,
        )
    if decoder_speaker_layers is not None:
        raise ValueError(
            f"decoder_speaker_layers={decoder_speaker_layers} is a setting of the mel decoder "
            "(decoder='mel'); set it to null for the WaveNet decoder"
        )
    if mel_denorm:
        raise ValueError(
            "mel_denorm is a setting of the mel decoder (decoder='mel'); set it to false for "
            "the WaveNet decoder"
        )
    wavenet = wavenet_decoder(
        code_dim=code_dim,
        hop=math.prod(encoder.factor),
        num_speakers=num_speakers,
        classes=classes,
        local_channels=local_channels,
        residual_channels=residual_channels,
        skip_channels=skip_channels,
        gate_channels=gate_channels,
        speaker_channels=speaker_channels,
        kernel_size=kernel_size,
        layers_per_stack=layers_per_stack,
        stacks=stacks,
        upsample=upsample,
    )
    quantizer_module = make_quantizer(
        num_codes, code_dim, quantizer
    )  # after the decoder, as before
    return AudioVQVAE(
        encoder,
        quantizer_module,
        wavenet,
        jitter=jitter,
        mel_loss=mel_loss,
        adversary=adversary,
        num_speakers=num_speakers,
        pseudo_label=pseudo_label,
        pseudo_label_codes=pseudo_label_codes,
        pseudo_label_sets=pseudo_label_sets,
        pseudo_label_input=pseudo_label_input,
        pseudo_label_mask=pseudo_label_mask,
        pseudo_label_span=pseudo_label_span,
        cycle=cycle,
    )
