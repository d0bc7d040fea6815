"""The VQ-VAE (van den Oord et al. 2017): encoder -> quantizer -> decoder -> likelihood.

The model receives its parts (as audiocraft's ``EncodecModel`` does), so tests and recipes can
swap any of them; the builders below assemble the paper's configuration for any ``dims``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vqkit.models.likelihood import Likelihood, build_likelihood
from vqkit.models.registry import register
from vqkit.nn.conv import Stride
from vqkit.nn.encoder import Decoder, Encoder, check_sizes
from vqkit.quantize import QuantizerOutput, build_quantizer


@dataclass
class VQVAEOutput:
    """What :meth:`VQVAE.forward` returns.

    Attributes:
        recon: ``(B, C, *spatial)`` the likelihood's mean, the reconstruction.
        params: ``(B, likelihood.out_channels(C), *spatial)`` raw decoder output.
        quant: the quantizer's output (codes, quantized latents, loss terms, perplexity).
        recon_loss: scalar reconstruction loss (the likelihood's training loss).
        loss: ``recon_loss + quant.loss``, the quantity to minimise.
    """

    recon: Tensor
    params: Tensor
    quant: QuantizerOutput
    recon_loss: Tensor
    loss: Tensor


class VQVAE(nn.Module):
    """A VQ-VAE assembled from its parts.

    Args:
        encoder: ``(B, C, *spatial) -> (B, D, *latent)``.
        quantizer: a :class:`vqkit.quantize.Quantizer` over ``D`` channels.
        decoder: ``(B, D, *latent) -> (B, likelihood.out_channels(C), *spatial)``.
        likelihood: a :class:`~vqkit.models.likelihood.Likelihood`, or its name.

    Attributes:
        config: ``{"builder": name, "kwargs": {...}}`` when made by a registered builder (the
            dict :func:`vqkit.models.build_model` takes), else None.

    Examples:
        >>> model = vqvae_image(hidden=32, res_hidden=8, num_codes=16, code_dim=8)
        >>> out = model(to_model(torch.rand(2, 3, 32, 32)))  # images in [0, 1]
        >>> out.recon.shape, out.quant.codes.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 8, 8]))
    """

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: nn.Module,
        decoder: nn.Module,
        *,
        likelihood: Likelihood | str,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder
        self.likelihood = (
            build_likelihood(likelihood) if isinstance(likelihood, str) else likelihood
        )
        self.config: dict | None = None

    def forward(self, x: Tensor) -> VQVAEOutput:
        """``x`` ``(B, C, *spatial)`` in [-0.5, 0.5] -> reconstruction, codes and losses."""
        z = self.encoder(x)  # (B, D, *latent)
        quant = self.quantizer(z)
        params = self.decoder(quant.quantized)  # (B, out_channels(C), *spatial)
        recon_loss = self.likelihood.loss(params, x)
        return VQVAEOutput(
            recon=self.likelihood.mean(params),
            params=params,
            quant=quant,
            recon_loss=recon_loss,
            loss=recon_loss + quant.loss,
        )

    def encode(self, x: Tensor) -> Tensor:
        """``(B, C, *spatial) -> (B, *latent)`` int64 codes."""
        return self.quantizer.encode(self.encoder(x))

    def decode_params(self, codes: Tensor) -> Tensor:
        """Codes ``(B, *latent)`` -> raw decoder output ``(B, out_channels(C), *spatial)``."""
        z_q = self.quantizer.decode(codes)
        return self.decoder(z_q.to(self._dtype()))

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(B, *latent)`` -> reconstruction ``(B, C, *spatial)``."""
        return self.likelihood.mean(self.decode_params(codes))

    @torch.no_grad()
    def nll_bits_per_dim(self, x: Tensor) -> Tensor:
        """``(B,)`` reconstruction NLL ``-log p(x | z_q(x))`` in bits per dim.

        Goes through ``encode``/``decode_params``, so no codebook state changes. This is the
        reconstruction term only: the paper's bound adds the prior's ``log K`` per latent.
        """
        return self.likelihood.nll_bits_per_dim(self.decode_params(self.encode(x)), x)

    @property
    def factor(self) -> tuple[int, ...]:
        """Downsampling factor per spatial axis from data to codes."""
        return tuple(self.encoder.factor)

    def _dtype(self) -> torch.dtype:
        param = next(self.decoder.parameters(), None)
        return param.dtype if param is not None else torch.get_default_dtype()


def _likelihood(spec: str | dict) -> Likelihood:
    """``"logistic"`` or ``{"name": "gaussian", "sigma": 0.1}`` -> a Likelihood."""
    if isinstance(spec, str):
        return build_likelihood(spec)
    if isinstance(spec, dict) and "name" in spec:
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return build_likelihood(spec["name"], **kwargs)
    raise ValueError(
        f"likelihood must be a name such as 'gaussian' or a dict like "
        f"{{'name': 'gaussian', 'sigma': 0.1}}, got {spec!r}"
    )


QUANTIZER_DEFAULTS: dict[str, Any] = {"ema": True, "kmeans_init": True, "restart_after": 100}
"""What every VQ-VAE builder gives :class:`~vqkit.quantize.VectorQuantizer` beyond its own
defaults: EMA codebook updates, k-means initialisation and dead-code restarts, the settings
every recipe trains with. A builder's ``quantizer=`` dict is laid over these."""


