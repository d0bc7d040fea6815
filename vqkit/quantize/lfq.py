"""Lookup-free quantization (MAGVIT-v2, Yu et al. 2023): the sign of each of ``log2 K`` channels.

``z`` is projected to ``bits = log2(num_codes)`` channels (when ``dim`` differs); each is quantised
to ``+-codebook_scale`` by its sign (straight-through), and the code is the binary number of the
signs. An entropy term keeps codes used: ``E_n[H(p(c | z_n))] - gamma H(E_n[p(c | z_n)])`` with
``p(c | z) = softmax_c(2 inv_temperature <z, c>)`` over the ``K`` implicit codes.

Cost: ``p(c | z)`` factorises over bits (``p(bit_i = 1 | z) = sigmoid(4 inv_temperature s z_i)``),
so the per-sample entropy is a sum of ``bits`` binary entropies, ``O(N bits)``, and the mean
distribution over the K codes is one ``(sqrt K, N) @ (N, sqrt K)`` product of the two halves'
distributions (:func:`summed_code_probs`); no ``N x K`` tensor is formed (the reference
implementation builds several). Both are exact, not approximations.

Under DDP the mean distribution is that of the global batch (an all-reduce of the per-rank sums),
and its gradient is scaled so that DDP's gradient averaging yields the gradient of the global
term (see :func:`_global_mean`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.quantize import codebook as cb
from vqkit.quantize.base import Quantizer, QuantizerOutput, channels_last, code_stats, restore


def binary_entropy_from_logits(logits: Tensor) -> Tensor:
    """``H(sigmoid(a))`` elementwise, stable for any ``a`` (no clamp)."""
    p = torch.sigmoid(logits)
    return p * F.softplus(-logits) + (1 - p) * F.softplus(logits)


def summed_code_probs(logits: Tensor, low_table: Tensor, high_table: Tensor) -> Tensor:
    """``sum_n p(c | z_n)`` over all ``K = 2^bits`` codes, without an ``N x K`` tensor.

    ``p(c | z_n)`` is a product over bits, so it splits into the low ``h`` bits and the rest:
    ``p(c | z_n) = p_lo[n, c mod 2^h] * p_hi[n, c >> h]``, each half a softmax over its
    ``2^h`` (or ``2^(bits-h)``) codes. The sum over n of these outer products is one
    ``(2^h, N) @ (N, 2^(bits-h))`` product: ``O(N sqrt K)`` memory, and autograd differentiates
    it as it is.

    Args:
        logits: ``(N, bits)`` bit logits (``p(bit_i = 1) = sigmoid(logits_i)``).
        low_table: ``(2^h, h)`` 0/1 bits of the low half's codes.
        high_table: ``(2^(bits-h), bits-h)`` those of the high half.

    Returns:
        ``(K,)`` float32, in code order ``c = sum_i bit_i 2^i``.
    """
    h = low_table.shape[1]
    p_lo = torch.softmax(logits[:, :h] @ low_table.t(), dim=1)  # (N, 2^h)
    p_hi = torch.softmax(logits[:, h:] @ high_table.t(), dim=1)  # (N, 2^(bits-h))
    return (p_hi.t() @ p_lo).reshape(-1)  # [c_hi, c_lo] -> c = c_hi 2^h + c_lo


def _global_mean(local_sum: Tensor, count: int, *, across_ranks: bool = True) -> Tensor:
    """Mean over every rank's rows, from this rank's ``sum`` over its ``count`` rows.

    The value is the global mean. The gradient to ``local_sum`` is ``world / N_global`` instead
    of ``1 / N_global``: DDP averages gradients over ranks (divides by ``world``), so the summed
    contributions of all ranks then give exactly the gradient of the global mean. In a single
    process (or with ``across_ranks=False``) this is the plain mean.
    """
    if not (across_ranks and cb.is_distributed()):
        return local_sum / count
    world = dist.get_world_size()
    stats = torch.cat([local_sum.detach(), local_sum.new_tensor([float(count)])])
    cb.all_reduce_sum_(stats)
    total = stats[-1]
    mean = stats[:-1] / total
    return mean + (local_sum - local_sum.detach()) * (world / total)


class LFQ(Quantizer):
    """Lookup-free quantization of ``(B, D, *spatial)`` tensors; codes ``(B, *spatial)``.

    Code of a vector: ``sum_i [z_i > 0] 2^i`` over its ``bits`` projected channels; its
    quantised value is ``codebook_scale * sign(z)`` (``+s`` for ``z_i > 0``, else ``-s``).

    Loss terms (MAGVIT-v2): ``commitment_loss = mean((z - sg[q])^2)`` (in the ``bits`` space,
    moves the encoder and ``project_in``), ``entropy_loss = E_n[H(p(c|z_n))] -
    diversity_gamma * H(E_n[p(c|z_n)])`` (moves the same), ``codebook_loss`` zero;
    ``loss = beta * commitment_loss + entropy_weight * entropy_loss``.

    Args:
        num_codes: K, a power of 2 (``bits = log2 K``).
        dim: channel size D of the input; 1x1 linear projections ``D -> bits -> D`` are added
            when it differs from ``bits``.
        beta: commitment weight.
        entropy_weight: weight of the entropy term (MAGVIT-v2: 0.1).
        diversity_gamma: weight of the codebook-entropy part inside the entropy term.
        inv_temperature: sharpness of ``p(c | z) = softmax(2 inv_temperature <z, c>)``.
        codebook_scale: magnitude ``s`` of the quantised values.

    Example:
        >>> lfq = LFQ(1024, dim=32)
        >>> out = lfq(torch.randn(2, 32, 6, 6))
        >>> out.codes.shape, lfq.bits
        (torch.Size([2, 6, 6]), 10)
    """

    def __init__(
        self,
        num_codes: int,
        dim: int | None = None,
        *,
        beta: float = 0.25,
        entropy_weight: float = 0.1,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        codebook_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if num_codes < 2 or num_codes & (num_codes - 1):
            up = 1 << max(1, (num_codes - 1).bit_length())
            raise ValueError(
                f"LFQ num_codes must be a power of 2 (bits = log2 K), got {num_codes}; try {up}"
            )
        if codebook_scale <= 0:
            raise ValueError(f"codebook_scale must be > 0, got {codebook_scale}")
        self.num_codes = num_codes
        self.bits = int(math.log2(num_codes))
        self.dim = dim if dim is not None else self.bits
        self.beta, self.entropy_weight = beta, entropy_weight
        self.diversity_gamma, self.inv_temperature = diversity_gamma, inv_temperature
        self.codebook_scale = codebook_scale
        powers = 2 ** torch.arange(self.bits)
        self.register_buffer("_powers", powers, persistent=False)
        low = self.bits // 2
        for name, n in (("_low_table", low), ("_high_table", self.bits - low)):
            table = (torch.arange(2**n).unsqueeze(1) // powers[:n] % 2).float()  # (2^n, n)
            self.register_buffer(name, table, persistent=False)
        if self.dim != self.bits:
            self.project_in: nn.Module = nn.Linear(self.dim, self.bits)
            self.project_out: nn.Module = nn.Linear(self.bits, self.dim)
        else:
            self.project_in = self.project_out = nn.Identity()

    def _rows(self, z: Tensor) -> tuple[Tensor, list]:
        if z.dim() >= 2 and z.shape[1] != self.dim:
            raise ValueError(
                f"expected {self.dim} channels at axis 1 (input (B, D, *spatial)), got shape "
                f"{tuple(z.shape)}"
            )
        flat, ps = channels_last(z.float())
        return self.project_in(flat), ps  # (N, bits)

    def _values(self, positive: Tensor) -> Tensor:
        s = self.codebook_scale
        return torch.where(positive, s, -s)

    def entropy_terms(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """``(per-sample entropy, entropy of the mean code distribution)`` of rows ``(N, bits)``.

        In training mode under DDP the mean distribution is over the global batch (every rank
        trains, so every rank joins the all-reduce); in eval mode it is this rank's, since
        evaluation may run on one rank alone.
        """
        logits = rows * (4.0 * self.inv_temperature * self.codebook_scale)  # bit logits
        per_sample = binary_entropy_from_logits(logits).sum(1).mean()
        summed = summed_code_probs(logits, self._low_table, self._high_table)
        mean_probs = _global_mean(summed, rows.shape[0], across_ranks=self.training)
        codebook_entropy = -(mean_probs * mean_probs.clamp_min(1e-30).log()).sum()
        return per_sample, codebook_entropy

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise ``z`` ``(B, D, *spatial)``; codes ``(B, *spatial)``."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            rows, ps = self._rows(z)
            if rows.shape[0] == 0:
                raise ValueError(f"nothing to quantize: the input {tuple(z.shape)} is empty")
            positive = rows.detach() > 0
            q = self._values(positive)
            ids = (positive.long() * self._powers).sum(1)
            straight = q + (rows - rows.detach())  # value exactly q
            commitment_loss = (rows - q).square().mean()
            per_sample, codebook_entropy = self.entropy_terms(rows)
            entropy_loss = per_sample - self.diversity_gamma * codebook_entropy
            out = restore(self.project_out(straight), ps).to(z.dtype)
            stats = code_stats(ids, self.num_codes)
        return QuantizerOutput(
            quantized=out,
            codes=restore(ids.unsqueeze(1), ps)[:, 0],
            loss=self.beta * commitment_loss + self.entropy_weight * entropy_loss,
            codebook_loss=rows.new_zeros(()),
            commitment_loss=commitment_loss,
            **stats._asdict(),
            entropy_loss=entropy_loss,
        )

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """``(B, D, *spatial)`` -> int64 codes ``(B, *spatial)``."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            rows, ps = self._rows(z)
            ids = ((rows > 0).long() * self._powers).sum(1)
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
        flat, ps = channels_last(codes.long().unsqueeze(1))  # (N, 1)
        q = self._values((flat // self._powers) % 2 == 1)  # (N, bits)
        return restore(self.project_out(q), ps)

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, "
            f"entropy_weight={self.entropy_weight}, diversity_gamma={self.diversity_gamma}"
        )
