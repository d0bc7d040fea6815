"""Metrics: reconstruction quality and codebook health."""

from vqkit.metrics.codebook import (
    LN2,
    CodeUsageTracker,
    code_histogram,
    perplexity,
    unigram_bits,
    usage,
)
from vqkit.metrics.reconstruction import bits_per_dim, data_variance, mse, psnr
from vqkit.metrics.units import (
    abx_error,
    chance_accuracy,
    code_label_accuracy,
    pnmi,
    purity,
)

__all__ = [
    "LN2",
    "abx_error",
    "chance_accuracy",
    "code_label_accuracy",
    "pnmi",
    "purity",
    "CodeUsageTracker",
    "bits_per_dim",
    "code_histogram",
    "data_variance",
    "mse",
    "perplexity",
    "psnr",
    "unigram_bits",
    "usage",
]
