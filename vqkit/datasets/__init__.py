"""Data sets: built-in synthetic sets and thin wrappers over torchvision and image folders.

Every set is map-style and returns a plain tuple, e.g. images ``(image (3, H, W) in [0, 1], label)``.
"""

from vqkit.datasets.images import (
    CIFAR10,
    ImageFolder,
    build_image_dataset,
    load_rgb,
    resize_center_crop,
)
from vqkit.datasets.synthetic_images import SyntheticShapes

__all__ = [
    "CIFAR10",
    "ImageFolder",
    "SyntheticShapes",
    "build_image_dataset",
    "load_rgb",
    "resize_center_crop",
]
