"""Reconstruction metrics: MSE, PSNR, data variance (to normalise MSE) and bits per dimension."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

_REDUCTIONS = ("mean", "none")


def _check_pair(x: Tensor, y: Tensor, reduction: str) -> None:
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"expected a batch (B, ...) with B >= 1, got shape {tuple(x.shape)}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def mse(x: Tensor, y: Tensor, *, reduction: str = "mean") -> Tensor:
    """Mean squared error.

    Args:
        x, y: ``(B, ...)`` tensors of the same shape.
        reduction: ``"mean"`` for one scalar over everything, ``"none"`` for one value per example.

    Returns:
        Scalar, or ``(B,)`` with ``reduction="none"`` (mean over all non-batch axes). float32 or
        wider.
    """
    _check_pair(x, y, reduction)
    err = (x.float() - y.float()).pow(2).reshape(x.shape[0], -1).mean(dim=1)  # (B,)
    return err if reduction == "none" else err.mean()


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0, *, reduction: str = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``, per example.

    The mean is the mean of per-example PSNRs (the usual convention in image papers), not the
    PSNR of the mean MSE. An exact reconstruction gives ``inf``.

    Args:
        x, y: ``(B, ...)`` tensors of the same shape.
        data_range: Peak-to-peak range of the data: 1 for ``[0, 1]``, 2 for ``[-1, 1]``, 255.
        reduction: ``"mean"`` (scalar) or ``"none"`` (``(B,)``).

    Returns:
        Scalar, or ``(B,)`` with ``reduction="none"``.
    """
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    per_example = 10.0 * torch.log10(data_range**2 / mse(x, y, reduction="none"))  # (B,)
    return per_example if reduction == "none" else per_example.mean()


def data_variance(data: Tensor | Iterable, *, max_items: int | None = None) -> float:
    """Variance of every value in a tensor or in a data set's inputs (population variance).

    The VQ-VAE paper reports reconstruction MSE divided by this, so numbers compare across data
    sets. For a data set, each item's first element (``item[0]`` of a tuple) is taken as the
    input; sums are accumulated in float64 so long data sets do not lose precision.

    Args:
        data: A tensor of any shape, or an iterable (Dataset, list) of tensors or tuples.
        max_items: Use only the first ``max_items`` items of a data set.

    Returns:
        The variance as a Python float.
    """
    if isinstance(data, Tensor):
        if data.numel() == 0:
            raise ValueError("data_variance of an empty tensor is undefined")
        return float(data.double().var(correction=0))
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be positive or None, got {max_items!r}")
    count, total, total_sq = 0, 0.0, 0.0
    shift = None  # subtract the first item's mean: the two-sum formula then stays accurate
    for i, item in enumerate(_iterate(data)):
        if max_items is not None and i >= max_items:
            break
        x = item[0] if isinstance(item, (tuple, list)) else item
        x = torch.as_tensor(x).double()
        if shift is None:
            shift = float(x.mean()) if x.numel() else 0.0
        x = x - shift
        count += x.numel()
        total += float(x.sum())
        total_sq += float(x.pow(2).sum())
    if count == 0:
        raise ValueError("data_variance of an empty data set is undefined")
    mean = total / count
    return max(total_sq / count - mean * mean, 0.0)


def _iterate(data: Iterable):
    # Map-style Datasets without __iter__ are indexed up to len(); others are simply iterated.
    if hasattr(data, "__len__") and hasattr(data, "__getitem__") and not hasattr(data, "__iter__"):
        return (data[i] for i in range(len(data)))
    return iter(data)


def bits_per_dim(nll_nats: float | Tensor, num_dims: int) -> float | Tensor:
    """Convert a negative log-likelihood in nats to bits per dimension.

    Args:
        nll_nats: NLL of one example (or a tensor of them) in nats, summed over its dimensions.
        num_dims: Number of dimensions it covers, e.g. ``C * H * W`` for an image or the number
            of codes in a latent grid.

    Returns:
        ``nll_nats / (num_dims * ln 2)``, a float or a tensor like ``nll_nats``.
    """
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
        raise ValueError(f"num_dims must be a positive int, got {num_dims!r}")
    return nll_nats / (num_dims * math.log(2.0))
