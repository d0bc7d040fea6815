"""Convolution factories for 1, 2 or 3 spatial axes, and per-axis stride helpers.

One ``dims`` argument picks ``nn.Conv1d``/``Conv2d``/``Conv3d`` (as in guided-diffusion's
``nn.py``), so a network is written once and serves audio (1), images (2) and video (3).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}

Stride = int | Sequence[int]


def check_dims(dims: int) -> int:
    """Return ``dims`` if it is 1, 2 or 3, else raise a ValueError."""
    if isinstance(dims, bool) or dims not in _CONV:
        raise ValueError(
            f"dims must be 1 (audio), 2 (images) or 3 (video), got {dims!r}; "
            "it is the number of spatial axes after (batch, channels)"
        )
    return dims


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A ``Conv{dims}d`` built from the usual ``nn.Conv*d`` arguments.

    Examples:
        >>> conv_nd(2, 3, 8, 3, padding=1)(torch.zeros(1, 3, 16, 16)).shape
        torch.Size([1, 8, 16, 16])
    """
    return _CONV[check_dims(dims)](*args, **kwargs)


def conv_transpose_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A ``ConvTranspose{dims}d`` built from the usual ``nn.ConvTranspose*d`` arguments."""
    return _CONV_T[check_dims(dims)](*args, **kwargs)


def to_tuple(value: Stride, dims: int, name: str = "stride") -> tuple[int, ...]:
    """Normalise an int or a per-axis sequence to a tuple of ``dims`` positive ints.

    Args:
        value: ``2`` means 2 on every axis; ``(1, 2, 2)`` gives one value per spatial axis
            (for video: time first, then height and width). Lists are accepted, so values read
            back from JSON/YAML work.
        dims: number of spatial axes.
        name: what the value is, for the error message.

    Returns:
        A tuple of ``dims`` positive ints.

    Examples:
        >>> to_tuple(2, 3)
        (2, 2, 2)
        >>> to_tuple([1, 2, 2], 3)
        (1, 2, 2)
    """
    check_dims(dims)
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a sequence of {dims} ints, got {value!r}")
    if isinstance(value, int):
        out = (value,) * dims
    elif isinstance(value, Sequence) and not isinstance(value, str):
        out = tuple(value)
        if len(out) != dims or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
            raise ValueError(
                f"{name} {value!r} must give one int per spatial axis ({dims} for dims={dims}), "
                f"or be a single int applied to every axis"
            )
    else:
        raise ValueError(f"{name} must be an int or a sequence of {dims} ints, got {value!r}")
    if any(v < 1 for v in out):
        raise ValueError(f"{name} {value!r} must be >= 1 on every axis")
    return out


def strides_per_stage(strides: Sequence[Stride], dims: int) -> list[tuple[int, ...]]:
    """Normalise a list of per-stage strides to per-axis tuples.

    Examples:
        >>> strides_per_stage([(1, 2, 2), 2], 3)
        [(1, 2, 2), (2, 2, 2)]
    """
    if isinstance(strides, int | str) or not isinstance(strides, Sequence):
        raise ValueError(
            f"strides must be a list with one stride per downsampling stage, e.g. [2, 2], "
            f"got {strides!r}"
        )
    if len(strides) == 0:
        raise ValueError("strides must name at least one downsampling stage, e.g. [2, 2]")
    return [to_tuple(s, dims, name=f"strides[{i}]") for i, s in enumerate(strides)]


def total_factor(strides: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """Per-axis product of the stage strides: the total down/upsampling factor."""
    factor = [1] * len(strides[0])
    for stride in strides:
        factor = [f * s for f, s in zip(factor, stride)]
    return tuple(factor)


def down_kernel_padding(stride: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Kernel and padding for a strided conv whose output size is exactly ``size / stride``.

    An even stride ``s`` takes kernel ``2s`` and padding ``s // 2`` (kernel 4, stride 2,
    padding 1 as in the VQ-VAE paper). An odd stride cannot split ``2s - s`` padding evenly,
    so it takes kernel ``2s + 1`` and padding ``(s + 1) // 2``; stride 1 (an axis that is not
    downsampled at this stage) thus gets a plain size-preserving 3-tap conv.
    The transposed conv with the same kernel and padding inverts the size exactly.
    """
    kernel = tuple(2 * s if s % 2 == 0 else 2 * s + 1 for s in stride)
    padding = tuple(s // 2 if s % 2 == 0 else (s + 1) // 2 for s in stride)
    return kernel, padding
