"""Gated PixelCNN prior over 2D code maps (van den Oord et al. 2016).

"Conditional Image Generation with PixelCNN Decoders", https://arxiv.org/abs/1606.05328.

Two stacks run side by side. The vertical stack sees every row above the current one (and, inside the
stack, the current row too); it reaches the horizontal stack only after a one-row down-shift, so no
pixel ever sees itself or the future. The horizontal stack sees the current row to the left. Together
they cover the whole causal past, with none of the blind spot of a plain masked-convolution PixelCNN.

Masks are realised by padding and cropping ordinary convolutions, so the full (teacher-forced) pass and
the one-pixel-at-a-time sampler call the very same submodules on differently sized slices.

Example:
    >>> model = GatedPixelCNN(num_codes=512, channels=64, num_layers=8)
    >>> codes = torch.randint(0, 512, (4, 8, 8))
    >>> model(codes).shape
    torch.Size([4, 512, 8, 8])
    >>> model.sample(2, (8, 8)).shape
    torch.Size([2, 8, 8])
"""

from __future__ import annotations

import math

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
from vqkit.models.wavenet import check_generator


def _gate(x: Tensor) -> Tensor:
    """Gated activation tanh(a) * sigmoid(b) over the two channel halves of x (B, 2C, ...)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer holding a vertical and a horizontal stack.

    Args:
        channels: Feature channels C of both stacks.
        kernel_size: Odd kernel width k >= 3; the vertical stack looks k // 2 rows up.
        mask_a: First layer: the horizontal stack excludes the current pixel and has no residual,
            because its input is the embedding of the very code being predicted.
        num_classes: If set, a learned per-class bias is added to both stacks' gate pre-activations
            (this many rows: the classes, and the null class of classifier-free guidance if any).
    """

    def __init__(
        self, channels: int, kernel_size: int, *, mask_a: bool, num_classes: int | None = None
    ) -> None:
        super().__init__()
        self.half = kernel_size // 2
        self.mask_a = mask_a
        # Row r of the vertical output sees rows r - half .. r, all k columns around it.
        self.v_conv = nn.Conv2d(channels, 2 * channels, (self.half + 1, kernel_size))
        # Mask 'A' sees columns j - half .. j - 1, mask 'B' columns j - half .. j.
        h_width = self.half if mask_a else self.half + 1
        self.h_conv = nn.Conv2d(channels, 2 * channels, (1, h_width))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.class_bias = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    def vertical_pre(self, v: Tensor) -> Tensor:
        """Vertical pre-activations (B, C, h, w) -> (B, 2C, h, w); zero padding above and beside."""
        return self.v_conv(F.pad(v, (self.half, self.half, self.half, 0)))

    def horizontal_pre(self, h: Tensor) -> Tensor:
        """Horizontal pre-activations (B, C, h, w) -> (B, 2C, h, w); zero padding on the left."""
        out = self.h_conv(F.pad(h, (self.half, 0, 0, 0)))
        # Mask 'A': the kernel is one narrower, so the output has w + 1 columns and column j of
        # the first w ends at input column j - 1.
        return out[..., :-1] if self.mask_a else out

    def cond(self, y: Tensor | None) -> Tensor | float:
        """Class bias (B, 2C, 1, 1) for labels y (B,), or 0 for an unconditional layer."""
        if self.class_bias is None or y is None:
            return 0.0
        return self.class_bias(y)[:, :, None, None]

    def horizontal_step(self, h: Tensor, v_pre_above: Tensor, cond: Tensor | float) -> Tensor:
        """Horizontal stack output at the last column of h.

        Args:
            h: Horizontal input (B, C, 1, w) ending at the current column (w <= half + 1).
            v_pre_above: Vertical pre-activations one row up at the same column(s), (B, 2C, 1, *),
                broadcastable to the output.
            cond: Class bias from `cond`.

        Returns:
            The layer's horizontal output, shaped like h's last column(s).
        """
        pre = self.horizontal_pre(h) + self.v_to_h(v_pre_above)
        out = self.h_out(_gate(pre + cond))
        return out if self.mask_a else out + h

    def forward(self, v: Tensor, h: Tensor, cond: Tensor | float) -> tuple[Tensor, Tensor]:
        """Full-map pass: v, h (B, C, H, W) -> (v', h') of the same shape."""
        v_pre = self.vertical_pre(v)  # (B, 2C, H, W)
        v_above = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # row i holds row i - 1: the down-shift
        return _gate(v_pre + cond), self.horizontal_step(h, v_above, cond)


