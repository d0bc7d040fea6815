"""Models: the VQ-VAE, its likelihoods, the priors, and the builders by name."""

from vqkit.models.likelihood import (
    Categorical256,
    DiscretizedLogistic,
    GaussianLikelihood,
    Likelihood,
    build_likelihood,
    to_data,
    to_model,
)
from vqkit.models.maskgit import MaskGIT, mask_schedule, maskgit
from vqkit.models.mel_decoder import MelDecoder
from vqkit.models.pixelcnn import GatedPixelCNN, gated_pixelcnn
from vqkit.models.registry import BUILDERS, build_model, register
from vqkit.models.video_prior import VideoPrior, video_prior
from vqkit.models.vocoder import (
    GriffinLimVocoder,
    MelUpsampler,
    WaveNetVocoder,
    griffinlim,
    wavenet_vocoder,
)
from vqkit.models.vqvae import VQVAE, VQVAEOutput, vqvae_image, vqvae_nd, vqvae_video
from vqkit.models.vqvae_audio import AudioVQVAE, AudioVQVAEOutput, vqvae_audio
from vqkit.models.wavenet import WaveNet, wavenet_prior
from vqkit.models.wavenet_decoder import CodeUpsampler, WaveNetDecoder, wavenet_decoder

__all__ = [
    "BUILDERS",
    "AudioVQVAE",
    "AudioVQVAEOutput",
    "VQVAE",
    "Categorical256",
    "DiscretizedLogistic",
    "GatedPixelCNN",
    "GaussianLikelihood",
    "GriffinLimVocoder",
    "MaskGIT",
    "MelDecoder",
    "MelUpsampler",
    "WaveNetVocoder",
    "Likelihood",
    "VQVAEOutput",
    "VideoPrior",
    "WaveNet",
    "WaveNetDecoder",
    "CodeUpsampler",
    "build_likelihood",
    "build_model",
    "gated_pixelcnn",
    "mask_schedule",
    "maskgit",
    "griffinlim",
    "register",
    "to_data",
    "to_model",
    "vqvae_audio",
    "vqvae_image",
    "vqvae_nd",
    "vqvae_video",
    "video_prior",
    "wavenet_decoder",
    "wavenet_prior",
    "wavenet_vocoder",
]
