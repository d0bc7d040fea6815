"""The audio VQ-VAE's mel decoder: quantized latents + speaker -> log-mel frames.

``z_q (B, D, T') -> Decoder(dims=1) -> (B, n_mels, T' * prod(strides))``, the shared
:class:`vqkit.nn.Decoder` at frame rate, with the speaker fed to *every* layer by FiLM
(a per-channel scale and shift from the speaker's embedding, zero at initialisation). A
vocoder (:mod:`vqkit.models.vocoder`) turns the frames into a waveform. Decoding one
utterance's codes with another speaker's id converts the voice.

Example:
    >>> import torch
    >>> dec = MelDecoder(8, 40, strides=[2], hidden=16, res_hidden=8, num_res_blocks=2,
    ...                  num_speakers=3)
    >>> dec(torch.randn(2, 8, 5), torch.tensor([0, 2])).shape
    torch.Size([2, 40, 10])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from vqkit.nn.blocks import ResBlock, Upsample
from vqkit.nn.conv import Stride
from vqkit.nn.encoder import Decoder


def _width(module: nn.Module) -> int | None:
    """Output channels of a conv-like layer of the Decoder (None: an activation)."""
    if isinstance(module, ResBlock):
        return module.block[-1].out_channels
    if isinstance(module, Upsample):
        return module.conv.out_channels
    if isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
        return module.out_channels
    return None


class MelDecoder(nn.Module):
    """Latents at code rate -> log-mel frames, speaker-conditioned at every layer.

    Args:
        code_dim: latent channels D.
        n_mels: mel bands of the output.
        strides: the encoder's strides over frames (the Decoder undoes them); their product
            is the number of frames per code.
        hidden, res_hidden, num_res_blocks: the :class:`vqkit.nn.Decoder`.
        num_speakers: speakers of the embedding (None: no speaker input).
        speaker_channels: width of the speaker embedding (default ``hidden``).
        speaker_layers: FiLM the speaker into only the last this many conv-like layers (None:
            every layer but the output one), so the first layers read the codes alone.

    Shape:
        ``forward(z_q (B, D, T'), speaker (B,) or None) -> (B, n_mels, T' * factor)``.
    """

    def __init__(
        self,
        code_dim: int,
        n_mels: int,
        *,
        strides: Sequence[Stride],
        hidden: int = 128,
        res_hidden: int = 32,
        num_res_blocks: int = 4,
        num_speakers: int | None = None,
        speaker_channels: int | None = None,
        speaker_layers: int | None = None,
    ) -> None:
        super().__init__()
        self.code_dim, self.n_mels, self.num_speakers = code_dim, n_mels, num_speakers
        self.decoder = Decoder(
            1,
            code_dim,
            hidden,
            n_mels,
            strides=strides,
            res_hidden=res_hidden,
            num_res_blocks=num_res_blocks,
        )
        self.factor = math.prod(self.decoder.factor)  # frames per code
        # The layers run one by one so the speaker can enter after each conv-like one.
        stack = self.decoder.net[1]
        self.layers = [self.decoder.net[0], *stack.blocks, stack.act, *self.decoder.net[2:]]
        widths = [_width(m) for m in self.layers]
        last = max(i for i, w in enumerate(widths) if w is not None)  # the output layer: no FiLM
        self.film_at = [i for i, w in enumerate(widths) if w is not None and i != last]
        if speaker_layers is not None:
            if not 1 <= speaker_layers <= len(self.film_at):
                raise ValueError(
                    f"speaker_layers must lie in [1, {len(self.film_at)}] (the layers this "
                    f"decoder can condition; None: all), got {speaker_layers}"
                )
            self.film_at = self.film_at[-speaker_layers:]
        self.speaker_embed = None
        self.films = nn.ModuleList()
        if num_speakers is not None:
            speaker_channels = hidden if speaker_channels is None else speaker_channels
            self.speaker_embed = nn.Embedding(num_speakers, speaker_channels)
            for i in self.film_at:
                film = nn.Linear(speaker_channels, 2 * widths[i])
                nn.init.zeros_(film.weight)  # starts as the plain Decoder
                nn.init.zeros_(film.bias)
                self.films.append(film)

    def forward(self, z_q: Tensor, speaker: Tensor | None = None) -> Tensor:
        """``(B, D, T')`` latents, ``(B,)`` speaker ids -> ``(B, n_mels, T' * factor)`` log-mel."""
        if z_q.dim() != 3 or z_q.shape[1] != self.code_dim:
            raise ValueError(f"expected latents (B, {self.code_dim}, T'), got {tuple(z_q.shape)}")
        if (speaker is None) != (self.speaker_embed is None):
            raise ValueError(
                f"pass speaker ids (B,) iff the decoder has speakers (num_speakers="
                f"{self.num_speakers}), got speaker={speaker}"
            )
        spk = None if speaker is None else self.speaker_embed(speaker)  # (B, C_s)
        films = iter(self.films)
        h = z_q
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if spk is not None and i in self.film_at:
                scale, shift = next(films)(spk).unsqueeze(-1).chunk(2, dim=1)  # (B, C, 1) each
                h = h * (1.0 + scale) + shift
        return h
