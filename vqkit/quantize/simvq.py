"""SimVQ (Zhu et al. 2024): a frozen random codebook reparameterised by one learned linear map.

The codebook is ``C = F W^T`` with ``F`` ``(K, code_dim)`` frozen Gaussian codes and ``W``
``(D, code_dim)`` learned. The codebook loss moves ``W``, so every code moves at every step (the
whole space the codes span is rotated and scaled at once), which avoids the dead codes of a
plainly learned codebook. Lookup, straight-through and loss terms are VectorQuantizer's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.quantize import codebook as cb
from vqkit.quantize.base import Quantizer, QuantizerOutput, channels_last, code_stats, restore
from vqkit.quantize.vq import _LookupWithLosses


class SimVQ(Quantizer):
    """Nearest-code quantisation against ``frozen @ W^T`` for ``(B, D, *spatial)`` tensors.

    Loss terms as :class:`~vqkit.quantize.VectorQuantizer`: ``codebook_loss =
    ||sg[z] - e||^2`` moves only ``W`` (the frozen codes are a buffer), ``commitment_loss =
    ||z - sg[e]||^2`` moves only the input; ``loss = codebook_weight * codebook_loss +
    beta * commitment_loss`` (the paper's reference implementation: 1 and 0.25).
    The implicit codebook ``F W^T`` is formed once per forward in float32; distances, argmin
    and losses are float32 under autocast too.

    Args:
        num_codes: codebook size K.
        dim: channel size D of the input (and of the codes).
        beta: commitment weight.
        codebook_weight: weight of the codebook term.
        code_dim: dimension of the frozen codes (default D).
        rotation: pass the reconstruction gradient by the rotation trick (Fifty et al. 2024)
            instead of straight-through (as ``VectorQuantizer(rotation=True)``).
        seed: seed of the frozen codes (equal on every DDP rank).

    Example:
        >>> simvq = SimVQ(512, 64)
        >>> simvq(torch.randn(2, 64, 8, 8)).codes.shape
        torch.Size([2, 8, 8])
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        beta: float = 0.25,
        codebook_weight: float = 1.0,
        code_dim: int | None = None,
        rotation: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_codes < 2:
            raise ValueError(f"num_codes must be >= 2, got {num_codes}")
        self.num_codes, self.dim = num_codes, dim
        self.code_dim = code_dim or dim
        self.beta, self.codebook_weight, self.rotation = beta, codebook_weight, rotation
        gen = torch.Generator().manual_seed(seed)
        frozen = torch.randn(num_codes, self.code_dim, generator=gen) * self.code_dim**-0.5
        self.register_buffer("frozen_codebook", frozen)
        self.transform = nn.Linear(self.code_dim, dim, bias=False)  # W

    @property
    def codebook(self) -> Tensor:
        """The implicit codebook ``(K, D)`` in float32."""
        return F.linear(self.frozen_codebook.float(), self.transform.weight.float())

    def _rows(self, z: Tensor) -> tuple[Tensor, list]:
        if z.dim() >= 2 and z.shape[1] != self.dim:
            raise ValueError(
                f"expected {self.dim} channels at axis 1 (input (B, D, *spatial)), got shape "
                f"{tuple(z.shape)}"
            )
        return channels_last(z.float())

    def _nearest(self, rows: Tensor, table: Tensor) -> Tensor:
        """Nearest code of each row. With ``code_dim < D`` the distances are taken in the frozen
        codes' space (``<z, W f_k> = <W^T z, f_k>``, ``||W f_k||^2`` from the table): at
        K = 65,536, D = 64, code_dim 16 a quarter of the multiply-adds (benchmarks/quantizer.py)."""
        if self.code_dim >= self.dim:
            return cb.nearest_code(rows, table)
        weight = self.transform.weight.detach().float()  # (D, code_dim)
        return cb.nearest_code(
            rows @ weight, self.frozen_codebook.float(), sq_norms=table.pow(2).sum(1)
        )

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise ``z`` ``(B, D, *spatial)``; codes ``(B, *spatial)``."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            rows, ps = self._rows(z)
            if rows.shape[0] == 0:
                raise ValueError(f"nothing to quantize: the input {tuple(z.shape)} is empty")
            table = self.codebook
            ids = self._nearest(rows.detach(), table.detach())
            straight, codebook_loss, commitment_loss = _LookupWithLosses.apply(
                rows, table, ids, self.rotation
            )
            stats = code_stats(ids, self.num_codes)
        return QuantizerOutput(
            quantized=restore(straight, ps).to(z.dtype),
            codes=restore(ids.unsqueeze(1), ps)[:, 0],
            loss=self.codebook_weight * codebook_loss + self.beta * commitment_loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            **stats._asdict(),
        )

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """``(B, D, *spatial)`` -> int64 codes ``(B, *spatial)``."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            rows, ps = self._rows(z)
            ids = self._nearest(rows, self.codebook)
            return restore(ids.unsqueeze(1), ps)[:, 0]

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(B, *spatial)`` -> quantised vectors ``(B, D, *spatial)`` (float32)."""
        if codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(
                f"codes must lie in [0, {self.num_codes}), got range "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        rows = F.embedding(codes.long(), self.codebook)  # (B, *spatial, D)
        return rows.movedim(-1, 1)

    def extra_repr(self) -> str:
        opts = f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}"
        if self.code_dim != self.dim:
            opts += f", code_dim={self.code_dim}"
        return opts + (", rotation=True" if self.rotation else "")
