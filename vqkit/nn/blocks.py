"""Residual blocks and strided down/upsampling convs, for any number of spatial axes."""

from __future__ import annotations

from torch import Tensor, nn

from vqkit.nn.conv import Stride, conv_nd, conv_transpose_nd, down_kernel_padding, to_tuple


class ResBlock(nn.Module):
    """The VQ-VAE residual block: ``x + conv1x1(relu(conv3x3(relu(x))))``.

    As in the paper and Sonnet's example, with no normalisation; the 3-tap kernel is 3x3 for
    images, 3 for audio and 3x3x3 for video.

    Args:
        dims: number of spatial axes (1, 2 or 3).
        channels: input and output channels.
        hidden: channels inside the block.

    Shape:
        ``(B, channels, *spatial) -> (B, channels, *spatial)``
    """

    def __init__(self, dims: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),  # not in-place: the input is needed again for the residual add
            conv_nd(dims, channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            conv_nd(dims, hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class ResStack(nn.Module):
    """``num_blocks`` :class:`ResBlock` s followed by a ReLU (as in Sonnet's ``ResidualStack``).

    Shape:
        ``(B, channels, *spatial) -> (B, channels, *spatial)``
    """

    def __init__(self, dims: int, channels: int, hidden: int, num_blocks: int) -> None:
        super().__init__()
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        self.blocks = nn.Sequential(*(ResBlock(dims, channels, hidden) for _ in range(num_blocks)))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.blocks(x))


class Downsample(nn.Module):
    """A strided conv dividing each spatial axis exactly by its stride.

    Kernel ``2 * stride`` and padding ``stride // 2`` per axis for even strides (kernel 4,
    stride 2, padding 1 in the paper); see :func:`vqkit.nn.conv.down_kernel_padding` for odd
    strides.

    Args:
        dims: number of spatial axes.
        in_ch: input channels.
        out_ch: output channels.
        stride: an int, or one int per axis, e.g. ``(1, 2, 2)`` to keep video time as is.

    Shape:
        ``(B, in_ch, *spatial) -> (B, out_ch, *(n // s for n, s in zip(spatial, stride)))``
        when every size is divisible by its stride.
    """

    def __init__(self, dims: int, in_ch: int, out_ch: int, stride: Stride) -> None:
        super().__init__()
        self.stride = to_tuple(stride, dims)
        kernel, padding = down_kernel_padding(self.stride)
        self.conv = conv_nd(dims, in_ch, out_ch, kernel, stride=self.stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """The transposed-conv mirror of :class:`Downsample`: multiplies each axis by its stride.

    Shape:
        ``(B, in_ch, *spatial) -> (B, out_ch, *(n * s for n, s in zip(spatial, stride)))``
    """

    def __init__(self, dims: int, in_ch: int, out_ch: int, stride: Stride) -> None:
        super().__init__()
        self.stride = to_tuple(stride, dims)
        kernel, padding = down_kernel_padding(self.stride)
        self.conv = conv_transpose_nd(
            dims, in_ch, out_ch, kernel, stride=self.stride, padding=padding
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)
