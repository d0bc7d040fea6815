"""The one quantizer core of vqkit: tensors ``(B, D, *spatial)`` of any rank."""

from vqkit.quantize.base import Quantizer, QuantizerOutput
from vqkit.quantize.factory import KINDS, build_quantizer
from vqkit.quantize.fsq import FSQ
from vqkit.quantize.lfq import LFQ
from vqkit.quantize.residual import ResidualVQ
from vqkit.quantize.simvq import SimVQ
from vqkit.quantize.vq import VectorQuantizer

__all__ = [
    "FSQ",
    "KINDS",
    "LFQ",
    "Quantizer",
    "QuantizerOutput",
    "ResidualVQ",
    "SimVQ",
    "VectorQuantizer",
    "build_quantizer",
]