def make_quantizer(num_codes: int, code_dim: int, quantizer: dict[str, Any] | None) -> nn.Module:
    """The quantizer of a VQ-VAE builder: ``quantizer["kind"]`` (``vq`` by default; ``fsq``,
    ``lfq``, ``simvq``, ``residual``: :func:`~vqkit.quantize.build_quantizer`) with the rest of
    ``quantizer`` as its options; ``vq`` and ``residual`` lay them over
    :data:`QUANTIZER_DEFAULTS`. FSQ given ``levels`` takes ``prod(levels)`` codes."""
    extra = dict(quantizer or {})
    kind = extra.pop("kind", "vq")
    clash = {"num_codes", "dim"} & extra.keys()
    if clash:
        raise ValueError(
            f"quantizer={quantizer!r} sets {sorted(clash)}; pass num_codes= and code_dim= to the "
            f"builder instead"
        )
    beta = extra.get("beta", 0.0)
    if isinstance(beta, (int, float)) and not beta >= 0:
        raise ValueError(f"quantizer beta (commitment weight) must be >= 0, got {beta!r}")
    if kind in ("vq", "residual"):
        extra = {**QUANTIZER_DEFAULTS, **extra}
    if kind == "fsq" and extra.get("levels") is not None:
        num_codes = None  # K = prod(levels)
    return build_quantizer(kind, dim=code_dim, num_codes=num_codes, **extra)


@register("vqvae_nd")
def vqvae_nd(
    *,
    dims: int,
    in_channels: int,
    strides: Sequence[Stride],
    hidden: int = 128,
    res_hidden: int = 32,
    num_res_blocks: int = 2,
    num_codes: int = 512,
    code_dim: int = 64,
    likelihood: str | dict = "gaussian",
    quantizer: dict[str, Any] | None = None,
) -> VQVAE:
    """A VQ-VAE for data with ``dims`` spatial axes (the builder the modality builders call).

    Args:
        dims: 1 (audio), 2 (images) or 3 (video).
        in_channels: data channels C.
        strides: one stride per downsampling stage, each an int or one int per axis.
        hidden: channels of the encoder/decoder conv stacks.
        res_hidden: channels inside each residual block.
        num_res_blocks: residual blocks in each stack.
        num_codes: codebook size K.
        code_dim: latent channels D, the quantizer's ``dim``.
        likelihood: ``"gaussian"``, ``"logistic"`` or ``"categorical"``, or a dict
            ``{"name": ..., **kwargs}``.
        quantizer: further :class:`~vqkit.quantize.VectorQuantizer` keyword arguments
            (``ema``, ``kmeans_init``, ``restart_after``, ``beta``, ...) over
            :data:`QUANTIZER_DEFAULTS`.
    """
    # The builder's names, not the Encoder's: the config keys a user sets.
    check_sizes(in_channels=in_channels, hidden=hidden, res_hidden=res_hidden)
    check_sizes(num_codes=num_codes, code_dim=code_dim)
    lik = _likelihood(likelihood)
    net = {"strides": strides, "res_hidden": res_hidden, "num_res_blocks": num_res_blocks}
    return VQVAE(
        Encoder(dims, in_channels, hidden, code_dim, **net),
        make_quantizer(num_codes, code_dim, quantizer),
        Decoder(dims, code_dim, hidden, lik.out_channels(in_channels), **net),
        likelihood=lik,
    )


@register("vqvae_image")
def vqvae_image(
    *,
    in_channels: int = 3,
    hidden: int = 128,
    res_hidden: int = 32,
    num_res_blocks: int = 2,
    num_codes: int = 512,
    code_dim: int = 64,
    strides: Sequence[Stride] = (2, 2),
    likelihood: str | dict = "gaussian",
    quantizer: dict[str, Any] | None = None,
) -> VQVAE:
    """The image VQ-VAE; defaults are Sonnet's CIFAR-10 example (the paper uses ``hidden=256``).

    Two stride-2 stages map 32x32 images to an 8x8 grid of codes.

    Examples:
        >>> model = vqvae_image(num_codes=512, quantizer={"ema": True})
        >>> model.encode(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 8, 8])
    """
    return vqvae_nd(
        dims=2,
        in_channels=in_channels,
        strides=strides,
        hidden=hidden,
        res_hidden=res_hidden,
        num_res_blocks=num_res_blocks,
        num_codes=num_codes,
        code_dim=code_dim,
        likelihood=likelihood,
        quantizer=quantizer,
    )


@register("vqvae_video")
def vqvae_video(
    *,
    in_channels: int = 3,
    hidden: int = 64,
    res_hidden: int = 32,
    num_res_blocks: int = 2,
    num_codes: int = 256,
    code_dim: int = 64,
    strides: Sequence[Stride] = ((2, 2, 2), (1, 2, 2)),
    likelihood: str | dict = "gaussian",
    quantizer: dict[str, Any] | None = None,
) -> VQVAE:
    """The video VQ-VAE: :func:`vqvae_nd` with ``dims=3`` over ``(B, C, T, H, W)`` clips.

    Strides are per stage and per axis, time first: the default halves time and quarters
    height and width, so a 16-frame 32x32 clip becomes an ``(8, 8, 8)`` volume of codes.

    Examples:
        >>> model = vqvae_video(hidden=16, res_hidden=8, num_codes=32, code_dim=8)
        >>> model.encode(torch.zeros(1, 3, 16, 32, 32)).shape
        torch.Size([1, 8, 8, 8])
    """
    return vqvae_nd(
        dims=3,
        in_channels=in_channels,
        strides=strides,
        hidden=hidden,
        res_hidden=res_hidden,
        num_res_blocks=num_res_blocks,
        num_codes=num_codes,
        code_dim=code_dim,
        likelihood=likelihood,
        quantizer=quantizer,
    )
