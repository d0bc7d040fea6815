"""One builder for every quantizer of vqkit, selected by ``kind``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from vqkit.quantize.base import Quantizer
from vqkit.quantize.fsq import FSQ, levels_for
from vqkit.quantize.lfq import LFQ
from vqkit.quantize.residual import ResidualVQ
from vqkit.quantize.simvq import SimVQ
from vqkit.quantize.vq import VectorQuantizer

KINDS = ("vq", "fsq", "lfq", "simvq", "residual")


def _options(cls: type) -> set[str]:
    """Keyword options of a quantizer's constructor, less ``num_codes`` and ``dim``."""
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY} - {"num_codes", "dim"}


# `levels` means two things: FSQ's steps per channel (a list) and residual VQ's number of
# stages (an int), as in the constructors.
OPTIONS: dict[str, set[str]] = {
    "vq": _options(VectorQuantizer),
    "fsq": {"levels", *_options(FSQ)},
    "lfq": _options(LFQ),
    "simvq": _options(SimVQ),
    "residual": {"levels", *(_options(VectorQuantizer) - {"heads"})},
}


def build_quantizer(kind: str, *, dim: int, num_codes: int | None = None, **kwargs) -> Quantizer:
    """Build the quantizer ``kind`` for inputs ``(B, dim, *spatial)``.

    Args:
        kind: ``"vq"`` (:class:`VectorQuantizer`), ``"fsq"`` (:class:`FSQ`), ``"lfq"``
            (:class:`LFQ`), ``"simvq"`` (:class:`SimVQ`) or ``"residual"`` (:class:`ResidualVQ`).
        dim: channel size D of the input.
        num_codes: codebook size K (of each level for residual VQ). Required except for FSQ,
            where K is ``prod(levels)``; given alone, FSQ takes the paper's levels for a
            target of 2^8, 2^10, 2^12, 2^14 or 2^16 codes (table 1: [8, 6, 5], [8, 5, 5, 5],
            [7, 5, 5, 5, 5], [8, 8, 8, 6, 5], [8, 8, 8, 5, 5, 5], so K is then 240, 1000, 4375,
            15360 or 64000); given with levels, it must equal their product. LFQ needs a power
            of 2.
        **kwargs: options of that kind's constructor:

            * vq: beta, codebook_weight, ema, decay, eps, kmeans_init, kmeans_iters,
              restart_after, restart_below, restart_from, cosine, code_dim, heads, rotation, seed
            * fsq: levels (list of ints), eps
            * lfq: beta, entropy_weight, diversity_gamma, inv_temperature, codebook_scale
            * simvq: beta, codebook_weight, code_dim, rotation, seed
            * residual: levels (int, number of stages, required) and vq's options but heads

    Raises:
        ValueError: unknown kind (lists the known ones), an option that does not apply to the
            kind (names both), or missing / inconsistent sizes.

    Example:
        >>> import torch
        >>> fsq = build_quantizer("fsq", dim=64, num_codes=1024)
        >>> fsq.levels, fsq.num_codes
        ([8, 5, 5, 5], 1000)
        >>> build_quantizer("lfq", dim=64, num_codes=1024)(torch.randn(2, 64, 8)).codes.shape
        torch.Size([2, 8])
        >>> build_quantizer("fsq", dim=64, num_codes=1000)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: FSQ has recommended levels only for num_codes in ...
    """
    if kind not in OPTIONS:
        raise ValueError(f"unknown quantizer kind {kind!r}; known kinds: {', '.join(KINDS)}")
    unknown = sorted(set(kwargs) - OPTIONS[kind])
    if unknown:
        raise ValueError(
            f"argument(s) {', '.join(unknown)} do not apply to quantizer kind {kind!r}; "
            f"it takes {', '.join(sorted(OPTIONS[kind])) or 'no options'}"
        )
    if kind == "fsq":
        return _build_fsq(dim, num_codes, **kwargs)
    if num_codes is None:
        raise ValueError(f"quantizer kind {kind!r} needs num_codes")
    if kind == "vq":
        return VectorQuantizer(num_codes, dim, **kwargs)
    if kind == "lfq":
        return LFQ(num_codes, dim, **kwargs)
    if kind == "simvq":
        return SimVQ(num_codes, dim, **kwargs)
    levels = kwargs.pop("levels", None)
    if not isinstance(levels, int) or isinstance(levels, bool):
        raise ValueError(
            f"quantizer kind 'residual' needs levels=<number of stages> (an int), got {levels!r}"
        )
    return ResidualVQ(levels, num_codes, dim, **kwargs)


def _build_fsq(dim: int, num_codes: int | None, levels: Sequence[int] | None = None, **kwargs):
    if levels is None:
        if num_codes is None:
            raise ValueError("quantizer kind 'fsq' needs levels=[...] or num_codes")
        return FSQ(levels_for(num_codes), dim, **kwargs)  # K is then prod(levels), as the paper
    if isinstance(levels, (int, str)) or not isinstance(levels, Sequence):
        raise ValueError(f"FSQ levels must be a list of ints, got {levels!r}")
    fsq = FSQ(levels, dim, **kwargs)
    if num_codes is not None and num_codes != fsq.num_codes:
        raise ValueError(
            f"FSQ levels {list(levels)} give {fsq.num_codes} codes, not num_codes={num_codes}; "
            f"give one of the two"
        )
    return fsq
