"""The one quantizer core of vqkit: tensors ``(B, D, *spatial)`` of any rank."""

from vqkit.quantize.base import Quantizer, QuantizerOutput
from vqkit.quantize.residual import ResidualVQ
from vqkit.quantize.vq import VectorQuantizer

__all__ = ["Quantizer", "QuantizerOutput", "ResidualVQ", "VectorQuantizer"]
