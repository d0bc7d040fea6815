"""The audio VQ-VAE (van den Oord et al. 2017, section 4.3): strided conv encoder -> quantizer ->
WaveNet decoder conditioned on the codes and on a speaker.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.audio import LogMel
from vqkit.models.registry import register
from vqkit.models.vqvae import make_quantizer
from vqkit.models.wavenet_decoder import WaveNetDecoder, wavenet_decoder
from vqkit.nn.conv import Stride
from vqkit.nn.encoder import Encoder
from vqkit.quantize import QuantizerOutput


@dataclass
class AudioVQVAEOutput:
    """What :meth:`AudioVQVAE.forward` returns.

    Attributes:
        logits: ``(B, classes, T)`` teacher-forced logits; ``logits[:, :, t]`` predicts sample t.
        quant: the quantizer's output (codes ``(B, T / hop)``, loss terms, perplexity).
        recon_loss: mean cross-entropy in nats per sample (scalar).
        loss: ``recon_loss + quant.loss``, the quantity to minimise.
    """

    logits: Tensor
    quant: QuantizerOutput
    recon_loss: Tensor
    loss: Tensor


FEATURES = ("waveform", "logmel")  # what the audio encoder reads


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
    ) -> None:
        super().__init__()
        if not isinstance(mel_hop, int) or mel_hop < 1:
            raise ValueError(f"mel_hop must be a positive int (samples per frame), got {mel_hop!r}")
        self.mel = LogMel(
            sample_rate, n_mels=n_mels, hop_ms=1000.0 * mel_hop / sample_rate, pad_mode="constant"
        )
        self.mu = classes - 1  # the companding of MuLawEncode / MuLawDecode
        self.norm = nn.BatchNorm1d(n_mels, affine=False)
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

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1, T)`` companded waveform -> ``(B, D, T / (mel_hop * prod(strides)))``."""
        import torchaudio.functional as AF  # what MuLawDecode uses; it takes float levels too

        wav = AF.mu_law_decoding((x[:, 0].float() + 1.0) * (self.mu / 2.0), self.mu + 1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            mel = self.mel(wav)[..., : wav.shape[-1] // self.mel.hop]  # (B, n_mels, T / mel_hop)
        return self.frames(self.norm(mel).to(x.dtype))


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


class AudioVQVAE(nn.Module):
    """Encoder -> quantizer -> :class:`~vqkit.models.wavenet_decoder.WaveNetDecoder`.

    Args:
        encoder: ``(B, 1, T) -> (B, D, T / hop)``, e.g. :class:`vqkit.nn.Encoder` with dims=1.
        quantizer: a :class:`vqkit.quantize.Quantizer` over ``D`` channels.
        decoder: a WaveNetDecoder whose ``hop`` equals the encoder's total stride.
        jitter: time-jitter probability applied to the quantised vectors while training
            (:func:`time_jitter`; 0: off). Chorowski et al. (2019) use 0.12 so that codes
            cannot carry exact timing and follow phones more closely.

    Attributes:
        config: the dict :func:`vqkit.models.build_model` takes, when built by a builder.
    """

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: nn.Module,
        decoder: WaveNetDecoder,
        *,
        jitter: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must lie in [0, 1], got {jitter}")
        self.jitter = jitter
        hop = math.prod(encoder.factor)
        if decoder.hop != hop:
            raise ValueError(
                f"the decoder's hop ({decoder.hop}) must equal the encoder's total stride ({hop})"
            )
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.config: dict | None = None

    @property
    def hop(self) -> int:
        """Samples per code."""
        return self.decoder.hop

    @property
    def classes(self) -> int:
        """Mu-law classes of the audio."""
        return self.decoder.wavenet.in_classes

    @property
    def num_speakers(self) -> int | None:
        """Speakers of the decoder's global conditioning (None: no speaker input)."""
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

    def forward(self, audio: Tensor, speaker: Tensor | None = None) -> AudioVQVAEOutput:
        """Teacher-forced pass: ``audio`` ``(B, T)`` classes, ``speaker`` ``(B,)`` ids or None."""
        self._check_audio(audio)
        z = self.encoder(self.to_float(audio))  # (B, D, T / hop)
        quant = self.quantizer(z)
        z_q = time_jitter(quant.quantized, self.jitter) if self.training else quant.quantized
        logits = self.decoder(z_q, speaker, audio)  # (B, classes, T)
        recon_loss = F.cross_entropy(logits, audio)
        return AudioVQVAEOutput(logits, quant, recon_loss, recon_loss + quant.loss)

    @torch.no_grad()
    def encode(self, audio: Tensor) -> Tensor:
        """``(B, T)`` mu-law classes -> ``(B, T / hop)`` int64 codes."""
        self._check_audio(audio)
        return self.quantizer.encode(self.encoder(self.to_float(audio)))

    def latents(self, codes: Tensor) -> Tensor:
        """Codes ``(B, T')`` -> quantized vectors ``(B, D, T')`` in the decoder's dtype."""
        return self.quantizer.decode(codes).to(self._dtype())

    @torch.no_grad()
    def nll_bits(self, audio: Tensor, speaker: Tensor | None = None) -> Tensor:
        """``(B,)`` teacher-forced reconstruction NLL ``-log2 p(x | z_q(x), speaker)`` per sample.

        Goes through ``encode``, so no codebook state changes.
        """
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
        """
        return self.decoder.generate(
            self.latents(codes),
            speaker,
            temperature=temperature,
            generator=generator,
            cached=cached,
            fused=fused,
        )

    def _dtype(self) -> torch.dtype:
        return self.decoder.wavenet.embed.weight.dtype


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

    Examples:
        >>> model = vqvae_audio(num_speakers=4)
        >>> model.hop, model.decoder.wavenet.receptive_field
        (256, 256)
    """
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
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
    decoder = wavenet_decoder(
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
    quantizer_module = make_quantizer(num_codes, code_dim, quantizer)
    return AudioVQVAE(encoder, quantizer_module, decoder, jitter=jitter)
