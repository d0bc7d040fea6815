"""Vocoders: log-mel frames -> waveform, for the audio VQ-VAE's mel decoder.

Both read the log-mel of :class:`vqkit.audio.LogMel` as the log-mel encoder computes it
(``sample_rate``, ``n_mels``, a frame every ``mel_hop`` samples, 25 ms window, zero padding;
frame f centred on sample ``f * mel_hop``), ``(B, n_mels, F)``, and return ``(B, F * mel_hop)``
float waveforms in ``[-1, 1]`` from ``render``:

* :class:`GriffinLimVocoder` (``griffinlim``): least-squares inverse of the mel filters, then
  Griffin-Lim phase recovery. No training.
* :class:`WaveNetVocoder` (``wavenet_vocoder``): the project's :class:`~vqkit.models.WaveNet`
  over 8-bit mu-law classes, conditioned locally on the log-mel (each sample on its nearest
  frame), trained by teacher forcing on the true log-mel of real audio (:meth:`loss`); it renders
  with ``WaveNet.generate`` (cached sampler).

Example:
    >>> voc = griffinlim(sample_rate=8000, n_mels=40, mel_hop=128)
    >>> voc.render(torch.randn(2, 40, 10)).shape
    torch.Size([2, 1280])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vqkit.audio import LogMel
from vqkit.models.registry import register
from vqkit.models.wavenet import WaveNet

LOG_FLOOR = 1e-5  # what LogMel adds before the log
GL_ROWS = 8  # rows Griffin-Lim renders at a time when it shows progress


def _logmel(sample_rate: int, n_mels: int, mel_hop: int) -> LogMel:
    """The log-mel encoder's features (:class:`vqkit.models.vqvae_audio.LogMelEncoder`)."""
    return LogMel(
        sample_rate, n_mels=n_mels, hop_ms=1000.0 * mel_hop / sample_rate, pad_mode="constant"
    )


def _check_mel(mel: Tensor, n_mels: int) -> None:
    if not isinstance(mel, Tensor) or mel.dim() != 3 or mel.shape[1] != n_mels:
        got = tuple(mel.shape) if isinstance(mel, Tensor) else type(mel).__name__
        raise ValueError(f"log-mel must be (B, {n_mels}, frames), got {got}")


class GriffinLimVocoder(nn.Module):
    """Log-mel -> power spectrogram (non-negative least squares through the mel filters) ->
    Griffin-Lim.

    Args:
        sample_rate, n_mels, mel_hop: the log-mel's parameters.
        n_iter: Griffin-Lim iterations.
        momentum: Griffin-Lim's momentum (0.99 in torchaudio).
    """

    def __init__(
        self, sample_rate: int, n_mels: int, mel_hop: int, *, n_iter: int = 32, momentum=0.99
    ):
        super().__init__()
        import torchaudio

        self.features = _logmel(sample_rate, n_mels, mel_hop)
        self.sample_rate, self.n_mels, self.mel_hop = sample_rate, n_mels, mel_hop
        spec = self.features.mel.spectrogram
        self.register_buffer("pinv", torch.linalg.pinv(self.features.mel.mel_scale.fb))
        self.griffinlim = torchaudio.transforms.GriffinLim(
            n_fft=spec.n_fft,
            n_iter=n_iter,
            win_length=spec.win_length,
            hop_length=spec.hop_length,
            power=spec.power,
            momentum=momentum,
            rand_init=False,
        )

    @torch.no_grad()
    def render(self, logmel: Tensor, *, progress: str | None = None, **_: object) -> Tensor:
        """``(B, n_mels, F)`` log-mel -> ``(B, F * mel_hop)`` waveform (deterministic: each row
        renders as it would alone). ``progress``: a bar over the rows with this title, rendered
        ``GL_ROWS`` at a time (the same waveforms)."""
        _check_mel(logmel, self.n_mels)
        if progress is not None:
            out = []
            with tqdm(total=logmel.shape[0], desc=progress, unit="row", leave=False) as bar:
                for rows in logmel.split(GL_ROWS):
                    out.append(self.render(rows))
                    bar.update(len(rows))
            return torch.cat(out)
        mel = (logmel.float().exp() - LOG_FLOOR).clamp_min(0.0)  # (B, n_mels, F) power
        power = (mel.transpose(1, 2) @ self.pinv).clamp_min(0.0).transpose(1, 2)  # (B, bins, F)
        # The encoder drops the frame centred just past the end; give Griffin-Lim one more
        # (a copy of the last) so the output covers F * mel_hop samples.
        power = torch.cat([power, power[..., -1:]], dim=-1)
        # torch's FFT rounds a lone row otherwise than a row of a batch (CPU, torch 2.13,
        # AVX512: up to 2e-4 apart after 32 iterations): a lone row renders as a pair, so every
        # row's waveform is the same in any batch.
        lone = power.shape[0] == 1
        wav = self.griffinlim(power.expand(2, -1, -1) if lone else power)[: len(power)]
        return wav[..., : logmel.shape[-1] * self.mel_hop].clamp(-1.0, 1.0)

    def render_many(
        self, mels: list[Tensor], *, progress: str | None = None, **_: object
    ) -> list[Tensor]:
        """Log-mels ``(n_mels, F_i)`` of any lengths -> waveforms ``(F_i * mel_hop,)``, each
        rendered alone (Griffin-Lim reads every frame, so padding would change the rest);
        ``progress``: a bar over them with this title."""
        bar = tqdm(mels, desc=progress, unit="row", disable=progress is None, leave=False)
        return [self.render(m[None])[0] for m in bar]


