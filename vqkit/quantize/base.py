"""The quantizer contract shared by every quantizer in vqkit.

A quantizer maps a tensor ``z`` of shape ``(B, D, *spatial)`` (1, 2 or 3 spatial axes) to a
:class:`QuantizerOutput`. ``encode(z)`` gives the integer codes and ``decode(codes)`` the
quantized vectors, so that ``decode(encode(z))`` equals ``forward(z).quantized`` in value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from einops import pack, rearrange, unpack
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """What a quantizer returns.

    Attributes:
        quantized: ``(B, D, *spatial)`` straight-through output ``z + sg[z_q - z]``.
        codes: ``(B, *spatial)`` int64 codes, or ``(B, heads, *spatial)`` with several heads,
            or ``(B, levels, *spatial)`` for residual VQ.
        loss: weighted sum ``codebook_weight * codebook_loss + beta * commitment_loss``.
        codebook_loss: ``||sg[z_e] - e||^2``; moves the codebook only (zero with EMA updates).
        commitment_loss: ``||z_e - sg[e]||^2``; moves the encoder only.
        perplexity: ``exp(entropy)`` of the batch's code histogram (residual VQ: the mean over
            its levels).
        usage: fraction of the codebook used in the batch (residual VQ: the mean over levels).
        reachable_usage: distinct codes used over the most a batch can use, ``min(K, lookups)``:
            a batch of 2,048 positions uses at most 2,048 of 65,536 codes, so ``usage`` alone
            would call that codebook collapsed (residual VQ: the mean over levels).
        level_perplexity, level_usage, level_reachable_usage: ``(levels,)`` the same for each
            level of a residual VQ; None for a single codebook.
        entropy_loss: LFQ's entropy term (per-sample entropy minus ``gamma`` times the entropy
            of the mean code distribution), already counted in ``loss``; None for quantizers
            without one.

    Quantizers without a learned codebook (FSQ, LFQ) report a zero ``codebook_loss``; FSQ has no
    loss term at all, so its ``loss`` and ``commitment_loss`` are zero too.
    """

    quantized: Tensor
    codes: Tensor
    loss: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    perplexity: Tensor
    usage: Tensor
    reachable_usage: Tensor | None = None
    level_perplexity: Tensor | None = None
    level_usage: Tensor | None = None
    level_reachable_usage: Tensor | None = None
    entropy_loss: Tensor | None = None


class Quantizer(nn.Module):
    """Interface: ``forward(z) -> QuantizerOutput``, ``encode(z) -> codes``, ``decode(codes)``."""

    num_codes: int
    dim: int

    def forward(self, z: Tensor) -> QuantizerOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def encode(self, z: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def channels_last(z: Tensor) -> tuple[Tensor, list]:
    """``(B, D, *spatial)`` -> ``(N, D)`` rows plus what :func:`restore` needs."""
    if z.dim() < 3:
        raise ValueError(
            f"expected a tensor (B, D, *spatial) with 1 to 3 spatial axes, got shape "
            f"{tuple(z.shape)}"
        )
    flat, ps = pack([rearrange(z, "b d ... -> b ... d")], "* d")
    return flat, ps


def restore(flat: Tensor, ps: list) -> Tensor:
    """Inverse of :func:`channels_last`: ``(N, D)`` -> ``(B, D, *spatial)``."""
    (z,) = unpack(flat, ps, "* d")
    return rearrange(z, "b ... d -> b d ...")


def pointwise(layer: nn.Module, x: Tensor) -> Tensor:
    """An ``nn.Linear`` (or ``nn.Identity``) on the channels of ``x`` ``(B, C_in, S)``.

    A 1x1 convolution as one batched matmul ``W @ x``: the channels stay on axis 1, so neither
    the input nor the output (nor their gradients) is copied to channels-last and back.

    Returns:
        ``(B, C_out, S)``.
    """
    if isinstance(layer, nn.Identity):
        return x
    out = torch.matmul(layer.weight, x)
    return out if layer.bias is None else out + layer.bias.unsqueeze(1)


class CodeStats(NamedTuple):
    """A batch's codebook health (:func:`code_stats`), named as in :class:`QuantizerOutput`."""

    perplexity: Tensor
    usage: Tensor
    reachable_usage: Tensor


def code_stats(codes: Tensor, num_codes: int) -> CodeStats:
    """Perplexity, fraction of codes used and fraction of the codes the batch could reach
    (``min(num_codes, codes.numel())`` of them) that it used, from a tensor of integer codes."""
    counts = torch.bincount(codes.reshape(-1), minlength=num_codes).float()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    used = (counts > 0).float().sum()
    reachable = max(1, min(num_codes, codes.numel()))
    return CodeStats(entropy.exp(), used / num_codes, used / reachable)
