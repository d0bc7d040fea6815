"""Data sets: built-in synthetic sets and thin wrappers over torchvision and image folders.

Every set is map-style and returns a plain tuple, e.g. images ``(image (3, H, W) in [0, 1], label)``.
"""

from vqkit.datasets.audio import VCTK, FrameLabelCrops, SequenceCrops, SpeakerAudioFolder
from vqkit.datasets.images import (
    CIFAR10,
    ImageError,
    ImageFolder,
    WithMirrors,
    build_image_dataset,
    load_rgb,
    resize_center_crop,
)
from vqkit.datasets.speech_corpus import SpeechCorpus, build_speech_corpus
from vqkit.datasets.synthetic_images import SyntheticShapes
from vqkit.datasets.synthetic_video import SyntheticVideo
from vqkit.datasets.utterances import Utterances, load_utterances
from vqkit.datasets.video import VideoError, VideoFolder, read_video, write_video

__all__ = [
    "VCTK",
    "FrameLabelCrops",
    "SequenceCrops",
    "SpeakerAudioFolder",
    "SpeechCorpus",
    "Utterances",
    "load_utterances",
    "build_speech_corpus",
    "CIFAR10",
    "ImageError",
    "ImageFolder",
    "SyntheticShapes",
    "SyntheticVideo",
    "VideoError",
    "VideoFolder",
    "WithMirrors",
    "build_image_dataset",
    "load_rgb",
    "read_video",
    "resize_center_crop",
    "write_video",
]