class MelUpsampler(nn.Module):
    """Log-mel frames ``(B, n_mels, F)`` -> sample-rate conditioning ``(B, C_l, F * hop)``:
    per-band normalisation (buffers set by :meth:`WaveNetVocoder.fit_norm`), a 1x1 conv, and
    each sample ``t`` given the frame nearest to it, ``round(t / hop)`` (the last frame for the
    final half hop), so a sample is conditioned only on a frame whose window covers it."""

    def __init__(self, n_mels: int, channels: int, hop: int) -> None:
        super().__init__()
        self.n_mels, self.hop = n_mels, hop
        self.register_buffer("mean", torch.zeros(n_mels, 1))
        self.register_buffer("std", torch.ones(n_mels, 1))
        self.proj = nn.Conv1d(n_mels, channels, 1)

    def frame_of(self, num_samples: int, num_frames: int, device=None) -> Tensor:
        """``(T,)`` index of the frame conditioning each sample."""
        t = torch.arange(num_samples, device=device)
        return ((t + self.hop // 2) // self.hop).clamp(max=num_frames - 1)

    def forward(self, mel: Tensor) -> Tensor:
        h = self.proj((mel - self.mean) / self.std)  # (B, C_l, F)
        return h[..., self.frame_of(mel.shape[-1] * self.hop, mel.shape[-1], mel.device)]


class WaveNetVocoder(nn.Module):
    """WaveNet over mu-law classes conditioned on log-mel frames.

    Args:
        wavenet: a :class:`WaveNet` with ``local_channels == upsampler.proj.out_channels`` and
            no speakers (the frames carry the voice).
        upsampler: a :class:`MelUpsampler`.
        sample_rate: audio rate (for :meth:`logmel` of training audio).
    """

    def __init__(self, wavenet: WaveNet, upsampler: MelUpsampler, sample_rate: int) -> None:
        super().__init__()
        if wavenet.local_channels != upsampler.proj.out_channels:
            raise ValueError("wavenet.local_channels must equal the upsampler's channels")
        self.wavenet, self.upsampler = wavenet, upsampler
        self.sample_rate, self.n_mels, self.mel_hop = sample_rate, upsampler.n_mels, upsampler.hop
        self.features = _logmel(sample_rate, self.n_mels, self.mel_hop)

    @property
    def classes(self) -> int:
        return self.wavenet.in_classes

    @torch.no_grad()
    def logmel(self, audio: Tensor) -> Tensor:
        """Mu-law classes ``(B, T)`` (T a multiple of mel_hop) -> their true log-mel
        ``(B, n_mels, T / mel_hop)``, as the log-mel encoder computes it."""
        import torchaudio.functional as AF

        wav = AF.mu_law_decoding(audio, self.classes).float()
        return self.features(wav)[..., : audio.shape[-1] // self.mel_hop]

    @torch.no_grad()
    def fit_norm(self, mels: list[Tensor]) -> None:
        """Set the per-band normalisation from training log-mel ``(n_mels, F_i)`` frames."""
        feats = torch.cat([m.reshape(self.n_mels, -1).float() for m in mels], dim=1)
        self.upsampler.mean.copy_(feats.mean(1, keepdim=True))
        self.upsampler.std.copy_(feats.std(1, keepdim=True).clamp_min(1e-3))

    def forward(self, logmel: Tensor, audio: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, classes, T)``; ``logits[:, :, t]`` predicts ``audio[:, t]``
        given ``audio[:, :t]`` and the frames. ``logmel`` ``(B, n_mels, T / mel_hop)``."""
        _check_mel(logmel, self.n_mels)
        if audio.shape[-1] != logmel.shape[-1] * self.mel_hop:
            raise ValueError(
                f"audio of {audio.shape[-1]} samples does not match {logmel.shape[-1]} frames "
                f"of {self.mel_hop} samples"
            )
        local = self.upsampler(logmel.to(self.upsampler.proj.weight.dtype))
        return self.wavenet(self.wavenet.shift_right(audio), local)

    def loss(self, audio: Tensor, logmel: Tensor | None = None) -> Tensor:
        """Mean cross-entropy (nats per sample) of mu-law ``audio`` ``(B, T)`` given its true
        log-mel (computed from the audio when not given)."""
        logmel = self.logmel(audio) if logmel is None else logmel
        return F.cross_entropy(self(logmel, audio), audio)

    @torch.inference_mode()
    def render(
        self,
        logmel: Tensor,
        *,
        temperature: float = 1.0,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        cached: bool = True,
        progress: str | None = None,
    ) -> Tensor:
        """``(B, n_mels, F)`` log-mel -> ``(B, F * mel_hop)`` waveform, one sample at a time.

        Args:
            temperature: divides the logits (0: argmax).
            seed: seeds a generator on the model's device when ``generator`` is None.
            generator: for reproducible samples.
            cached: the cached sampler (False: the slow reference, same samples).
            progress: title of a progress bar over the samples (None: none).
        """
        classes = self.generate(
            logmel, temperature=temperature, seed=seed, generator=generator, cached=cached,
            progress=progress,
        )  # fmt: skip
        import torchaudio.functional as AF

        return AF.mu_law_decoding(classes, self.classes).float()

    def render_many(self, mels: list[Tensor], **kwargs: object) -> list[Tensor]:
        """Log-mels ``(n_mels, F_i)`` of any lengths -> waveforms ``(F_i * mel_hop,)``, in one
        batch: each is padded with copies of its last frame, which conditions its last samples
        already, so its samples see the frames they would see alone (the sampler is causal)."""
        width = max(m.shape[-1] for m in mels)
        batch = torch.stack(
            [torch.cat([m, m[:, -1:].expand(-1, width - m.shape[-1])], 1) for m in mels]
        )
        wav = self.render(batch, **kwargs)
        return [w[: m.shape[-1] * self.mel_hop] for w, m in zip(wav, mels)]

    @torch.inference_mode()
    def generate(
        self, logmel, *, temperature=1.0, seed=0, generator=None, cached=True, progress=None
    ) -> Tensor:
        """As :meth:`render`, returning mu-law classes ``(B, F * mel_hop)``."""
        _check_mel(logmel, self.n_mels)
        device = self.upsampler.proj.weight.device
        if generator is None and seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        local = self.upsampler(logmel.to(device=device, dtype=self.upsampler.proj.weight.dtype))
        return self.wavenet.generate(
            local.shape[-1],
            local=local,
            temperature=temperature,
            generator=generator,
            cached=cached,
            progress=progress,
        )


@register("griffinlim")
def griffinlim(
    *, sample_rate: int, n_mels: int = 40, mel_hop: int = 128, n_iter: int = 32
) -> GriffinLimVocoder:
    """Griffin-Lim vocoder for the log-mel of the log-mel encoder (no weights to train)."""
    return GriffinLimVocoder(sample_rate, n_mels, mel_hop, n_iter=n_iter)


@register("wavenet_vocoder")
def wavenet_vocoder(
    *,
    sample_rate: int,
    n_mels: int = 40,
    mel_hop: int = 128,
    classes: int = 256,
    local_channels: int | None = None,
    residual_channels: int = 32,
    skip_channels: int | None = None,
    gate_channels: int | None = None,
    kernel_size: int = 2,
    layers_per_stack: int = 8,
    stacks: int = 1,
) -> WaveNetVocoder:
    """WaveNet vocoder on the log-mel encoder's frames (train it with :meth:`WaveNetVocoder.loss`
    on real audio; set its input normalisation first with :meth:`WaveNetVocoder.fit_norm`).

    Example:
        >>> voc = wavenet_vocoder(sample_rate=8000, mel_hop=16, residual_channels=8,
        ...                       layers_per_stack=3)
        >>> voc.render(torch.randn(1, 40, 3)).shape
        torch.Size([1, 48])
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
    )
    return WaveNetVocoder(wavenet, MelUpsampler(n_mels, local_channels, mel_hop), sample_rate)
