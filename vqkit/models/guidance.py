"""Classifier-free guidance for class-conditional priors (Ho & Salimans 2022).

"Classifier-Free Diffusion Guidance", https://arxiv.org/abs/2207.12598.

Training replaces each label by a null class (index ``num_classes``, a learned embedding like
the others) with probability ``class_dropout``, so one network learns both the conditional and
the unconditional distribution. Sampling mixes the two sets of logits,
``uncond + guidance * (cond - uncond)``: guidance 1 is the plain conditional prior, 0 the
unconditional one, above 1 a prior that follows the class more than its training data did.

The Gated PixelCNN (both samplers) and MaskGIT share this module: :func:`check_class_dropout`
and :func:`drop_labels` for training, :class:`Guided` for the sampling loops, which run the
network on :attr:`Guided.labels` (and :meth:`Guided.expand` of their other inputs) and hand its
logits to :meth:`Guided.combine`.

Example:
    >>> y = torch.tensor([2, 0])
    >>> g = Guided(y, 3.0, null=5)
    >>> g.labels.tolist()  # the conditional rows, then the unconditional ones
    [2, 0, 5, 5]
    >>> cond, uncond = torch.ones(2, 4), torch.zeros(2, 4)
    >>> g.combine(torch.cat([cond, uncond]))[0].tolist()
    [3.0, 3.0, 3.0, 3.0]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_class_dropout(class_dropout, num_classes: int | None) -> float:
    """``class_dropout`` as a float in [0, 1); > 0 needs a class-conditional model."""
    if (
        isinstance(class_dropout, bool)
        or not isinstance(class_dropout, (int, float))
        or not 0 <= class_dropout < 1
    ):
        raise ValueError(f"class_dropout must be a number in [0, 1), got {class_dropout!r}")
    if class_dropout > 0 and not num_classes:
        raise ValueError(
            "class_dropout > 0 replaces class labels by a null class, but the model is "
            "unconditional (no classes): set class_dropout to 0"
        )
    return float(class_dropout)


def class_table_size(num_classes: int, class_dropout: float) -> int:
    """Rows of a class embedding: one per class, plus the null class when it is trained."""
    return num_classes + 1 if class_dropout > 0 else num_classes


def drop_labels(y: Tensor | None, class_dropout: float, null: int) -> Tensor | None:
    """Labels with each replaced by ``null`` with probability ``class_dropout`` (training).

    Draws from torch's default generator, so seeding makes training reproducible; with
    ``class_dropout == 0`` (or no labels) it returns ``y`` itself and draws nothing, so training
    is exactly what it was without guidance.
    """
    if y is None or class_dropout == 0:
        return y
    return y.masked_fill(torch.rand(y.shape, device=y.device) < class_dropout, null)


def check_guidance(guidance, *, num_classes: int | None, has_null: bool) -> float:
    """``guidance`` as a float >= 0; other than 1 it needs a trained null class."""
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, (int, float))
        or not math.isfinite(guidance)
        or guidance < 0
    ):
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if guidance != 1 and not num_classes:
        raise ValueError(
            f"guidance={guidance} mixes class-conditional and unconditional logits, but the "
            "prior is unconditional: use guidance 1"
        )
    if guidance != 1 and not has_null:
        raise ValueError(
            f"guidance={guidance} needs a prior trained with class_dropout > 0 (it learns the "
            "null class the unconditional logits come from): retrain it so, or use guidance 1"
        )
    return float(guidance)


class Guided:
    """The labels a sampling loop feeds its network, and how its logits are combined.

    Args:
        y: Labels ``(n,)``, or None for an unconditional prior (then nothing changes).
        guidance: The scale s >= 0 (checked by :func:`check_guidance`).
        null: The null class's index (``num_classes``).

    Guidance 1 runs the network on ``y`` alone and 0 on the null class alone, so both give
    exactly the plain conditional and unconditional logits; any other scale runs one batch of
    ``2n`` rows (``y``, then the null class) and returns ``uncond + s * (cond - uncond)``.
    """

    def __init__(self, y: Tensor | None, guidance: float, null: int) -> None:
        self.guidance = float(guidance)
        self.copies = 1
        if y is None or guidance == 1:
            self.labels = y
        elif guidance == 0:
            self.labels = torch.full_like(y, null)
        else:
            self.labels = torch.cat([y, torch.full_like(y, null)])
            self.copies = 2

    def expand(self, x: Tensor | None) -> Tensor | None:
        """Another per-item input ``(n, ...)`` repeated for the rows the network runs on."""
        return x if x is None or self.copies == 1 else torch.cat([x, x])

    def combine(self, logits: Tensor) -> Tensor:
        """Network logits over :attr:`labels`' rows ``(copies * n, ...)`` -> ``(n, ...)``."""
        if self.copies == 1:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + self.guidance * (cond - uncond)
