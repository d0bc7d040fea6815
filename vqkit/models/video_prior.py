"""A causal transformer prior over video code volumes ``(T', H', W')``, as in VideoGPT.

"VideoGPT: Video Generation using VQ-VAE and Transformers", https://arxiv.org/abs/2104.10157.

Codes are flattened time-major in raster order, so the model is autoregressive over time and,
within a time step, over space: ``p(codes) = prod_p p(code_p | codes before p)``. Position ``p``
of the network predicts code ``p`` from the code before it (a learned start vector at ``p = 0``),
so its input carries two positions: *where the input code sits* (``p - 1``) and *which code is
predicted* (``p``), each a sum of a learned time and a learned spatial embedding. Attention then
finds "the same place one step earlier" from the keys' and queries' positions alone.

Each position also sees the codes of the previous time step around its own place (a
``prev_kernel x prev_kernel`` window, one embedding table per offset: a causal convolution over
one-hot codes). In video most codes repeat or move by a cell from one step to the next; this
direct path makes that the first thing the prior learns, and attention models the rest. All of
step ``t - 1`` precedes step ``t`` in the flattened order, so causality is untouched.

Conditioning (an action per frame, or a class) enters as one embedding per time step, added to
the inputs of every position that predicts a code of that step: the codes of step ``t`` see the
conditions of steps ``<= t`` and never those of later steps. A step may carry several condition
tokens (``cond_per_step``), e.g. the actions of the two frames that one latent step covers when
the VQ-VAE halves time; each token offset has its own embedding table and the embeddings add up.

Prediction from context frames is a teacher-forced prefix: :meth:`VideoPrior.generate` takes the
codes of the first steps, runs them through the network in one pass to fill the key/value cache,
then samples the rest one code at a time (O(layers) work per code).

Example:
    >>> prior = VideoPrior(num_codes=256, shape=(8, 8, 8), dim=64, num_layers=2, num_heads=4)
    >>> codes = torch.randint(0, 256, (2, 8, 8, 8))
    >>> prior(codes).shape
    torch.Size([2, 256, 8, 8, 8])
    >>> prior.generate(context=codes[:, :3]).shape  # 3 steps given, 5 sampled
    torch.Size([2, 8, 8, 8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.errors import check_int
from vqkit.models.likelihood import to_data, to_model
from vqkit.models.maskgit import MaskGIT
from vqkit.models.registry import register
from vqkit.models.wavenet import check_generator, sample_logits


class KVCache:
    """Keys and values of every layer for ``length`` positions, filled as generation goes."""

    def __init__(
        self, num_layers: int, batch: int, heads: int, length: int, head_dim: int, like: Tensor
    ):
        shape = (batch, heads, length, head_dim)
        self.keys = [like.new_zeros(shape) for _ in range(num_layers)]
        self.values = [like.new_zeros(shape) for _ in range(num_layers)]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``p`` attends to positions ``<= p``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, start: int = 0
    ) -> Tensor:
        """``x`` (B, L, C) at positions ``start .. start + L - 1`` -> (B, L, C).

        With a cache, the new keys and values are written at those positions and the queries
        attend to everything cached up to them. Two uses: a causal pass from ``start = 0``
        (training, or filling the cache with a prefix), or one new position (``L = 1``).
        """
        b, length, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (
            t.view(b, length, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v)
        )
        if cache is not None:  # (B, heads, L, head_dim) each
            keys, values = cache
            keys[:, :, start : start + length] = k
            values[:, :, start : start + length] = v
            k, v = keys[:, :, : start + length], values[:, :, : start + length]
        if length > 1 and start != 0:
            raise ValueError("a multi-position pass must start at position 0")
        # One new query may see every cached key; a block from 0 needs the causal mask.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=length > 1)
        return self.proj(y.transpose(1, 2).reshape(b, length, c))


class Block(nn.Module):
    """Pre-norm transformer block: causal attention, then a GELU MLP, each residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, start: int = 0):
        x = x + self.attn(self.ln1(x), cache, start)
        return x + self.mlp(self.ln2(x))


