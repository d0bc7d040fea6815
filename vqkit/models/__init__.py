"""Models: the VQ-VAE, its likelihoods, the priors, and the builders by name."""

from vqkit.models.likelihood import (
    Categorical256,
    DiscretizedLogistic,
    GaussianLikelihood,
    Likelihood,
    build_likelihood,
)
from vqkit.models.registry import BUILDERS, build_model, register
from vqkit.models.vqvae import VQVAE, VQVAEOutput, vqvae_image, vqvae_nd
