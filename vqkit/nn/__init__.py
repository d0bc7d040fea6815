"""Dimension-generic building blocks: one ``dims`` argument (1, 2, 3) for audio, images, video."""

from vqkit.nn.blocks import Downsample, ResBlock, ResStack, Upsample
from vqkit.nn.conv import conv_nd, conv_transpose_nd, strides_per_stage, to_tuple, total_factor
from vqkit.nn.encoder import Decoder, Encoder

__all__ = [
    "Decoder",
    "Downsample",
    "Encoder",
    "ResBlock",
    "ResStack",
    "Upsample",
    "conv_nd",
    "conv_transpose_nd",
    "strides_per_stage",
    "to_tuple",
    "total_factor",
]