class VideoPrior(nn.Module):
    """Autoregressive prior over code volumes, optionally conditioned per time step.

    Args:
        num_codes: Codebook size K; codes are integers in ``[0, K)``.
        shape: The code volume ``(T', H', W')`` it models (positions are learned, so fixed).
        dim: Width of the transformer.
        num_layers: Transformer blocks.
        num_heads: Attention heads (must divide ``dim``).
        mlp_ratio: Hidden width of each MLP, as a multiple of ``dim``.
        num_conds: If set, the model is conditional: every call takes ``cond`` ``(B, T', S)``
            with values in ``[0, num_conds)`` (actions or classes).
        cond_per_step: S, condition tokens per time step (e.g. the VQ-VAE's time stride).
        prev_kernel: Odd width of the window of previous-step codes each position sees; 0 for
            none (a plain transformer).

    Shape:
        codes ``(B, T', H', W')`` int64 -> logits ``(B, K, T', H', W')``.
    """

    has_likelihood = True  # exact: nll_bits

    def __init__(
        self,
        num_codes: int,
        shape: Sequence[int],
        *,
        dim: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        num_conds: int | None = None,
        cond_per_step: int = 1,
        prev_kernel: int = 3,
    ) -> None:
        super().__init__()
        shape = tuple(shape)
        if len(shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise ValueError(f"shape must be three positive ints (T', H', W'), got {shape!r}")
        for name, value, low in (
            ("num_codes", num_codes, 2),
            ("dim", dim, 1),
            ("num_layers", num_layers, 1),
            ("num_heads", num_heads, 1),
            ("mlp_ratio", mlp_ratio, 1),
            ("cond_per_step", cond_per_step, 1),
        ):
            check_int(name, value, low)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        if num_conds is not None and (not isinstance(num_conds, int) or num_conds < 1):
            raise ValueError(f"num_conds must be None or an int >= 1, got {num_conds!r}")
        if (
            isinstance(prev_kernel, bool)
            or not isinstance(prev_kernel, int)
            or (prev_kernel < 0 or prev_kernel % 2 == 0 and prev_kernel != 0)
        ):
            raise ValueError(f"prev_kernel must be 0 or an odd int >= 1, got {prev_kernel!r}")
        self.num_codes = num_codes
        self.shape = shape
        self.dim = dim
        self.num_heads = num_heads
        self.num_conds = num_conds
        self.cond_per_step = cond_per_step
        self.prev_kernel = prev_kernel
        steps, height, width = shape
        self.step_size = height * width  # codes per time step
        self.length = steps * self.step_size  # N, the flattened sequence

        self.tok = nn.Embedding(num_codes, dim)
        self.start = nn.Parameter(torch.zeros(dim))  # the input before code 0
        # Positions of the input code (src) and of the predicted code (tgt): time + space.
        self.src_time, self.tgt_time = nn.Embedding(steps, dim), nn.Embedding(steps, dim)
        self.src_space = nn.Embedding(self.step_size, dim)
        self.tgt_space = nn.Embedding(self.step_size, dim)
        self.cond = nn.Embedding(cond_per_step * num_conds, dim) if num_conds else None
        # One table per window offset; code K stands for "outside the volume".
        self.prev = nn.Embedding(prev_kernel**2 * (num_codes + 1), dim) if prev_kernel else None
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_codes)
        self.apply(self._init)
        # Step index and spatial index of every flattened position.
        pos = torch.arange(self.length)
        self.register_buffer("time_of", pos // self.step_size, persistent=False)
        self.register_buffer("space_of", pos % self.step_size, persistent=False)
        self.register_buffer("prev_index", self._window(prev_kernel), persistent=False)

    def _window(self, kernel: int) -> Tensor:
        """``(N, kernel**2)`` flat positions of each position's previous-step window; ``N``
        where the window leaves the volume (or there is no previous step)."""
        steps, height, width = self.shape
        r = kernel // 2
        t, y, x = torch.meshgrid(
            torch.arange(steps), torch.arange(height), torch.arange(width), indexing="ij"
        )
        dy, dx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        t, y, x = (
            t.reshape(-1, 1) - 1,
            y.reshape(-1, 1) + dy.reshape(1, -1),
            x.reshape(-1, 1) + dx.reshape(1, -1),
        )
        inside = (t >= 0) & (y >= 0) & (y < height) & (x >= 0) & (x < width)
        flat = (t * height + y) * width + x
        return torch.where(inside, flat, torch.full_like(flat, self.length))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):  # GPT-2's initialisation
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------- validation

    def _check_codes(self, codes: Tensor, name: str = "codes", steps: int | None = None) -> None:
        want = (self.shape[0] if steps is None else steps, *self.shape[1:])
        if not isinstance(codes, Tensor) or codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be an int64 tensor (B, {', '.join(map(str, want))})")
        if codes.dim() != 4 or tuple(codes.shape[1:]) != want:
            raise ValueError(
                f"{name} must have shape (B, {', '.join(map(str, want))}) for this prior, got "
                f"{tuple(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(
                f"{name} must lie in [0, {self.num_codes}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )

    def _check_cond(self, cond: Tensor | None, batch: int) -> None:
        want = (batch, self.shape[0], self.cond_per_step)
        if self.num_conds is None:
            if cond is not None:
                raise ValueError("cond was given but the prior is unconditional (num_conds=None)")
            return
        if cond is None:
            raise ValueError(f"the prior is conditional: pass cond of shape {want}")
        if not isinstance(cond, Tensor) or cond.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"cond must be an int64 tensor of shape {want}, got {cond!r}")
        if tuple(cond.shape) != want:
            raise ValueError(
                f"cond must have shape {want} (batch, time steps, tokens per step), got "
                f"{tuple(cond.shape)}"
            )
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= self.num_conds):
            raise ValueError(
                f"cond must lie in [0, {self.num_conds}), got values in "
                f"[{int(cond.min())}, {int(cond.max())}]"
            )

    # ---------------------------------------------------------------- the network

    def cond_embedding(self, cond: Tensor | None) -> Tensor | None:
        """Conditions ``(B, T', S)`` -> one embedding per time step ``(B, T', dim)``."""
        if cond is None:
            return None
        offsets = torch.arange(self.cond_per_step, device=cond.device) * self.num_conds
        return self.cond(cond + offsets).sum(dim=2)

    def embed(self, flat: Tensor, cond_emb: Tensor | None, start: int, end: int) -> Tensor:
        """Inputs of positions ``start .. end - 1``, ``(B, end - start, dim)``.

        Args:
            flat: Codes ``(B, N)`` in flattened order; position ``p`` reads only codes before
                ``p`` (so later entries may hold anything, e.g. zeros during generation).
            cond_emb: From :meth:`cond_embedding`, or None.
        """
        src = torch.arange(max(start - 1, 0), end - 1, device=flat.device)
        h = (
            self.tok(flat[:, src])
            + self.src_time(self.time_of[src])
            + self.src_space(self.space_of[src])
        )  # (B, L', dim): the code before each position, at its own place
        if start == 0:
            h = torch.cat([self.start.expand(flat.shape[0], 1, -1), h], dim=1)
        tgt = torch.arange(start, end, device=flat.device)
        h = h + self.tgt_time(self.time_of[tgt]) + self.tgt_space(self.space_of[tgt])
        if self.prev is not None:
            padded = torch.cat([flat, flat.new_full((flat.shape[0], 1), self.num_codes)], dim=1)
            window = padded[:, self.prev_index[tgt]]  # (B, L, k * k) codes of step t - 1
            offsets = torch.arange(window.shape[-1], device=flat.device) * (self.num_codes + 1)
            h = h + self.prev(window + offsets).sum(dim=2)
        if cond_emb is not None:
            h = h + cond_emb[:, self.time_of[tgt]]
        return h

    def forward_embeddings(self, h: Tensor) -> Tensor:
        """Inputs ``(B, N, dim)`` from :meth:`embed` -> logits ``(B, N, K)`` (flattened order).

        Lets tests differentiate with respect to the inputs of each position.
        """
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))

    def forward(self, codes: Tensor, cond: Tensor | None = None) -> Tensor:
        """Teacher-forced logits: the logits of a code see only the codes before it.

        Args:
            codes: ``(B, T', H', W')`` int64 in ``[0, K)``.
            cond: ``(B, T', S)`` conditions iff the prior is conditional.

        Returns:
            Logits ``(B, K, T', H', W')``.
        """
        self._check_codes(codes)
        self._check_cond(cond, codes.shape[0])
        h = self.embed(codes.flatten(1), self.cond_embedding(cond), 0, self.length)
        logits = self.forward_embeddings(h)  # (B, N, K)
        return logits.transpose(1, 2).reshape(codes.shape[0], self.num_codes, *self.shape)

    def loss(self, codes: Tensor, cond: Tensor | None = None) -> Tensor:
        """Mean cross-entropy over all codes, in nats (scalar)."""
        return F.cross_entropy(self(codes, cond), codes)

    def nll_bits(self, codes: Tensor, cond: Tensor | None = None, *, from_step: int = 0) -> Tensor:
        """``(B,)`` mean negative log-likelihood in bits per code, over steps ``>= from_step``.

        ``from_step = k`` scores the future given ``k`` steps of context.
        """
        if not 0 <= from_step < self.shape[0]:
            raise ValueError(f"from_step must lie in [0, {self.shape[0]}), got {from_step}")
        nll = F.cross_entropy(self(codes, cond), codes, reduction="none")  # (B, T', H', W')
        return nll[:, from_step:].flatten(1).mean(1) / math.log(2)

    # ---------------------------------------------------------------- generation

    @torch.inference_mode()
    def generate(
        self,
        batch: int | None = None,
        *,
        context: Tensor | None = None,
        cond: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        cached: bool = True,
        return_logits: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Sample a code volume, continuing ``context`` when given.

        Args:
            batch: Volumes to draw B; inferred from ``context`` or ``cond`` when given.
            context: Codes of the first time steps ``(B, T_c, H', W')``, ``0 <= T_c <= T'``,
                kept as they are (a teacher-forced prefix).
            cond: ``(B, T', S)`` conditions iff the prior is conditional, for every step.
            temperature: Divides the logits; 0 takes the argmax.
            generator: Random generator on the model's device, for reproducible samples.
            cached: Fill a key/value cache with the context in one pass, then compute one new
                position per code (fast); False runs a full forward pass per code (the slow
                reference). Both draw the same codes for the same generator state.
            return_logits: Also return the logits of the sampled positions.

        Returns:
            Codes ``(B, T', H', W')`` int64, and with ``return_logits`` logits
            ``(B, K, T' - T_c, H', W')`` which equal ``forward`` on the result up to rounding.
        """
        device = self.tok.weight.device
        batch = self._batch(batch, context, cond)
        if not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise ValueError(f"temperature must be a number >= 0 (0: argmax), got {temperature!r}")
        check_generator(generator, device)
        steps = 0
        if context is not None:
            if not isinstance(context, Tensor) or context.dim() != 4:
                raise ValueError(
                    f"context must be codes (B, T_c, {self.shape[1]}, {self.shape[2]}), got "
                    f"{getattr(context, 'shape', context)!r}"
                )
            steps = context.shape[1]
            if steps > self.shape[0]:
                raise ValueError(
                    f"context has {steps} time steps; the prior models {self.shape[0]}"
                )
            self._check_codes(context, "context", steps=steps)
        if cond is not None:
            cond = cond.to(device)
        self._check_cond(cond, batch)
        flat = torch.zeros(batch, self.length, dtype=torch.long, device=device)
        first = steps * self.step_size  # the first position to sample
        if context is not None:
            flat[:, :first] = context.to(device).flatten(1)
        cond_emb = self.cond_embedding(cond)
        logits_out = torch.empty(batch, self.length - first, self.num_codes, device=device)
        if cached:
            cache = KVCache(
                len(self.blocks),
                batch,
                self.num_heads,
                self.length,
                self.dim // self.num_heads,
                self.tok.weight,
            )
            if first > 0:
                self._run(self.embed(flat, cond_emb, 0, first), cache, 0)
        for p in range(first, self.length):
            if cached:
                logits = self._run(self.embed(flat, cond_emb, p, p + 1), cache, p)[:, -1]
            else:
                logits = self.forward_embeddings(self.embed(flat, cond_emb, 0, p + 1))[:, -1]
            flat[:, p] = sample_logits(logits, temperature, generator)
            logits_out[:, p - first] = logits
        codes = flat.view(batch, *self.shape).clone()  # an ordinary tensor, usable with autograd
        if not return_logits:
            return codes
        logits_out = logits_out.transpose(1, 2).reshape(batch, self.num_codes, -1, *self.shape[1:])
        return codes, logits_out.clone()

    def _run(self, h: Tensor, cache: KVCache, start: int) -> Tensor:
        """Blocks over positions ``start ..`` with the cache -> logits ``(B, L, K)``."""
        for i, block in enumerate(self.blocks):
            h = block(h, (cache.keys[i], cache.values[i]), start)
        return self.head(self.ln_f(h))

    def _batch(self, batch: int | None, context: Tensor | None, cond: Tensor | None) -> int:
        sizes = {int(t.shape[0]) for t in (context, cond) if isinstance(t, Tensor) and t.dim()}
        if batch is not None:
            if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
                raise ValueError(f"batch must be a positive int, got {batch!r}")
            sizes.add(batch)
        if len(sizes) > 1:
            raise ValueError(f"batch, context and cond disagree on the batch size: {sorted(sizes)}")
        return sizes.pop() if sizes else 1


@register("video_prior")
def video_prior(
    *,
    num_codes: int,
    shape: Sequence[int],
    dim: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    mlp_ratio: int = 4,
    num_conds: int | None = None,
    cond_per_step: int = 1,
    prev_kernel: int = 3,
) -> VideoPrior:
    """Build a :class:`VideoPrior`; `register` records every argument in ``model.config``.

    Example:
        >>> prior = video_prior(num_codes=256, shape=(8, 8, 8), num_conds=5, cond_per_step=2)
        >>> cond = torch.zeros(1, 8, 2, dtype=torch.long)  # two frame actions per code step
        >>> prior.generate(cond=cond, temperature=0).shape
        torch.Size([1, 8, 8, 8])
    """
    return VideoPrior(
        num_codes,
        shape,
        dim=dim,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        num_conds=num_conds,
        cond_per_step=cond_per_step,
        prev_kernel=prev_kernel,
    )


@torch.no_grad()
def predict_video(
    vqvae: nn.Module,
    prior: VideoPrior | MaskGIT,
    context: Tensor,
    frame_cond: Tensor | None = None,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue context frames with a video VQ-VAE and its prior, in latent space.

    The context is encoded *on its own* (no code sees a frame after it), its codes kept (the
    transformer's prefix; MaskGIT's known positions), the remaining time steps sampled, and the
    whole volume decoded.

    Args:
        vqvae: the video VQ-VAE; its time factor ``f`` must divide the context length.
        prior: a :class:`VideoPrior` or a :class:`MaskGIT` over that VQ-VAE's code volumes.
        context: ``(B, 3, C, H, W)`` frames in ``[0, 1]``.
        frame_cond: per-frame conditions ``(B, T)`` for all ``T = T' * f`` frames (an action
            per frame, or a class repeated), iff the prior is conditional.
        temperature, generator: as in :meth:`VideoPrior.generate`.

    Returns:
        ``(B, 3, T, H, W)`` in ``[0, 1]``: the decoded context followed by the prediction.

    Example:
        >>> frames = predict_video(vqvae, prior, clips[:, :, :6], actions)  # doctest: +SKIP
    """
    device = prior.tok.weight.device
    ft = vqvae.factor[0]
    if context.dim() != 5 or context.shape[2] % ft:
        raise ValueError(
            f"context must be (B, 3, C, H, W) with C a multiple of the VQ-VAE's time factor "
            f"{ft}, got {tuple(context.shape)}"
        )
    prefix = vqvae.encode(to_model(context.to(device)))  # (B, C / ft, H', W')
    cond = None
    if frame_cond is not None:
        b, t = frame_cond.shape
        cond = frame_cond.to(device).reshape(b, t // ft, ft)  # (B, T', f): one token per frame
    if isinstance(prior, MaskGIT):
        steps = prefix.shape[1]
        if tuple(prefix.shape[2:]) != prior.grid[1:] or steps >= prior.grid[0]:
            raise ValueError(
                f"the context codes {tuple(prefix.shape[1:])} do not fit the prior's grid "
                f"{prior.grid} (same code size, fewer steps)"
            )
        known = prefix.new_zeros(len(prefix), *prior.grid)
        known[:, :steps] = prefix
        given = torch.zeros(prior.grid, dtype=torch.bool, device=device)
        given[:steps] = True
        codes = prior.sample(
            len(prefix),
            cond=cond,
            known=known,
            known_mask=given,
            temperature=temperature,
            generator=generator,
        )
    else:
        codes = prior.generate(
            context=prefix, cond=cond, temperature=temperature, generator=generator
        )
    return to_data(vqvae.decode(codes))
