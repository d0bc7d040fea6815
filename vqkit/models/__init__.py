"""Models: the VQ-VAE, its likelihoods, the priors, and the builders by name."""

from vqkit.models.likelihood import (
    Categorical256,
    DiscretizedLogistic,
    GaussianLikelihood,
    Likelihood,
    build_likelihood,
)
from vqkit.models.pixelcnn import GatedPixelCNN, gated_pixelcnn
from vqkit.models.registry import BUILDERS, build_model, register
from vqkit.models.vqvae import VQVAE, VQVAEOutput, vqvae_image, vqvae_nd
from vqkit.models.wavenet import WaveNet, wavenet_prior
from vqkit.models.wavenet_decoder import CodeUpsampler, WaveNetDecoder, wavenet_decoder

__all__ = [
    "BUILDERS",
    "VQVAE",
    "Categorical256",
    "DiscretizedLogistic",
    "GatedPixelCNN",
    "GaussianLikelihood",
    "Likelihood",
    "VQVAEOutput",
    "WaveNet",
    "WaveNetDecoder",
    "CodeUpsampler",
    "build_likelihood",
    "build_model",
    "gated_pixelcnn",
    "register",
    "vqvae_image",
    "vqvae_nd",
    "wavenet_decoder",
    "wavenet_prior",
]
