"""The VQ-VAE encoder and decoder, for 1, 2 or 3 spatial axes and per-axis strides.

Encoder (paper section 4.1 / Sonnet's example, generalised to any number of stages):
strided convs with ReLU between them, a 3-tap conv, a residual stack, and a 1x1 conv to the code
dimension D. The decoder mirrors it: 3-tap conv, residual stack, transposed convs in reverse
stage order. The first stage works at the highest resolution, so it gets ``hidden // 2``
channels when there are several stages, as in Sonnet (``[hidden // 2, hidden]`` for two).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from vqkit.errors import check_int
from vqkit.nn.blocks import Downsample, ResStack, Upsample
from vqkit.nn.conv import Stride, check_dims, conv_nd, strides_per_stage, total_factor


def check_sizes(**sizes: int) -> None:
    """Raise ValueError naming the first size below 1 (a zero-channel conv fails deep in torch)."""
    for name, value in sizes.items():
        check_int(name, value)


def _stage_channels(hidden: int, num_stages: int) -> list[int]:
    """Output channels of each downsampling stage (Sonnet: ``[hidden // 2, hidden]``)."""
    return [max(hidden // 2, 1) if i == 0 and num_stages > 1 else hidden for i in range(num_stages)]


class Encoder(nn.Module):
    """Maps data to the continuous latents ``z_e`` that the quantizer snaps to codes.

    Args:
        dims: number of spatial axes (1 audio, 2 images, 3 video).
        in_channels: data channels, e.g. 3 for RGB.
        hidden: channels of the conv stack (256 in the paper, 128 in Sonnet's CIFAR example).
        out_channels: the code dimension D.
        strides: one stride per downsampling stage, each an int or one int per axis,
            e.g. ``[2, 2]`` for images or ``[(2, 2, 2), (1, 2, 2)]`` for video.
        res_hidden: channels inside each residual block.
        num_res_blocks: residual blocks in the stack.

    Attributes:
        factor: total downsampling per spatial axis, e.g. ``(4, 4)`` for strides ``[2, 2]``.

    Shape:
        ``(B, in_channels, *spatial) -> (B, out_channels, *(n // f for n, f in zip(spatial, factor)))``

    Examples:
        >>> enc = Encoder(2, 3, 32, 8, strides=[2, 2], res_hidden=8, num_res_blocks=1)
        >>> enc(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        hidden: int,
        out_channels: int,
        *,
        strides: Sequence[Stride],
        res_hidden: int,
        num_res_blocks: int,
    ) -> None:
        super().__init__()
        check_sizes(in_channels=in_channels, hidden=hidden, out_channels=out_channels)
        check_sizes(res_hidden=res_hidden)
        self.dims = check_dims(dims)
        self.in_channels = in_channels
        self.strides = strides_per_stage(strides, dims)
        self.factor = total_factor(self.strides)

        layers: list[nn.Module] = []
        ch = in_channels
        for i, (stride, out_ch) in enumerate(
            zip(self.strides, _stage_channels(hidden, len(self.strides)))
        ):
            if i > 0:
                layers.append(nn.ReLU(inplace=True))
            layers.append(Downsample(dims, ch, out_ch, stride))
            ch = out_ch
        layers.append(nn.ReLU(inplace=True))
        layers.append(conv_nd(dims, ch, hidden, 3, padding=1))
        layers.append(ResStack(dims, hidden, res_hidden, num_res_blocks))
        layers.append(conv_nd(dims, hidden, out_channels, 1))  # pre-quantization projection to D
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, *spatial) -> (B, D, *spatial / factor)``; sizes must divide by ``factor``."""
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Encoder(dims={self.dims}, in_channels={self.in_channels}) expects input "
                f"(B, {self.in_channels}, " + ", ".join(["size"] * self.dims) + f"), got shape "
                f"{tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if 0 in spatial:
            raise ValueError(
                f"input spatial size {spatial} is empty; each axis needs a positive multiple of "
                f"the downsampling factor {self.factor}"
            )
        if any(n % f for n, f in zip(spatial, self.factor)):
            raise ValueError(
                f"input spatial size {spatial} is not divisible by the encoder's downsampling "
                f"factor {self.factor} (per axis); crop or pad the input to a multiple of "
                f"{self.factor}, e.g. to {tuple(n // f * f for n, f in zip(spatial, self.factor))} "
                f"by cropping"
            )
        return self.net(x)


class Decoder(nn.Module):
    """Maps (quantized) latents back to data-space parameters; the mirror of :class:`Encoder`.

    Args:
        dims: number of spatial axes.
        in_channels: the code dimension D.
        hidden: channels of the conv stack.
        out_channels: output channels, e.g. ``likelihood.out_channels(C)``.
        strides: the *encoder's* per-stage strides; applied here in reverse order.
        res_hidden: channels inside each residual block.
        num_res_blocks: residual blocks in the stack.

    Attributes:
        factor: total upsampling per spatial axis.

    Shape:
        ``(B, in_channels, *spatial) -> (B, out_channels, *(n * f for n, f in zip(spatial, factor)))``
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        hidden: int,
        out_channels: int,
        *,
        strides: Sequence[Stride],
        res_hidden: int,
        num_res_blocks: int,
    ) -> None:
        super().__init__()
        check_sizes(in_channels=in_channels, hidden=hidden, out_channels=out_channels)
        check_sizes(res_hidden=res_hidden)
        self.dims = check_dims(dims)
        self.strides = strides_per_stage(strides, dims)
        self.factor = total_factor(self.strides)

        layers: list[nn.Module] = [
            conv_nd(dims, in_channels, hidden, 3, padding=1),
            ResStack(dims, hidden, res_hidden, num_res_blocks),
        ]
        # Stage i of the encoder maps chans[i] -> chans[i + 1]; undo the stages last to first.
        chans = [out_channels, *_stage_channels(hidden, len(self.strides))]
        for i in reversed(range(len(self.strides))):
            layers.append(Upsample(dims, chans[i + 1], chans[i], self.strides[i]))
            if i > 0:
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """``(B, D, *spatial) -> (B, out_channels, *spatial * factor)``."""
        return self.net(z)
