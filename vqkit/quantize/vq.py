"""VectorQuantizer: the one vector-quantisation layer of vqkit, for tensors of any rank."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqkit.quantize import codebook as cb
from vqkit.quantize.base import Quantizer, QuantizerOutput, channels_last, code_stats, restore

RESTART_FROM = ("random", "error")  # where restarted codes are drawn from


class _LookupWithLosses(torch.autograd.Function):
    """Codebook lookup, straight-through output and both loss terms in one pass.

    ``(rows (N, C), table (K, C), ids (N,), rotation)`` -> ``(out, codebook_loss,
    commitment_loss)`` with

    * ``out`` = ``table[ids]`` in value, gradient the identity to ``rows`` (straight-through),
      or with ``rotation`` the rotation trick's ``lambda R^T g`` (see :func:`rotation_grad`);
    * ``codebook_loss`` = ``mean((sg[rows] - table[ids])^2)``: gradient to ``table`` only;
    * ``commitment_loss`` = ``mean((rows - sg[table[ids]])^2)``: gradient to ``rows`` only.

    The two losses have the same value, so the difference ``rows - table[ids]`` is formed once
    and kept for the backward pass, which writes each gradient directly: the codebook's as one
    ``index_add`` over the rows (no one-hot), the rows' as one fused multiply-add.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, table: Tensor, ids: Tensor, rotation: bool = False):  # noqa: D102
        quantized = table.index_select(0, ids)
        diff = rows - quantized
        flat = diff.view(-1)
        loss = torch.dot(flat, flat) / flat.numel()
        if rotation:
            ctx.save_for_backward(diff, ids, rows, quantized)
        else:
            ctx.save_for_backward(diff, ids)
        ctx.num_codes, ctx.rotation = table.shape[0], rotation
        ctx.mark_non_differentiable(ids)
        return quantized, loss, loss.clone()

    @staticmethod
    def backward(ctx, grad_out, grad_codebook, grad_commitment):  # noqa: D102
        diff, ids, *rotation_inputs = ctx.saved_tensors
        scale = 2.0 / diff.numel()
        grad_rows = grad_table = None
        if ctx.needs_input_grad[0]:
            grad_rows = diff * (scale * grad_commitment)
            if grad_out is not None:
                if ctx.rotation:
                    grad_out = rotation_grad(*rotation_inputs, grad_out)
                grad_rows += grad_out
        if ctx.needs_input_grad[1]:
            grad_table = diff.new_zeros(ctx.num_codes, diff.shape[1]).index_add_(0, ids, diff)
            grad_table *= -scale * grad_codebook
        return grad_rows, grad_table, None, None


def rotation_grad(rows: Tensor, quantized: Tensor, grad: Tensor, eps: float = 1e-6) -> Tensor:
    """The rotation trick's gradient (Fifty et al. 2024, sec. 4.2) for ``(N, C)`` rows.

    The forward value stays ``q`` exactly; the backward treats ``q`` as ``lambda R z`` with
    ``R`` the rotation taking ``u = z/|z|`` to ``q^ = q/|q|`` (``R = I - 2 w w^T + 2 q^ u^T``,
    ``w = (u + q^)/|u + q^|``) and ``lambda = |q|/|z|``, both held constant, so

        ``dL/dz = lambda R^T g = lambda (g - 2 w (w.g) + 2 u (q^.g))``.

    Norms below ``eps`` are clamped (as vector-quantize-pytorch does).
    """
    z_norm = rows.norm(dim=1, keepdim=True).clamp_min(eps)
    q_norm = quantized.norm(dim=1, keepdim=True).clamp_min(eps)
    u, q_hat = rows / z_norm, quantized / q_norm
    w = F.normalize(u + q_hat, dim=1, eps=eps)
    wg = (w * grad).sum(1, keepdim=True)
    qg = (q_hat * grad).sum(1, keepdim=True)
    return (q_norm / z_norm) * (grad - 2.0 * wg * w + 2.0 * qg * u)


