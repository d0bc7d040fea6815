"""Residual VQ: a stack of :class:`VectorQuantizer` levels, each quantising what the previous
levels left over (as in SoundStream/EnCodec)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vqkit.quantize.base import Quantizer, QuantizerOutput, code_stats
from vqkit.quantize.vq import VectorQuantizer


class ResidualVQ(Quantizer):
    """``levels`` quantizers applied to successive residuals; codes ``(B, levels, *spatial)``.

    Args:
        levels: number of quantizers.
        num_codes: codebook size of each level.
        dim: channel size D of the input.
        **kwargs: further :class:`VectorQuantizer` options, shared by all levels
            (``heads`` is not supported here).

    Example:
        >>> rvq = ResidualVQ(4, 256, 32)
        >>> rvq(torch.randn(2, 32, 50)).codes.shape
        torch.Size([2, 4, 50])
    """

    def __init__(self, levels: int, num_codes: int, dim: int, **kwargs) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        if kwargs.get("heads", 1) != 1:
            raise ValueError("ResidualVQ does not combine with heads > 1; use one or the other")
        seed = kwargs.pop("seed", 0)
        self.num_codes, self.dim = num_codes, dim
        self.levels = nn.ModuleList(
            VectorQuantizer(num_codes, dim, seed=seed + i, **kwargs) for i in range(levels)
        )

    def forward(self, z: Tensor) -> QuantizerOutput:
        residual = z
        total = torch.zeros_like(z)
        outs = []
        for vq in self.levels:
            out = vq(residual)
            level_value = out.quantized.detach()  # exactly this level's codes, as vectors
            total = total + level_value
            residual = residual - level_value
            outs.append(out)
        codes = torch.stack([o.codes for o in outs], dim=1)
        stats = [code_stats(codes[:, i], self.num_codes) for i in range(len(self.levels))]
        level_perplexity, level_usage, level_reachable = (torch.stack(s) for s in zip(*stats))
        return QuantizerOutput(
            quantized=total.detach() + (z - z.detach()),
            codes=codes,
            loss=sum(o.loss for o in outs),
            codebook_loss=sum(o.codebook_loss for o in outs),
            commitment_loss=sum(o.commitment_loss for o in outs),
            perplexity=level_perplexity.mean(),
            usage=level_usage.mean(),
            reachable_usage=level_reachable.mean(),
            level_perplexity=level_perplexity,
            level_usage=level_usage,
            level_reachable_usage=level_reachable,
        )

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        residual, codes = z, []
        for vq in self.levels:
            c = vq.encode(residual)
            residual = residual - vq.decode(c).to(z.dtype)
            codes.append(c)
        return torch.stack(codes, dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        if codes.dim() < 2 or codes.shape[1] != len(self.levels):
            raise ValueError(
                f"residual codes have shape (B, {len(self.levels)}, *spatial), got "
                f"{tuple(codes.shape)}"
            )
        return sum(vq.decode(codes[:, i]) for i, vq in enumerate(self.levels))
