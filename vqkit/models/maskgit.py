"""MaskGIT: a bidirectional transformer prior over code grids, sampled in a few parallel steps.

"MaskGIT: Masked Generative Image Transformer", Chang et al. 2022, https://arxiv.org/abs/2202.04200.

The code grid (a 2D map ``(H, W)`` or a 3D volume ``(T, H, W)``: any rank, one code path) is
flattened in raster order and every position sees every other one. Training hides a random
fraction of the codes behind a [MASK] token (index ``num_codes``), the fraction drawn from the
cosine schedule, and predicts the hidden ones. Sampling starts from an all-[MASK] grid and takes
``steps`` passes: each predicts every masked position, draws a code for each, keeps the most
confident draws and re-masks the rest, so that the share still masked follows the same
schedule and reaches zero after the last pass. A kept code never changes; positions given as
``known`` (e.g. the codes of context frames) are kept from the start.

A transformer pass costs far more than a cached PixelCNN step, and attention grows with the
square of the positions. ``patch`` (e.g. ``(2, 2)``) makes one transformer token of each patch
of codes, as ViT and DiT do with pixels: the token's input sums one embedding per code (a
table per offset in the patch), its output holds the logits of every code of the patch. The
masking, the loss and the sampler still work code by code.

MaskGIT has no exact likelihood (the order in which codes are revealed is itself random), so
it has no ``nll_bits``: :attr:`MaskGIT.has_likelihood` is False.

Example:
    >>> prior = maskgit(num_codes=256, grid=(8, 8), num_classes=10, dim=64, layers=2, heads=4)
    >>> codes = torch.randint(0, 256, (4, 8, 8))
    >>> prior.loss(codes, y=torch.arange(4)).shape
    torch.Size([])
    >>> prior.sample((2, 8, 8), y=torch.tensor([3, 7]), steps=8).shape
    torch.Size([2, 8, 8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.errors import check_int
from vqkit.models.guidance import (
    Guided,
    check_class_dropout,
    check_guidance,
    class_table_size,
    drop_labels,
)
from vqkit.models.registry import register
from vqkit.models.wavenet import check_generator, sample_logits


def mask_schedule(t: Tensor | float) -> Tensor | float:
    """Cosine schedule: the fraction of positions still masked at progress ``t`` in [0, 1].

    ``t = s / N`` after step ``s`` of ``N`` (1 at the start, 0 at the end, decreasing); training
    draws its masking ratio as ``mask_schedule(u)`` with ``u ~ U(0, 1)``.
    """
    # cos(pi / 2) is 6e-17 in floating point: the end is made exactly 0.
    if isinstance(t, Tensor):
        return torch.cos(t * (math.pi / 2)).masked_fill(t >= 1, 0.0)
    return 0.0 if t >= 1 else math.cos(t * math.pi / 2)


def _is_int_tensor(t) -> bool:
    return isinstance(t, Tensor) and t.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8)


class MaskGIT(nn.Module):
    """Masked-token prior over a fixed code grid, optionally class- and step-conditioned.

    Args:
        num_codes: Codebook size K; codes are integers in ``[0, K)``, ``K`` is [MASK].
        grid: The code grid it models, e.g. ``(H, W)`` or ``(T, H, W)`` (learned positions, so
            fixed).
        num_classes: Classes for class conditioning (an embedding added to every position);
            0 or None: unconditional.
        class_dropout: Classifier-free guidance (:mod:`vqkit.models.guidance`): while training
            (:meth:`loss` in train mode), each label is replaced by a learned null class with
            this probability, so that :meth:`sample` can take a ``guidance`` scale. 0: no null
            class, training exactly as without guidance.
        num_conds: If set, every call takes ``cond`` ``(B, grid[0], S)`` (or ``(B, grid[0])``
            when S = 1) in ``[0, num_conds)``: conditions per index of the leading axis, e.g.
            one action per time step of a code volume, added to the positions of that index.
        cond_per_step: S, condition tokens per leading index (each with its own table).
        dim, layers, heads, mlp_ratio, dropout: The pre-norm transformer.
        patch: Codes per transformer token along each grid axis (one int: every axis); each
            must divide its axis. 1: a token per code.
        prefix_share: Share of the training items whose first leading indices stay visible
            (see :meth:`loss`), for priors that continue a given prefix (video prediction from
            context frames); needs ``grid[0] >= 2``.
        steps: Default number of sampling steps.
        noise: Scale of the Gumbel noise added to the confidences while sampling, annealed as
            ``noise * temperature * (1 - s / steps)``; 0 keeps the plain confidences.

    Shape:
        tokens ``(B, *grid)`` in ``[0, K]`` -> logits ``(B, K, *grid)``.
    """

    has_likelihood = False

    def __init__(
        self,
        num_codes: int,
        grid: Sequence[int],
        *,
        num_classes: int | None = 0,
        class_dropout: float = 0.0,
        num_conds: int | None = None,
        cond_per_step: int = 1,
        dim: int = 128,
        layers: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        patch: int | Sequence[int] = 1,
        prefix_share: float = 0.0,
        steps: int = 10,
        noise: float = 1.0,
    ) -> None:
        super().__init__()
        grid = tuple(grid) if isinstance(grid, Sequence) else grid
        if (
            not isinstance(grid, tuple)
            or not grid
            or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)
        ):
            raise ValueError(f"grid must be a list of positive ints, e.g. [8, 8], got {grid!r}")
        check_int("num_codes", num_codes, 2)
        num_classes = 0 if num_classes is None else num_classes
        check_int("num_classes", num_classes, 0)
        if num_conds is not None:
            check_int("num_conds", num_conds, 1)
        for name, value, low in (
            ("cond_per_step", cond_per_step, 1),
            ("dim", dim, 1),
            ("layers", layers, 1),
            ("heads", heads, 1),
            ("mlp_ratio", mlp_ratio, 1),
            ("steps", steps, 1),
        ):
            check_int(name, value, low)
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if not isinstance(noise, (int, float)) or not noise >= 0 or not math.isfinite(noise):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        if not isinstance(prefix_share, (int, float)) or not 0 <= prefix_share <= 1:
            raise ValueError(f"prefix_share must be a number in [0, 1], got {prefix_share!r}")
        if prefix_share > 0 and grid[0] < 2:
            raise ValueError(f"prefix_share > 0 needs a leading grid axis >= 2, got grid {grid}")
        patch = (patch,) * len(grid) if isinstance(patch, int) else tuple(patch)
        if (
            len(patch) != len(grid)
            or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in patch)
            or any(g % p for g, p in zip(grid, patch))
        ):
            raise ValueError(
                f"patch must be a positive int or one per grid axis, each dividing its axis of "
                f"grid {list(grid)}, got {patch!r}"
            )
        self.num_codes = num_codes
        self.mask_token = num_codes
        self.grid = grid
        self.length = math.prod(grid)  # N, positions of the flattened grid
        self.patch = patch
        self.patch_size = math.prod(patch)  # P, codes per token
        self.tokens = self.length // self.patch_size  # T, transformer positions
        self.num_classes = num_classes
        self.class_dropout = check_class_dropout(class_dropout, num_classes)
        self.num_conds = num_conds
        self.cond_per_step = cond_per_step
        self.prefix_share = float(prefix_share)
        self.steps = steps
        self.noise = float(noise)

        # One table of K + 1 entries ([MASK] last) per offset in the patch.
        self.tok = nn.Embedding(self.patch_size * (num_codes + 1), dim)
        self.pos = nn.Embedding(self.tokens, dim)
        self.cls = (
            nn.Embedding(class_table_size(num_classes, self.class_dropout), dim)
            if num_classes
            else None
        )
        self.cond = nn.Embedding(cond_per_step * num_conds, dim) if num_conds else None
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            mlp_ratio * dim,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.head = nn.Linear(dim, self.patch_size * num_codes)
        self.apply(self._init)
        # Flat code positions in token order (token-major, then offset in the patch), and back.
        split = [n for g, p in zip(grid, patch) for n in (g // p, p)]
        axes = list(range(0, 2 * len(grid), 2)) + list(range(1, 2 * len(grid), 2))
        order = torch.arange(self.length).view(split).permute(axes).reshape(-1)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", order.argsort(), persistent=False)
        self.register_buffer(
            "offsets", torch.arange(self.patch_size) * (num_codes + 1), persistent=False
        )
        self.register_buffer(
            "lead_of_code", torch.arange(self.length) // (self.length // grid[0]), persistent=False
        )
        # The leading-axis index of each token (a token spans patch[0] of them).
        self.register_buffer(
            "lead_of",
            torch.arange(self.tokens) // (self.tokens // (grid[0] // patch[0])),
            persistent=False,
        )

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            nn.init.trunc_normal_(module.in_proj_weight, std=0.02, a=-0.04, b=0.04)
            nn.init.zeros_(module.in_proj_bias)

    # ---------------------------------------------------------------- validation

    def _grid_text(self) -> str:
        return ", ".join(map(str, self.grid))

    def _check_tokens(self, codes, name: str = "codes", *, allow_mask: bool = False) -> None:
        high = self.num_codes + 1 if allow_mask else self.num_codes
        if not _is_int_tensor(codes):
            raise ValueError(f"{name} must be an int64 tensor (B, {self._grid_text()})")
        if tuple(codes.shape[1:]) != self.grid or codes.dim() != len(self.grid) + 1:
            raise ValueError(
                f"{name} must have shape (B, {self._grid_text()}) for this prior, got "
                f"{tuple(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= high):
            raise ValueError(
                f"{name} must lie in [0, {high}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )

    def _check_labels(self, y, batch: int) -> None:
        if not self.num_classes:
            if y is not None:
                raise ValueError("y was given but the prior is unconditional (num_classes=0)")
            return
        if y is None:
            raise ValueError(f"the prior is class-conditional: pass labels y of shape ({batch},)")
        if not _is_int_tensor(y) or tuple(y.shape) != (batch,):
            raise ValueError(
                f"y must be an integer tensor of shape ({batch},), got {getattr(y, 'shape', y)!r}"
            )
        if batch and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"y must lie in [0, {self.num_classes}), got values in "
                f"[{int(y.min())}, {int(y.max())}]"
            )

    def _check_cond(self, cond, batch: int) -> Tensor | None:
        """Validated conditions as ``(B, grid[0], S)``, or None."""
        want = (batch, self.grid[0], self.cond_per_step)
        if self.num_conds is None:
            if cond is not None:
                raise ValueError("cond was given but the prior is unconditional (num_conds=None)")
            return None
        if cond is None:
            raise ValueError(f"the prior is conditional: pass cond of shape {want}")
        if _is_int_tensor(cond) and self.cond_per_step == 1 and cond.dim() == 2:
            cond = cond[..., None]
        if not _is_int_tensor(cond) or tuple(cond.shape) != want:
            raise ValueError(
                f"cond must be an integer tensor of shape {want} (batch, leading grid axis, "
                f"tokens per index), got {getattr(cond, 'shape', cond)!r}"
            )
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= self.num_conds):
            raise ValueError(
                f"cond must lie in [0, {self.num_conds}), got values in "
                f"[{int(cond.min())}, {int(cond.max())}]"
            )
        return cond.long()

    # ---------------------------------------------------------------- the network

    def _logits(self, tokens: Tensor, y: Tensor | None, cond: Tensor | None) -> Tensor:
        """Flat tokens ``(B, N)`` in ``[0, K]`` -> logits ``(B, N, K)`` (inputs validated)."""
        if self.patch_size == 1:
            return self._network(tokens, y, cond)
        return self._network(tokens[:, self.order], y, cond)[:, self.inverse]

    def _network(self, tokens: Tensor, y: Tensor | None, cond: Tensor | None) -> Tensor:
        """:meth:`_logits` with codes in token order (``order``) on both sides, which spares
        the sampler two gathers per step."""
        return self.head(self._hidden(tokens, y, cond)).view(-1, self.length, self.num_codes)

    def _hidden(self, tokens: Tensor, y: Tensor | None, cond: Tensor | None) -> Tensor:
        """The transformer's output ``(B, T, dim)`` for codes in token order, before the head."""
        b = tokens.shape[0]
        x = tokens.view(b, self.tokens, self.patch_size)
        h = self.tok(x + self.offsets).sum(2) + self.pos.weight  # (B, T, dim)
        if self.cls is not None:
            h = h + self.cls(y.long())[:, None]
        if self.cond is not None:
            offsets = torch.arange(self.cond_per_step, device=cond.device) * self.num_conds
            per_index = self.cond(cond + offsets).sum(dim=2)  # (B, grid[0], dim)
            per_token = per_index.view(b, -1, self.patch[0], per_index.shape[-1]).sum(2)
            h = h + per_token[:, self.lead_of]
        return self._encode(h)

    def _encode(self, h: Tensor) -> Tensor:
        """``self.encoder(h)``. Without autograd (sampling) the layers run here, attention
        through ``F.scaled_dot_product_attention``: torch's inference fast path for
        ``nn.TransformerEncoderLayer`` writes out the ``(B, heads, T, T)`` scores, which at
        1,024 tokens made a layer 2x slower on CPU. Equal to the module's output to float
        rounding; training (autograd) runs the module itself."""
        if torch.is_grad_enabled() or self.training:
            return self.encoder(h)
        b, t, d = h.shape
        for layer in self.encoder.layers:  # pre-norm: x + attn(norm1(x)), x + mlp(norm2(x))
            attn = layer.self_attn
            qkv = F.linear(layer.norm1(h), attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = qkv.view(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
            h = h + attn.out_proj(a)
            h = h + layer.linear2(layer.activation(layer.linear1(layer.norm2(h))))
        return self.encoder.norm(h)

    def _draw(self, tokens: Tensor, masked: Tensor, guided, cond, temperature: float, generator):
        """One code and its log-probability for every masked position: ``sample_logits(
        logits[masked], temperature, generator, log_prob=True)`` with ``logits =
        g.combine(_network(g.expand(tokens), g.labels, g.expand(cond)))``, ``g = guided`` (the
        ``(M,)`` draws in the order of ``tokens[masked]``, codes in token order), the same
        draws from the same uniforms, without the work on what the sampler throws away.

        The head runs on the masked codes alone: a token's logits for each offset in its patch
        are a slice of the head, so each offset's slice runs on the tokens whose code at that
        offset is still masked, and its draws are made there, from their own uniforms. The
        later passes see ever fewer masked codes, and no ``(M, K)`` block is gathered out of
        ``(B, N, K)``. Samples whose inputs are all alike (the first pass, with nothing known
        and one class or none) share one network pass and one softmax per position.
        """
        batch = tokens.shape[0]
        y = None if guided.labels is None else guided.labels[:batch]  # the conditional rows
        shared = (
            batch > 1
            and bool((tokens == tokens[:1]).all())
            and (y is None or bool((y == y[:1]).all()))
            and (cond is None or bool((cond == cond[:1]).all()))
        )
        copies = batch if shared else 1  # samples per computed row
        if shared:
            tokens, masked = tokens[:1], masked[:1]
            cond = None if cond is None else cond[:1]
            guided = Guided(y[:1] if y is not None else None, guided.guidance, self.num_classes)
        g = guided
        h = self._hidden(g.expand(tokens), g.labels, g.expand(cond))  # (copies x B or 1, T, dim)
        count = int(masked.sum())  # masked codes of the rows computed
        uniforms = None
        if temperature > 0:  # what sample_logits would draw from the generator, drawn up front
            uniforms = torch.rand(copies * count, generator=generator, device=h.device)
            uniforms = uniforms.view(copies, count).t().contiguous()  # (count, copies)

        def draw(logits: Tensor, rows) -> tuple[Tensor, Tensor]:  # -> (rows, copies) each
            u = None if uniforms is None else uniforms[rows]
            picked, log_p = sample_logits(logits, temperature, None, u, log_prob=True)
            if u is None:  # the argmax: the same for every copy
                picked, log_p = (x[:, None].expand(-1, copies) for x in (picked, log_p))
            return picked, log_p

        if self.patch_size == 1:
            picked, log_p = draw(g.combine(self.head(h[g.expand(masked)])), slice(None))
        else:
            per_offset = masked.view(masked.shape[0], self.tokens, self.patch_size)
            row = (masked.view(-1).cumsum(0) - 1).view(per_offset.shape)  # each code's row
            weight = self.head.weight.view(self.patch_size, self.num_codes, -1)
            bias = self.head.bias.view(self.patch_size, self.num_codes)
            picked = torch.empty(count, copies, dtype=torch.long, device=h.device)
            log_p = torch.empty(count, copies, device=h.device)
            for o in range(self.patch_size):
                here = per_offset[:, :, o]
                rows = row[:, :, o][here]
                logits = g.combine(F.linear(h[g.expand(here)], weight[o], bias[o]))
                picked[rows], log_p[rows] = draw(logits, rows)
        return picked.t().reshape(-1), log_p.t().reshape(-1)

    def forward(self, tokens: Tensor, y: Tensor | None = None, cond: Tensor | None = None):
        """Logits of every position given the visible ones.

        Args:
            tokens: ``(B, *grid)`` codes in ``[0, K)``, with ``K`` ([MASK]) where hidden.
            y: Class labels ``(B,)`` iff the prior is class-conditional.
            cond: ``(B, grid[0], S)`` conditions iff ``num_conds`` is set.

        Returns:
            Logits ``(B, K, *grid)``.
        """
        self._check_tokens(tokens, "tokens", allow_mask=True)
        self._check_labels(y, tokens.shape[0])
        cond = self._check_cond(cond, tokens.shape[0])
        logits = self._logits(tokens.flatten(1).long(), y, cond)  # (B, N, K)
        return logits.transpose(1, 2).reshape(tokens.shape[0], self.num_codes, *self.grid)

    def loss(self, codes: Tensor, y: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """Masked-token cross-entropy in nats (scalar), over the masked positions only.

        Each item hides ``ceil(mask_schedule(u) * N)`` (at least 1) random positions, ``u ~
        U(0, 1)``. A ``prefix_share`` of the items instead keeps its first ``k`` leading indices
        visible (``k`` uniform in ``1 .. grid[0] - 1``) and hides the schedule's share of the
        rest: the task of predicting a volume from its first steps. The draws use torch's
        default generator, so seeding makes training reproducible.
        """
        self._check_tokens(codes)
        batch = codes.shape[0]
        self._check_labels(y, batch)
        cond = self._check_cond(cond, batch)
        flat = codes.flatten(1).long()  # (B, N)
        ratio = mask_schedule(torch.rand(batch, device=flat.device))
        scores = torch.rand(flat.shape, device=flat.device)
        eligible = torch.full((batch,), self.length, device=flat.device)
        if self.prefix_share > 0:
            keep = torch.randint(1, self.grid[0], (batch,), device=flat.device)
            keep = keep * (torch.rand(batch, device=flat.device) < self.prefix_share)
            visible = self.lead_of_code < keep[:, None]  # (B, N): the kept leading indices
            scores = scores.masked_fill(visible, 2.0)  # ranked after every other position
            eligible = eligible - visible.sum(1)
        hidden = torch.ceil(ratio * eligible).long().clamp(min=1)  # (B,)
        ranks = scores.argsort(1).argsort(1)
        mask = ranks < hidden[:, None]  # (B, N): a uniformly random set of `hidden` positions
        if self.training:  # classifier-free guidance: some labels become the null class
            y = drop_labels(y, self.class_dropout, self.num_classes)
        logits = self._logits(flat.masked_fill(mask, self.mask_token), y, cond)
        return F.cross_entropy(logits[mask], flat[mask])

    # ---------------------------------------------------------------- sampling

    @torch.inference_mode()
    def sample(
        self,
        shape: int | Sequence[int],
        *,
        y: Tensor | int | None = None,
        cond: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        steps: int | None = None,
        known: Tensor | None = None,
        known_mask: Tensor | None = None,
        return_trace: bool = False,
        guidance: float = 1.0,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw code grids in ``steps`` parallel passes.

        Args:
            shape: ``(n, *grid)``, or the number of samples n.
            y: Labels ``(n,)`` or one int for all, iff the prior is class-conditional.
            cond: ``(n, grid[0], S)`` conditions iff ``num_conds`` is set.
            temperature: Divides the logits; 0 takes the argmax (and adds no Gumbel noise).
            generator: Random generator on ``device``, for reproducible samples.
            device: Where to sample; defaults to the model's device.
            steps: Passes (default: the model's ``steps``).
            known: ``(n, *grid)`` codes kept verbatim where ``known_mask`` is True.
            known_mask: Bool ``(n, *grid)`` or ``grid``, True at the known positions.
            return_trace: Also return the tokens after each step, ``(steps, n, *grid)``, with
                ``num_codes`` at the positions still masked.
            guidance: Classifier-free guidance scale s >= 0: each pass's logits are ``uncond +
                s * (cond - uncond)`` (:mod:`vqkit.models.guidance`); 1 (the default) is the
                plain conditional prior, other values need ``class_dropout > 0``. Above 1, each
                pass runs the network on two rows per sample.

        Returns:
            Codes ``(n, *grid)`` int64 in ``[0, K)`` (and the trace).
        """
        n = self._sample_batch(shape)
        steps = self.steps if steps is None else steps
        check_int("steps", steps, 1)
        if not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        device = torch.device(device) if device is not None else self.tok.weight.device
        check_generator(generator, device)
        if isinstance(y, int) and not isinstance(y, bool):
            y = torch.full((n,), y, dtype=torch.long, device=device)
        self._check_labels(y, n)
        cond = self._check_cond(cond, n)
        guidance = check_guidance(
            guidance, num_classes=self.num_classes, has_null=self.class_dropout > 0
        )
        y = y.to(device) if y is not None else None
        cond = cond.to(device) if cond is not None else None

        tokens = torch.full((n, self.length), self.mask_token, dtype=torch.long, device=device)
        if (known is None) != (known_mask is None):
            raise ValueError("pass known and known_mask together (codes, and where they apply)")
        if known is not None:
            given = self._known_mask(known_mask, n).to(device)
            self._check_tokens(known, "known", allow_mask=True)
            flat_known = known.to(device).flatten(1).long()
            if given.any() and int(flat_known[given].max()) >= self.num_codes:
                raise ValueError(f"known codes must lie in [0, {self.num_codes}) where known")
            tokens = torch.where(given, flat_known, tokens)
        patched = self.patch_size > 1
        if patched:  # the steps work in token order; the order of positions is theirs to pick
            tokens = tokens[:, self.order]
        masked = tokens == self.mask_token  # (n, N)
        total = masked.sum(1)  # codes to draw per item
        trace = []
        guided = Guided(y, guidance, self.num_classes)
        for s in range(1, steps + 1):
            if masked.any():
                tokens, masked = self._step(
                    tokens, masked, total, s, steps, guided, cond, temperature, generator
                )
            if return_trace:
                trace.append((tokens[:, self.inverse] if patched else tokens).view(n, *self.grid))
        codes = (tokens[:, self.inverse] if patched else tokens).view(n, *self.grid)
        # Clones made outside inference mode are ordinary tensors, usable with autograd.
        return (codes.clone(), torch.stack(trace).clone()) if return_trace else codes.clone()

    def _step(self, tokens, masked, total, s, steps, guided, cond, temperature, generator):
        """One pass: draw every masked position, keep the most confident, re-mask the rest
        (``guided``: a :class:`Guided` over the labels)."""
        # (M,) draws at the masked positions and their log p at this temperature (when T = 0,
        # the argmax's log p under T = 1)
        picked, confidence = self._draw(tokens, masked, guided, cond, temperature, generator)
        drawn = tokens.clone()
        drawn[masked] = picked
        if s == steps:  # the last pass keeps every draw (and its noise scale is 0: no draws)
            return drawn, torch.zeros_like(masked)
        anneal = self.noise * temperature * (1 - s / steps)
        if anneal > 0:
            u = torch.rand(confidence.shape, generator=generator, device=confidence.device)
            confidence = confidence + anneal * -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
        # Kept and known positions never return to [MASK]: they rank above every draw.
        conf = torch.full(tokens.shape, math.inf, device=tokens.device)
        conf[masked] = confidence
        # The share still masked follows the schedule, and each step keeps at least one.
        still = torch.floor(mask_schedule(s / steps) * total.double()).long()
        still = torch.minimum(still, masked.sum(1) - 1).clamp(min=0)
        # Re-mask the `still` least confident draws: the first `still` in ascending order.
        order = conf.argsort(dim=1, stable=True)
        first = torch.arange(tokens.shape[1], device=tokens.device) < still[:, None]
        remask = torch.zeros_like(masked).scatter_(1, order, first)
        return drawn.masked_fill(remask, self.mask_token), remask

    def _sample_batch(self, shape) -> int:
        if isinstance(shape, int) and not isinstance(shape, bool):
            dims = (shape, *self.grid)
        else:
            dims = tuple(shape)
        if (
            len(dims) != len(self.grid) + 1
            or tuple(dims[1:]) != self.grid
            or not (isinstance(dims[0], int) and dims[0] >= 1)
        ):
            raise ValueError(
                f"sample shape must be (n, {self._grid_text()}) for this prior, got {dims!r}"
            )
        return dims[0]

    def _known_mask(self, known_mask, n: int) -> Tensor:
        if not isinstance(known_mask, Tensor) or known_mask.dtype != torch.bool:
            raise ValueError(f"known_mask must be a bool tensor (n, {self._grid_text()})")
        if tuple(known_mask.shape) == self.grid:
            known_mask = known_mask.expand(n, *self.grid)
        if tuple(known_mask.shape) != (n, *self.grid):
            raise ValueError(
                f"known_mask must have shape ({n}, {self._grid_text()}) or "
                f"({self._grid_text()}), got {tuple(known_mask.shape)}"
            )
        return known_mask.reshape(n, -1)


@register("maskgit")
def maskgit(
    *,
    num_codes: int,
    grid: Sequence[int],
    num_classes: int | None = 0,
    class_dropout: float = 0.0,
    num_conds: int | None = None,
    cond_per_step: int = 1,
    dim: int = 128,
    layers: int = 4,
    heads: int = 4,
    mlp_ratio: int = 4,
    dropout: float = 0.0,
    patch: int | Sequence[int] = 1,
    prefix_share: float = 0.0,
    steps: int = 10,
    noise: float = 1.0,
) -> MaskGIT:
    """Build a :class:`MaskGIT`; `register` records every argument in ``model.config``.

    Example:
        >>> prior = maskgit(num_codes=256, grid=(4, 8, 8), num_conds=5)  # a code volume
        >>> cond = torch.zeros(2, 4, dtype=torch.long)  # one action per time step
        >>> prior.sample(2, cond=cond, temperature=0).shape
        torch.Size([2, 4, 8, 8])
    """
    return MaskGIT(
        num_codes,
        grid,
        num_classes=num_classes,
        class_dropout=class_dropout,
        num_conds=num_conds,
        cond_per_step=cond_per_step,
        dim=dim,
        layers=layers,
        heads=heads,
        mlp_ratio=mlp_ratio,
        dropout=dropout,
        patch=patch,
        prefix_share=prefix_share,
        steps=steps,
        noise=noise,
    )