class VectorQuantizer(Quantizer):
    """Nearest-neighbour vector quantisation with a straight-through estimator.

    Works on ``z`` of shape ``(B, D, *spatial)`` with 1, 2 or 3 spatial axes in one code path.
    Distances, argmin and codebook statistics are computed in float32 even under autocast.

    Loss terms (van den Oord et al. 2017, eq. 3), kept apart so each can be checked:
    ``codebook_loss = ||sg[z_e] - e||^2`` moves only the codebook, ``commitment_loss =
    ||z_e - sg[e]||^2`` moves only the encoder; ``loss = codebook_weight * codebook_loss +
    beta * commitment_loss``. With ``ema=True`` the codebook is an EMA buffer and the codebook
    term is zero.

    Args:
        num_codes: codebook size K.
        dim: channel size D of the input.
        beta: commitment weight (paper: 0.25; robust in 0.1-2.0).
        codebook_weight: weight of the codebook term.
        ema: update the codebook by exponential moving averages instead of the codebook loss.
        decay: EMA decay.
        eps: Laplace smoothing of EMA counts.
        kmeans_init: initialise the codebook by k-means on the first training batch.
        kmeans_iters: Lloyd iterations of that k-means.
        restart_after: re-seed codes unused for this many training steps from the current
            encoder outputs (None: never).
        restart_below: also re-seed codes whose average use per step (an EMA with ``decay``
            of their counts, starting at the mean count of the first step) falls below this
            many vectors (None: never). Rarely used codes then move to where the data is dense,
            which evens out usage and raises perplexity (as in Jukebox, Dhariwal et al. 2020).
        restart_from: where restarted codes land: ``"random"`` draws encoder outputs of the
            step uniformly; ``"error"`` draws them with probability proportional to their
            squared distance from their current code (k-means++ style), so a new code goes
            where the quantisation error is largest.
        cosine: l2-normalise inputs and codes (distances are then cosine distances).
        code_dim: look codes up in this smaller dimension (linear projections in and out).
        heads: split D into this many groups, each quantised with the shared codebook
            (the paper's CIFAR-10 latent has 10 codes per position); codes become
            ``(B, heads, *spatial)``.
        rotation: pass the reconstruction gradient through the quantizer by the rotation trick
            (Fifty et al. 2024) instead of straight-through: the gradient is rotated from the
            code's direction to the input's and rescaled by ``|e|/|z|`` (in lookup space, after
            ``code_dim``'s projection and ``cosine``'s normalisation); the forward value and the
            loss terms are unchanged.
        seed: seed of the k-means and restart draws (equal on every DDP rank).

    Example:
        >>> vq = VectorQuantizer(512, 64)
        >>> out = vq(torch.randn(2, 64, 8, 8))
        >>> out.codes.shape, out.quantized.shape
        (torch.Size([2, 8, 8]), torch.Size([2, 64, 8, 8]))
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        beta: float = 0.25,
        codebook_weight: float = 1.0,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        restart_after: int | None = None,
        restart_below: float | None = None,
        restart_from: str = "random",
        cosine: bool = False,
        code_dim: int | None = None,
        heads: int = 1,
        rotation: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_codes < 2:
            raise ValueError(f"num_codes must be >= 2, got {num_codes}")
        if heads < 1 or dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        if restart_after is not None and restart_after < 1:
            raise ValueError(f"restart_after must be >= 1 or None, got {restart_after}")
        if restart_below is not None and not restart_below > 0:
            raise ValueError(f"restart_below must be > 0 or None, got {restart_below}")
        if restart_from not in RESTART_FROM:
            raise ValueError(f"restart_from must be one of {RESTART_FROM}, got {restart_from!r}")
        self.num_codes, self.dim, self.heads = num_codes, dim, heads
        self.beta, self.codebook_weight = beta, codebook_weight
        self.ema, self.decay, self.eps = ema, decay, eps
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.restart_after, self.cosine, self.seed = restart_after, cosine, seed
        self.restart_below, self.restart_from = restart_below, restart_from
        self.rotation = rotation
        head_dim = dim // heads
        self.code_dim = code_dim or head_dim
        if code_dim is not None and code_dim != head_dim:
            self.project_in: nn.Module = nn.Linear(head_dim, code_dim)
            self.project_out: nn.Module = nn.Linear(code_dim, head_dim)
        else:
            self.project_in = self.project_out = nn.Identity()

        init = torch.empty(num_codes, self.code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.register_buffer("codebook", init)
            # Consistent start (codebook == embed_sum / cluster_size), so a code unused at
            # first decays towards nowhere instead of exploding as with zero counts.
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        if restart_below is not None:  # only then, so older checkpoints load unchanged
            # EMA of each code's count per step; negative until the first step sets it.
            self.register_buffer("usage", torch.full((num_codes,), -1.0))

    # ------------------------------------------------------------------------------------------
    def _rows(self, z: Tensor) -> tuple[Tensor, list]:
        """``(B, D, *spatial)`` -> float32 rows ``(N * heads, code_dim)`` in lookup space."""
        if z.dim() >= 2 and z.shape[1] != self.dim:  # fewer axes: channels_last says so
            raise ValueError(
                f"expected {self.dim} channels at axis 1 (input (B, D, *spatial)), got shape "
                f"{tuple(z.shape)}"
            )
        flat, ps = channels_last(z.float())
        rows = flat.reshape(-1, self.dim // self.heads)  # (N * heads, D / heads)
        rows = self.project_in(rows)
        if self.cosine:
            rows = F.normalize(rows, dim=1)
        return rows, ps

    def _codes_out(self, ids: Tensor, ps: list) -> Tensor:
        """Row ids ``(N * heads,)`` -> codes ``(B, *spatial)`` or ``(B, heads, *spatial)``."""
        ids = restore(ids.view(-1, self.heads), ps)  # (B, heads, *spatial)
        return ids[:, 0] if self.heads == 1 else ids

    def _lookup_table(self) -> Tensor:
        table = self.codebook.float()
        return F.normalize(table, dim=1) if self.cosine else table

    def _to_output_space(self, rows: Tensor, ps: list, dtype: torch.dtype) -> Tensor:
        rows = self.project_out(rows).reshape(-1, self.dim)  # (N, D)
        return restore(rows, ps).to(dtype)

    # ------------------------------------------------------------------------------------------
    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise ``z`` ``(B, D, *spatial)``; updates codebook state in training mode."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            rows, ps = self._rows(z)
            if rows.shape[0] == 0:  # the losses would be NaN and k-means would have no data
                raise ValueError(f"nothing to quantize: the input {tuple(z.shape)} is empty")
            if self.training and not bool(self.initialized):
                self._kmeans_init(rows.detach())
            table = self._lookup_table()
            ids = cb.nearest_code(rows.detach(), table.detach())
            straight, codebook_loss, commitment_loss = _LookupWithLosses.apply(
                rows, table, ids, self.rotation
            )
            if self.ema:  # the EMA moves the codebook; no loss term does
                codebook_loss = rows.new_zeros(())

            if self.training:
                self._update_state(rows.detach(), ids)
            out = self._to_output_space(straight, ps, z.dtype)
            codes = self._codes_out(ids, ps)
            stats = code_stats(ids, self.num_codes)
        return QuantizerOutput(
            quantized=out,
            codes=codes,
            loss=self.codebook_weight * codebook_loss + self.beta * commitment_loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            **stats._asdict(),
        )

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """``(B, D, *spatial)`` -> int64 codes ``(B, *spatial)`` (``(B, heads, *spatial)``)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            rows, ps = self._rows(z)
            return self._codes_out(cb.nearest_code(rows, self._lookup_table()), ps)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes from :meth:`encode` -> quantised vectors ``(B, D, *spatial)`` (float32)."""
        if codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(
                f"codes must lie in [0, {self.num_codes}), got range "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        if self.heads == 1:
            codes = codes.unsqueeze(1)
        elif codes.dim() < 3 or codes.shape[1] != self.heads:
            raise ValueError(
                f"codes of a {self.heads}-head quantizer have shape (B, {self.heads}, *spatial), "
                f"got {tuple(codes.shape)}"
            )
        rows = F.embedding(rearrange(codes, "b h ... -> b ... h").long(), self._lookup_table())
        rows = self.project_out(rows)  # (B, *spatial, heads, head_dim)
        return rearrange(rows, "b ... h c -> b (h c) ...")

    # ------------------------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        """A CPU generator that advances with every draw, identical on all DDP ranks."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.draws))
        self.draws += 1
        return gen

    @torch.no_grad()
    def init_codebook(
        self, z: Tensor, *, iters: int | None = None, counts_total: float | None = None
    ) -> None:
        """Set the codebook to k-means centres of many encoder outputs, before training.

        ``z`` is ``(N, D)`` rows (or ``(B, D, *spatial)``) in the input space; they are mapped
        to lookup space as :meth:`forward` maps its input (``heads``, ``code_dim``'s projection,
        ``cosine``), then Lloyd's k-means (k-means++ seeds, ``iters`` iterations, default
        ``kmeans_iters``, seeded by ``seed``) runs over every row, not a subsample. The codebook
        counts as initialised, so the first training batch no longer re-fits it
        (``kmeans_init``). With ``ema``, the counts of the EMA start at each centre's share of
        ``counts_total`` (default: the rows given), so that a per-step count scale can be
        kept.
        """
        if z.dim() == 2:  # (N, D) rows: one spatial axis of length 1
            z = z.unsqueeze(-1)
        rows, _ = self._rows(z.detach())
        if rows.shape[0] < self.num_codes:
            raise ValueError(
                f"init_codebook needs at least num_codes={self.num_codes} rows, got {rows.shape[0]}"
            )
        if counts_total is not None and not counts_total > 0:
            raise ValueError(f"counts_total must be > 0, got {counts_total}")
        self._kmeans_init(rows, iters=iters, max_rows=rows.shape[0], counts_total=counts_total)

    @torch.no_grad()
    def _kmeans_init(
        self,
        rows: Tensor,
        *,
        iters: int | None = None,
        max_rows: int | None = None,
        counts_total: float | None = None,
    ) -> None:
        data = cb.gather_rows(rows)
        extra = {} if max_rows is None else {"max_rows": max(max_rows, data.shape[0])}
        centroids, counts = cb.kmeans(
            data,
            self.num_codes,
            iters=self.kmeans_iters if iters is None else iters,
            generator=self._generator(),
            **extra,
        )
        if counts_total is not None:
            counts = counts * (counts_total / counts.sum().clamp_min(1.0))
        cb.broadcast_(centroids)
        cb.broadcast_(counts)
        self.codebook.data.copy_(centroids)
        if self.ema:
            self.cluster_size.copy_(counts.clamp_min(1.0))
            self.embed_sum.copy_(centroids * self.cluster_size.unsqueeze(1))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update_state(self, rows: Tensor, ids: Tensor) -> None:
        counts = cb.all_reduce_sum_(cb.code_counts(ids, self.num_codes))
        # restart_from="error": squared error of each row against the code it took (before this
        # step moves codes); no other setting pays for it
        by_error = self.restart_from == "error"
        error = (rows - self._lookup_table()[ids]).square().sum(1) if by_error else None
        if self.ema:
            sums = cb.all_reduce_sum_(cb.code_sums(rows, ids, self.num_codes))
            new = cb.ema_update(
                self.cluster_size, self.embed_sum, counts, sums, decay=self.decay, eps=self.eps
            )
            self.codebook.copy_(new)
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        if self.restart_below is not None:
            if bool((self.usage < 0).all()):
                self.usage.fill_(float(counts.mean()))
            self.usage.lerp_(counts, 1.0 - self.decay)
        if self.restart_after is not None or self.restart_below is not None:
            self._restart_dead(rows, error, counts)

    @torch.no_grad()
    def _restart_dead(self, rows: Tensor, error: Tensor | None, counts: Tensor) -> None:
        dead = torch.zeros_like(self.unused_steps, dtype=torch.bool)
        if self.restart_after is not None:
            dead |= self.unused_steps >= self.restart_after
        if self.restart_below is not None:
            dead |= self.usage < self.restart_below
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        # Dead codes take encoder outputs of this step, drawn over all ranks' rows (the same
        # draw everywhere), so they land where the data is.
        if error is not None:
            data = cb.gather_rows(torch.cat([rows, error.unsqueeze(1)], dim=1))
            data, error = data[:, :-1], data[:, -1]
            weight = error.double().cpu() + 1e-12  # > 0, so multinomial always has support
            many = num_dead > weight.numel()
            pick = torch.multinomial(
                weight, num_dead, replacement=many, generator=self._generator()
            )
        else:
            data = cb.gather_rows(rows)
            pick = torch.randint(0, data.shape[0], (num_dead,), generator=self._generator())
        fresh = data[pick.to(data.device)]
        if self.cosine:
            fresh = F.normalize(fresh, dim=1)
        self.codebook.data[dead] = fresh.to(self.codebook.dtype)
        if self.ema:
            self.cluster_size[dead] = 1.0
            self.embed_sum[dead] = fresh
        self.unused_steps[dead] = 0
        if self.restart_below is not None:
            self.usage[dead] = counts.mean()  # a fresh code gets the average use to prove itself

    def extra_repr(self) -> str:
        opts = [f"num_codes={self.num_codes}", f"dim={self.dim}", f"beta={self.beta}"]
        for name in ("ema", "kmeans_init", "cosine", "rotation"):
            if getattr(self, name):
                opts.append(f"{name}=True")
        if self.restart_after is not None:
            opts.append(f"restart_after={self.restart_after}")
        if self.restart_below is not None:
            opts.append(f"restart_below={self.restart_below}")
        if self.restart_from != "random":
            opts.append(f"restart_from={self.restart_from!r}")
        if self.heads > 1:
            opts.append(f"heads={self.heads}")
        if self.code_dim != self.dim // self.heads:
            opts.append(f"code_dim={self.code_dim}")
        return ", ".join(opts)
