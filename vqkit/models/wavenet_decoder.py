"""The audio VQ-VAE decoder: quantized latents -> sample rate -> conditional WaveNet.

``z_q (B, D, T / hop) -> CodeUpsampler -> (B, C_l, T) -> WaveNet(local, speaker) -> (B, 256, T)``
logits over 8-bit mu-law classes (van den Oord et al. 2017, section 4.3). Voice conversion is
decoding one utterance's codes with another speaker's id.

Waveforms <-> classes: ``torchaudio.functional.mu_law_encoding(wav, 256)`` and
``mu_law_decoding(classes, 256)``.

Example:
    >>> decoder = wavenet_decoder(code_dim=8, hop=4, num_speakers=3, residual_channels=16,
    ...                           layers_per_stack=4)
    >>> z_q, speaker = torch.randn(2, 8, 5), torch.tensor([0, 2])
    >>> audio = torch.randint(0, 256, (2, 20))
    >>> decoder(z_q, speaker, audio).shape
    torch.Size([2, 256, 20])
    >>> decoder.generate(z_q, torch.tensor([1, 1])).shape  # voice conversion to speaker 1
    torch.Size([2, 20])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.errors import check_int
from vqkit.models.registry import register
from vqkit.models.wavenet import WaveNet

UPSAMPLE_MODES = ("repeat", "transposed")


class CodeUpsampler(nn.Module):
    """Frame-rate latents (B, D, T') -> sample-rate conditioning (B, C_l, T' * hop).

    Modes:
        ``"repeat"``: a 1x1 conv D -> C_l, then every frame repeated ``hop`` times, so all samples
            of a frame get the same vector and the WaveNet's own context tells them apart.
        ``"transposed"``: ``ConvTranspose1d`` with kernel = stride = hop: each frame emits ``hop``
            learned vectors, one per position within the frame; frames do not overlap.

    Either way sample ``t`` is conditioned on frame ``t // hop`` only, which matches an encoder
    whose total stride is ``hop``.

    Args:
        in_channels: Latent channels D.
        out_channels: Conditioning channels C_l.
        hop: Samples per latent frame (the encoder's total stride).
        mode: ``"repeat"`` or ``"transposed"``.
    """

    def __init__(self, in_channels: int, out_channels: int, hop: int, *, mode: str = "repeat"):
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("hop", hop),
        ):
            check_int(name, value)
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsampling mode {mode!r}; choose one of {UPSAMPLE_MODES}")
        self.in_channels, self.out_channels, self.hop, self.mode = (
            in_channels,
            out_channels,
            hop,
            mode,
        )
        if mode == "repeat":
            self.proj = nn.Conv1d(in_channels, out_channels, 1)
        else:
            self.proj = nn.ConvTranspose1d(in_channels, out_channels, hop, stride=hop)

    def forward(self, z: Tensor) -> Tensor:
        """z (B, D, T') -> (B, C_l, T' * hop)."""
        if z.dim() != 3 or z.shape[1] != self.in_channels:
            raise ValueError(
                f"expected latents of shape (B, {self.in_channels}, T'), got {tuple(z.shape)}"
            )
        out = self.proj(z)
        # Projecting before repeating does the 1x1 work once per frame rather than per sample.
        return out.repeat_interleave(self.hop, dim=-1) if self.mode == "repeat" else out


class WaveNetDecoder(nn.Module):
    """WaveNet over mu-law classes, conditioned on upsampled latents and a speaker.

    Args:
        wavenet: A :class:`WaveNet` with ``local_channels == upsampler.out_channels``.
        upsampler: Latents (B, D, T') -> (B, C_l, T' * hop).
    """

    def __init__(self, wavenet: WaveNet, upsampler: CodeUpsampler) -> None:
        super().__init__()
        if wavenet.local_channels != upsampler.out_channels:
            raise ValueError(
                f"wavenet.local_channels ({wavenet.local_channels}) must equal "
                f"upsampler.out_channels ({upsampler.out_channels})"
            )
        self.wavenet, self.upsampler = wavenet, upsampler

    @property
    def hop(self) -> int:
        """Samples per latent frame."""
        return self.upsampler.hop

    def _check_audio(self, z_q: Tensor, audio: Tensor) -> None:
        expected = (z_q.shape[0], z_q.shape[-1] * self.hop)
        if not isinstance(audio, Tensor) or audio.dim() != 2 or tuple(audio.shape) != expected:
            got = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
            raise ValueError(
                f"audio_in must have shape (B, T' * hop) = {expected} for z_q of shape "
                f"{tuple(z_q.shape)} and hop {self.hop}, got {got}; crop the audio to a "
                f"multiple of hop before encoding"
            )

    def forward(self, z_q: Tensor, speaker: Tensor | None, audio_in: Tensor) -> Tensor:
        """Teacher-forced logits aligned with the audio: logits[:, :, t] predicts audio_in[:, t].

        Args:
            z_q: Quantized latents (B, D, T').
            speaker: Speaker ids (B,) int64, or None for a decoder without speakers.
            audio_in: Mu-law classes (B, T' * hop) int64 (shifted right inside).

        Returns:
            Logits (B, classes, T' * hop).
        """
        self._check_audio(z_q, audio_in)
        local = self.upsampler(z_q)  # (B, C_l, T)
        return self.wavenet(self.wavenet.shift_right(audio_in), local, speaker)

    def loss(self, z_q: Tensor, speaker: Tensor | None, audio_in: Tensor) -> Tensor:
        """Mean cross-entropy in nats per sample (scalar)."""
        return F.cross_entropy(self(z_q, speaker, audio_in), audio_in)

    @torch.inference_mode()
    def generate(
        self,
        z_q: Tensor,
        speaker: Tensor | int | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        first: Tensor | int | None = None,
        cached: bool = True,
        fused: bool | None = None,
        progress: str | None = None,
    ) -> Tensor:
        """Decode latents (B, D, T') into mu-law classes (B, T' * hop), one sample at a time.

        Arguments as in :meth:`WaveNet.generate`; ``cached=False`` is the slow reference, and on
        the CPU the fused kernel runs by default (``fused=False``: the torch step path).
        """
        local = self.upsampler(z_q)  # (B, C_l, T)
        return self.wavenet.generate(
            local.shape[-1],
            local=local,
            speaker=speaker,
            temperature=temperature,
            generator=generator,
            first=first,
            cached=cached,
            fused=fused,
            progress=progress,
        )


@register("wavenet_decoder")
def wavenet_decoder(
    *,
    code_dim: int,
    hop: int,
    num_speakers: int | None = None,
    classes: int = 256,
    local_channels: int | None = None,
    residual_channels: int = 64,
    skip_channels: int | None = None,
    gate_channels: int | None = None,
    speaker_channels: int | None = None,
    kernel_size: int = 2,
    layers_per_stack: int = 10,
    stacks: int = 2,
    upsample: str = "repeat",
) -> WaveNetDecoder:
    """Audio VQ-VAE decoder: latents of width ``code_dim`` at one frame per ``hop`` samples.

    Args:
        code_dim: Latent channels D of z_q.
        hop: Samples per latent frame (the encoder's total stride, 64 in the paper).
        num_speakers: Speakers for the global conditioning; None for none.
        classes: Mu-law classes in and out.
        local_channels: Width C_l of the upsampled conditioning; default ``residual_channels``.
        residual_channels, skip_channels, gate_channels, kernel_size, layers_per_stack, stacks:
            As in :class:`WaveNet`.
        speaker_channels: Width of the speaker embedding; default ``residual_channels``.
        upsample: ``"repeat"`` or ``"transposed"`` (see :class:`CodeUpsampler`).
    """
    local_channels = residual_channels if local_channels is None else local_channels
    wavenet = WaveNet(
        in_classes=classes,
        out_classes=classes,
        residual_channels=residual_channels,
        skip_channels=skip_channels,
        gate_channels=gate_channels,
        kernel_size=kernel_size,
        layers_per_stack=layers_per_stack,
        stacks=stacks,
        local_channels=local_channels,
        global_classes=num_speakers,
        global_channels=speaker_channels,
    )
    return WaveNetDecoder(wavenet, CodeUpsampler(code_dim, local_channels, hop, mode=upsample))