class GatedPixelCNN(nn.Module):
    """Autoregressive prior p(codes) = prod_i p(code_i | codes before i in raster order).

    Args:
        num_codes: Codebook size K; codes are integers in [0, K).
        channels: Feature channels of both stacks (also the code embedding width).
        num_layers: Gated layers; the first is masked 'A', the rest 'B'. A map of H x W is fully
            covered (every earlier code reaches every later logit) once
            `num_layers * (kernel_size // 2) >= max(W - 1, H - 2)`.
        kernel_size: Odd kernel width >= 3.
        num_classes: If set, the model is class-conditional and every call needs labels y (B,):
            every gated layer adds a learned per-class bias to both stacks.
        class_dropout: Classifier-free guidance (:mod:`vqkit.models.guidance`): while training
            (:meth:`loss` in train mode), each label is replaced by a learned null class with
            this probability, so that :meth:`sample` can take a ``guidance`` scale. 0: no null
            class, training exactly as without guidance.
    """

    has_likelihood = True  # exact: nll_bits

    def __init__(
        self,
        num_codes: int,
        *,
        channels: int = 128,
        num_layers: int = 12,
        kernel_size: int = 3,
        num_classes: int | None = None,
        class_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int("num_codes", num_codes, 2)
        check_int("channels", channels)
        check_int("num_layers", num_layers)
        if not isinstance(kernel_size, int) or kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 3, got {kernel_size!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be None or an int >= 1, got {num_classes!r}")
        self.num_codes = num_codes
        self.channels = channels
        self.num_layers = num_layers
        self.kernel_size = kernel_size
        self.num_classes = num_classes
        self.class_dropout = check_class_dropout(class_dropout, num_classes)
        rows = class_table_size(num_classes, self.class_dropout) if num_classes else None

        self.embedding = nn.Embedding(num_codes, channels)
        self.layers = nn.ModuleList(
            GatedLayer(channels, kernel_size, mask_a=(i == 0), num_classes=rows)
            for i in range(num_layers)
        )
        # ELU (as in PixelCNN++) rather than ReLU: its gradient is never exactly zero.
        self.head = nn.Sequential(
            nn.ELU(), nn.Conv2d(channels, channels, 1), nn.ELU(), nn.Conv2d(channels, num_codes, 1)
        )

    # ---------------------------------------------------------------- validation

    def _check_codes(self, codes: Tensor) -> None:
        if not isinstance(codes, Tensor):
            raise ValueError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor (int64), got dtype {codes.dtype}")
        if codes.dim() != 3:
            raise ValueError(f"codes must have shape (B, H, W), got {tuple(codes.shape)}")
        if codes.numel() > 0:
            low, high = int(codes.min()), int(codes.max())
            if low < 0 or high >= self.num_codes:
                raise ValueError(
                    f"codes must lie in [0, {self.num_codes}), got values in [{low}, {high}]"
                )

    def _check_labels(self, y: Tensor | None, batch: int) -> None:
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y was given but the model is unconditional (num_classes=None)")
            return
        if y is None:
            raise ValueError(f"the model is class-conditional: pass labels y of shape ({batch},)")
        if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"y must be an integer tensor of shape ({batch},), got {y!r}")
        if tuple(y.shape) != (batch,):
            raise ValueError(f"y must have shape ({batch},), got {tuple(y.shape)}")
        if batch > 0 and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"y must lie in [0, {self.num_classes}), got values in [{int(y.min())}, {int(y.max())}]"
            )

    # ---------------------------------------------------------------- teacher forcing

    def forward_embeddings(self, emb: Tensor, y: Tensor | None = None) -> Tensor:
        """Logits from already embedded codes; lets tests differentiate w.r.t. the input.

        Args:
            emb: Float embeddings (B, C, H, W), C = channels.
            y: Class labels (B,) for a conditional model, else None.

        Returns:
            Logits (B, K, H, W).
        """
        if emb.dim() != 4 or emb.shape[1] != self.channels:
            raise ValueError(
                f"emb must have shape (B, {self.channels}, H, W), got {tuple(emb.shape)}"
            )
        self._check_labels(y, emb.shape[0])
        return self._run(emb, y)

    def _embed(self, codes: Tensor) -> Tensor:
        return self.embedding(codes).permute(0, 3, 1, 2)  # (B, C, H, W)

    def _run(self, emb: Tensor, y: Tensor | None) -> Tensor:
        """Logits (B, K, H, W) from embeddings; y unchecked (it may hold the null class)."""
        v = h = emb
        for layer in self.layers:
            v, h = layer(v, h, layer.cond(y))
        return self.head(h)

    def forward(self, codes: Tensor, y: Tensor | None = None) -> Tensor:
        """Teacher-forced logits: position p sees only codes before p in raster order.

        Args:
            codes: Integer code map (B, H, W) in [0, K).
            y: Class labels (B,) for a conditional model, else None.

        Returns:
            Logits (B, K, H, W).
        """
        self._check_codes(codes)
        return self.forward_embeddings(self._embed(codes), y)

    def loss(self, codes: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean cross-entropy over all codes, in nats (scalar); in train mode each label is
        replaced by the null class with probability ``class_dropout``."""
        self._check_codes(codes)
        self._check_labels(y, codes.shape[0])
        if self.training:
            y = drop_labels(y, self.class_dropout, self.num_classes)
        return F.cross_entropy(self._run(self._embed(codes), y), codes)

    def nll_bits(self, codes: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood in bits per code for each example, (B,)."""
        nll = F.cross_entropy(self(codes, y), codes, reduction="none")  # (B, H, W)
        return nll.flatten(1).mean(1) / math.log(2)

    # ---------------------------------------------------------------- sampling

    def sample(
        self,
        shape: int | tuple[int, int, int],
        size: tuple[int, int] | None = None,
        *,
        y: Tensor | int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        cached: bool = True,
        guidance: float = 1.0,
    ) -> Tensor:
        """Draw code maps in raster order.

        Args:
            shape: (n, H, W), or the number of samples n together with `size`.
            size: (H, W) when `shape` is an int.
            y: Labels (n,) or one int for all samples; required iff the model is conditional.
            temperature: Divides the logits; 0 picks the argmax. Must be >= 0.
            generator: Random generator on `device`, for reproducible samples.
            device: Where to sample; defaults to the model's device.
            cached: Use the incremental sampler (O(layers) work per code) instead of a full
                forward pass per code. Both give the same samples for the same generator state.
            guidance: Classifier-free guidance scale s >= 0: logits ``uncond + s * (cond -
                uncond)`` (:mod:`vqkit.models.guidance`); 1 (the default) is the plain
                conditional prior, other values need a model trained with ``class_dropout > 0``.
                Above 1, each code costs two network rows.

        Returns:
            Codes (n, H, W) int64 in [0, K).
        """
        n, height, width = self._sample_shape(shape, size)
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means argmax), got {temperature}")
        device = torch.device(device) if device is not None else self.embedding.weight.device
        check_generator(generator, device)
        if isinstance(y, int):
            y = torch.full((n,), y, dtype=torch.long, device=device)
        elif isinstance(y, Tensor):
            y = y.to(device)
        self._check_labels(y, n)
        guidance = check_guidance(
            guidance, num_classes=self.num_classes, has_null=self.class_dropout > 0
        )
        run = self._sample_cached if cached else self._sample_naive
        with torch.inference_mode():
            codes, _ = run(n, height, width, y, temperature, generator, device, guidance)
        # A clone made outside inference mode is an ordinary tensor, so samples can be fed back
        # into a forward pass that autograd records (e.g. to train on them).
        return codes.clone()

    @staticmethod
    def _sample_shape(
        shape: int | tuple[int, int, int], size: tuple[int, int] | None
    ) -> tuple[int, int, int]:
        if isinstance(shape, int):
            if size is None:
                raise ValueError(f"sample({shape}) needs size=(H, W), or pass shape=(n, H, W)")
            dims = (shape, *tuple(size))
        else:
            if size is not None:
                raise ValueError(f"pass either shape=(n, H, W) or n with size, got {shape}, {size}")
            dims = tuple(shape)
        if len(dims) != 3 or not all(isinstance(d, int) and d >= 1 for d in dims):
            raise ValueError(f"sample shape must be three positive ints (n, H, W), got {dims}")
        return dims

    @staticmethod
    def _pick(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
        """One code per row of logits (n, K) -> (n,)."""
        if temperature == 0:
            return logits.argmax(dim=1)
        probs = F.softmax(logits.float() / temperature, dim=1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    def _sample_naive(self, n, height, width, y, temperature, generator, device, guidance=1.0):
        """Reference sampler: one full forward pass per code. Returns (codes, logits), the
        logits after guidance."""
        g = Guided(y, guidance, self.num_classes)
        codes = torch.zeros(n, height, width, dtype=torch.long, device=device)
        logits = torch.zeros(n, self.num_codes, height, width, device=device)
        for i in range(height):
            for j in range(width):
                full = self._run(self._embed(g.expand(codes)), g.labels)
                logits[:, :, i, j] = g.combine(full[:, :, i, j])
                codes[:, i, j] = self._pick(logits[:, :, i, j], temperature, generator)
        return codes, logits

    def _sample_cached(self, n, height, width, y, temperature, generator, device, guidance=1.0):
        """Incremental sampler: per code, each layer computes one horizontal pixel; per finished
        row, each layer computes one vertical row. Returns (codes, logits), the logits after
        guidance; the caches hold the guided pass's rows (2n when it mixes two)."""
        c, half, dtype = self.channels, self.kernel_size // 2, self.embedding.weight.dtype
        g = Guided(y, guidance, self.num_classes)
        conds = [layer.cond(g.labels) for layer in self.layers]
        rows = n * g.copies
        # Vertical inputs of each layer for the last half + 1 rows; zeros stand for the padding
        # above the map, exactly as in the full pass.
        v_in = [
            torch.zeros(rows, c, half + 1, width, device=device, dtype=dtype) for _ in self.layers
        ]
        # Vertical pre-activations one row up (the down-shifted rows feeding the horizontal stack).
        v_above = [
            torch.zeros(rows, 2 * c, 1, width, device=device, dtype=dtype) for _ in self.layers
        ]
        # Horizontal inputs of each layer for the current row.
        h_in = [torch.zeros(rows, c, 1, width, device=device, dtype=dtype) for _ in self.layers]
        codes = torch.zeros(n, height, width, dtype=torch.long, device=device)
        logits = torch.zeros(n, self.num_codes, height, width, device=device)

        for i in range(height):
            for buf in v_in:  # slide the window down one row
                buf[:, :, :-1] = buf[:, :, 1:].clone()
                buf[:, :, -1] = 0
            for j in range(width):
                cols = slice(max(0, j - half), j + 1)
                for layer_idx, layer in enumerate(self.layers):
                    out = layer.horizontal_step(
                        h_in[layer_idx][:, :, :, cols],
                        v_above[layer_idx][:, :, :, j : j + 1],
                        conds[layer_idx],
                    )[..., -1]  # (rows, C, 1)
                    if layer_idx + 1 < len(self.layers):
                        h_in[layer_idx + 1][:, :, :, j] = out
                logits[:, :, i, j] = g.combine(self.head(out[..., None])[:, :, 0, 0])
                codes[:, i, j] = self._pick(logits[:, :, i, j], temperature, generator)
                emb = self.embedding(g.expand(codes[:, i, j]))  # (rows, C)
                h_in[0][:, :, 0, j] = emb
                v_in[0][:, :, -1, j] = emb
            for layer_idx, layer in enumerate(self.layers):  # the row is done: advance vertically
                v_pre = layer.vertical_pre(v_in[layer_idx])[:, :, -1:]  # (rows, 2C, 1, W)
                v_above[layer_idx] = v_pre
                if layer_idx + 1 < len(self.layers):
                    v_in[layer_idx + 1][:, :, -1:] = _gate(v_pre + conds[layer_idx])
        return codes, logits


@register("gated_pixelcnn")
def gated_pixelcnn(
    *,
    num_codes: int,
    channels: int = 64,
    num_layers: int = 8,
    kernel_size: int = 3,
    num_classes: int | None = None,
    class_dropout: float = 0.0,
) -> GatedPixelCNN:
    """Build a GatedPixelCNN; `register` records every argument in `model.config`.

    Example:
        >>> model = gated_pixelcnn(num_codes=256, channels=32, num_layers=4)
        >>> model.config["builder"]
        'gated_pixelcnn'
        >>> from vqkit.models import build_model
        >>> build_model(model.config).num_codes
        256
    """
    return GatedPixelCNN(
        num_codes,
        channels=channels,
        num_layers=num_layers,
        kernel_size=kernel_size,
        num_classes=num_classes,
        class_dropout=class_dropout,
    )
