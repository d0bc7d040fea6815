"""Finite scalar quantization (Mentzer et al. 2023): round each of a few bounded channels.

No codebook, no loss term: ``z`` is projected to ``len(levels)`` channels (when ``dim`` differs),
channel ``i`` is bounded to ``levels[i]`` integer values and rounded (straight-through), and the
code is the mixed-radix number of those values, so the implicit codebook has ``prod(levels)``
entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vqkit.quantize.base import Quantizer, QuantizerOutput, code_stats, pointwise

# The paper's recommended levels for each codebook size (Mentzer et al. 2023, table 1).
FSQ_LEVELS = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}


def levels_for(num_codes: int) -> tuple[int, ...]:
    """The paper's levels for a codebook of ``num_codes`` (a key of :data:`FSQ_LEVELS`)."""
    if num_codes not in FSQ_LEVELS:
        sizes = ", ".join(f"2^{int(math.log2(k))}={k}" for k in FSQ_LEVELS)
        raise ValueError(
            f"FSQ has recommended levels only for num_codes in {{{sizes}}}, got {num_codes}; "
            f"give levels=[...] instead (num_codes is then their product)"
        )
    return FSQ_LEVELS[num_codes]


class FSQ(Quantizer):
    """Finite scalar quantization of ``(B, D, *spatial)`` tensors.

    Channel ``i`` (after the projection) is bounded by ``tanh`` to ``levels[i]`` steps, rounded
    with a straight-through gradient and scaled to ``[-1, 1]``; codes are
    ``sum_i idx_i * prod(levels[:i])`` with ``idx_i`` in ``[0, levels[i])``.
    All loss terms are zero (FSQ needs none).

    Args:
        levels: steps per channel, each >= 3 (e.g. ``[8, 5, 5, 5]`` for 1000 codes).
        dim: channel size D of the input; 1x1 linear projections ``D -> len(levels) -> D``
            are added when it differs from ``len(levels)`` (default: equal).
        eps: margin of the bound, so that ``tanh``'s extremes still round inside the range.

    Example:
        >>> fsq = FSQ([8, 5, 5, 5], dim=32)
        >>> out = fsq(torch.randn(2, 32, 6, 6))
        >>> out.codes.shape, fsq.num_codes
        (torch.Size([2, 6, 6]), 1000)
    """

    def __init__(self, levels: Sequence[int], dim: int | None = None, *, eps: float = 1e-3):
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 3:
            # With 2 levels the bound is one-sided (tanh's offset for even levels), so one of
            # the two values is almost never reached; the paper uses >= 5.
            raise ValueError(f"FSQ levels must be a non-empty list of ints >= 3, got {levels}")
        self.levels = levels
        self.num_codes = math.prod(levels)
        self.code_dim = len(levels)
        self.dim = dim if dim is not None else self.code_dim
        self.eps = eps
        lv = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.long), 0)
        half_width = torch.div(lv, 2, rounding_mode="floor")
        half_range = (lv - 1) * (1 + eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)  # even levels: one more step below zero
        # Not saved: they follow from `levels`, which rebuilds the module.
        self.register_buffer("_half_width", half_width, persistent=False)
        self.register_buffer("_half_range", half_range, persistent=False)
        self.register_buffer("_offset", offset, persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_range), persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        if self.dim != self.code_dim:
            self.project_in: nn.Module = nn.Linear(self.dim, self.code_dim)
            self.project_out: nn.Module = nn.Linear(self.code_dim, self.dim)
        else:
            self.project_in = self.project_out = nn.Identity()

    # Channels stay on axis 1 throughout: (B, D, *spatial) is viewed as (B, D, S), projected by
    # a batched matmul (`pointwise`), and the output is (B, D, S) again; the per-channel work on
    # (B, len(levels), S) is tiny next to the copies a channels-last layout would cost.

    def _channels(self, z: Tensor) -> Tensor:
        """``(B, D, *spatial)`` -> float32 ``(B, len(levels), S)``."""
        if z.dim() < 3 or z.shape[1] != self.dim:
            raise ValueError(
                f"expected (B, {self.dim}, *spatial) with 1 to 3 spatial axes, got shape "
                f"{tuple(z.shape)}"
            )
        return pointwise(self.project_in, z.float().flatten(2))

    def _bound(self, x: Tensor) -> Tensor:
        """``(B, d, S)`` -> values in ``(-half_width - 1/2, half_width + 1/2)`` per channel."""
        return (
            torch.tanh(x + self._shift[:, None]) * self._half_range[:, None] - self._offset[:, None]
        )

    def _ids(self, rounded: Tensor) -> Tensor:
        """Rounded values ``(B, d, S)`` -> mixed-radix ids ``(B, S)``."""
        return ((rounded + self._half_width[:, None]).long() * self._basis[:, None]).sum(1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise ``z`` ``(B, D, *spatial)``; codes ``(B, *spatial)``."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = self._channels(z)
            bounded = self._bound(x)
            rounded = bounded.detach().round()
            # value exactly the rounded grid point, gradient that of the bound
            q = (rounded + (bounded - bounded.detach())) / self._half_width[:, None]
            ids = self._ids(rounded)
            out = pointwise(self.project_out, q).view(z.shape).to(z.dtype)
            stats = code_stats(ids, self.num_codes)
            zero = x.new_zeros(())
        return QuantizerOutput(
            quantized=out,
            codes=ids.view(z.shape[:1] + z.shape[2:]),
            loss=zero,
            codebook_loss=zero,
            commitment_loss=zero,
            **stats._asdict(),
        )

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """``(B, D, *spatial)`` -> int64 codes ``(B, *spatial)``."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            ids = self._ids(self._bound(self._channels(z)).round())
            return ids.view(z.shape[:1] + z.shape[2:])

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(B, *spatial)`` -> quantised vectors ``(B, D, *spatial)`` (float32)."""
        if codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(
                f"codes must lie in [0, {self.num_codes}), got range "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        if codes.dim() < 2:
            raise ValueError(f"codes have shape (B, *spatial), got {tuple(codes.shape)}")
        flat = codes.long().flatten(1).unsqueeze(1)  # (B, 1, S)
        levels = self._basis.new_tensor(self.levels)[:, None]
        idx = (flat // self._basis[:, None]) % levels  # (B, d, S)
        q = (idx.float() - self._half_width[:, None]) / self._half_width[:, None]
        return pointwise(self.project_out, q).view(codes.shape[0], self.dim, *codes.shape[1:])

    def extra_repr(self) -> str:
        return f"levels={self.levels}, dim={self.dim}, num_codes={self.num_codes}"
