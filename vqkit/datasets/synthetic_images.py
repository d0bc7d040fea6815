"""A built-in synthetic image set: coloured shapes on textured backgrounds, drawn on demand.

Nothing is stored or downloaded. Item ``i`` of a split is drawn from a numpy ``Generator`` whose
seed is a hash of ``(seed, split, i)``, so the same arguments always give the same image, every
DataLoader worker agrees, and train and test come from disjoint seed streams.

Each image holds one large *labelled* shape and 0-2 smaller distractor shapes (which may overlap
it) over a flat, gradient or wavy background, with per-object shading and mild pixel noise. The
label is the shape class of the large object, so a VQ-VAE has edges, colours and textures to
reconstruct and a prior over codes has global structure (one big coherent shape) to learn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqkit.errors import InputError, check_int

CLASSES: tuple[str, ...] = (
    "disc",  # filled circle
    "square",  # filled axis-aligned square
    "triangle",  # filled upward triangle
    "ring",  # annulus, hole shows the background
    "plus",  # upright cross
    "stripes",  # square patch of stripes (0, 45, 90 or 135 degrees)
    "diamond",  # square rotated by 45 degrees
    "frame",  # hollow square
    "checker",  # square patch of a 4 x 4 checkerboard
    "saltire",  # diagonal cross (an "X")
)

_SPLITS = ("train", "test")
_DEFAULT_SIZE = {"train": 20_000, "test": 2_000}
_SQRT2 = float(np.sqrt(2.0))


def _plus_sdf(u: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    """Signed distance (approx.) of an upright cross with arm half-length ``s``."""
    arm = 0.3 * s
    horizontal = np.maximum(np.abs(u) - s, np.abs(v) - arm)
    vertical = np.maximum(np.abs(u) - arm, np.abs(v) - s)
    return np.minimum(horizontal, vertical)


def _triangle_sdf(dx: np.ndarray, dy: np.ndarray, s: float) -> np.ndarray:
    """Signed distance (exact inside, approx. outside) of an upward triangle of half-size ``s``."""
    # Vertices (0, -s), (s, 0.8 s), (-s, 0.8 s) in image coordinates (y grows downwards).
    # Each side is a half-plane n.p <= c; the triangle is their intersection (max of distances).
    base = dy - 0.8 * s
    nx, ny = 1.8, -1.0  # outward normal of the right side, before normalisation
    norm = float(np.hypot(nx, ny))
    right = (nx * dx + ny * dy - s) / norm
    left = (-nx * dx + ny * dy - s) / norm
    return np.maximum(base, np.maximum(right, left))


def _shape_coverage(label: int, dx: np.ndarray, dy: np.ndarray, s: float, rng) -> np.ndarray:
    """Fraction of each pixel covered by shape ``label`` centred at ``dx = dy = 0``.

    Returns an array shaped like ``dx`` with values in ``[0, 1]``; ``0.5 - sdf`` clipped to
    ``[0, 1]`` gives about one pixel of anti-aliasing on every edge.
    """
    box = np.maximum(np.abs(dx), np.abs(dy)) - s
    if label == 0:
        sdf = np.sqrt(dx * dx + dy * dy) - s
    elif label == 1:
        sdf = box
    elif label == 2:
        sdf = _triangle_sdf(dx, dy, s)
    elif label == 3:
        sdf = np.abs(np.sqrt(dx * dx + dy * dy) - 0.7 * s) - 0.3 * s
    elif label == 4:
        sdf = _plus_sdf(dx, dy, s)
    elif label == 5:
        angle = float(rng.integers(4)) * np.pi / 4
        period = max(2.5, 0.45 * s)
        phase = float(np.cos(angle)) * dx + float(np.sin(angle)) * dy
        # Soft square wave: steep enough to look striped, smooth enough not to alias.
        stripes = np.clip(0.5 + 2.0 * np.sin(2 * np.pi * phase / period), 0.0, 1.0)
        return np.clip(0.5 - box, 0.0, 1.0) * stripes
    elif label == 6:
        sdf = (np.abs(dx) + np.abs(dy) - s) / _SQRT2
    elif label == 7:
        sdf = np.abs(box + 0.25 * s) - 0.25 * s
    elif label == 8:
        cell = s / 2.0
        checker = np.sin(np.pi * dx / cell) * np.sin(np.pi * dy / cell)
        return np.clip(0.5 - box, 0.0, 1.0) * np.clip(0.5 + 2.0 * checker, 0.0, 1.0)
    else:
        # Rotate by 45 degrees so the plus becomes an X.
        sdf = _plus_sdf((dx + dy) / _SQRT2, (dx - dy) / _SQRT2, s)
    return np.clip(0.5 - sdf, 0.0, 1.0)


class SyntheticShapes(Dataset):
    """Coloured shapes on textured backgrounds, generated deterministically on the fly.

    Classes (``SyntheticShapes.classes``, label = position): disc, square, triangle, ring, plus,
    stripes, diamond, frame, checker, saltire (diagonal cross). The label names the shape of the
    largest object in the image; 0-2 smaller distractors of any class are drawn beneath it, or
    (one time in three each) over it, so objects occlude each other.

    Args:
        root: Accepted for symmetry with torchvision data sets and ignored: nothing is stored.
        split: ``"train"`` or ``"test"``; the two splits use disjoint seed streams.
        size: Number of items; default 20000 for train and 2000 for test.
        image_size: Height and width in pixels (at least 8).
        seed: Non-negative integer; different seeds give different data sets.
        transform: Optional callable applied to the image tensor.
        download: Accepted for symmetry with torchvision data sets and ignored.

    Returns of ``__getitem__``:
        ``(image, label)`` with image a float32 tensor ``(3, H, W)`` in ``[0, 1]`` (before
        ``transform``) and label an ``int`` in ``[0, 10)``.

    Examples:
        >>> ds = SyntheticShapes(split="train", size=100, image_size=32)
        >>> image, label = ds[0]
        >>> image.shape, image.dtype, 0 <= label < 10
        (torch.Size([3, 32, 32]), torch.float32, True)
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(
        self,
        root: str | None = None,
        *,
        split: str = "train",
        size: int | None = None,
        image_size: int = 32,
        seed: int = 0,
        transform: Callable[[Tensor], Tensor] | None = None,
        download: bool = False,
    ) -> None:
        if split not in _SPLITS:
            raise InputError(f"split must be one of {_SPLITS}, got {split!r}")
        if size is None:
            size = _DEFAULT_SIZE[split]
        for name, value, low in (
            ("size", size, 1),
            ("image_size", image_size, 8),
            ("seed", seed, 0),
        ):
            check_int(name, value, low, InputError)
        self.root = root
        self.split = split
        self.size = size
        self.image_size = image_size
        self.seed = seed
        self.transform = transform
        # Pixel centres; shared by every item so a render is a handful of array expressions.
        coords = np.arange(image_size, dtype=np.float32) + 0.5
        self._ys, self._xs = np.meshgrid(coords, coords, indexing="ij")  # (H, W) each

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        # A cryptographic hash, not SeedSequence([seed, split, index]) directly: SeedSequence
        # pads short entropy with zeros, so e.g. [a] and [a, 0] would collide.
        key = f"vqkit.SyntheticShapes/{self.seed}/{self.split}/{index}".encode()
        digest = hashlib.blake2b(key, digest_size=16).digest()
        return np.random.default_rng(int.from_bytes(digest, "little"))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        index = index % self.size
        image, label = self.render(self._rng(index))
        tensor = torch.from_numpy(image)
        if self.transform is not None:
            tensor = self.transform(tensor)
        return tensor, label

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Draw one image from ``rng``.

        Returns:
            ``(image, label)``: float32 array ``(3, H, W)`` in ``[0, 1]`` and the class index.
        """
        n = self.image_size
        bg0, bg1 = self._background_colours(rng)
        image = self._background(rng, bg0, bg1)  # (3, H, W)

        label = int(rng.integers(len(CLASSES)))
        main_size = float(rng.uniform(0.25, 0.4)) * n
        main_centre = rng.uniform(0.3, 0.7, size=2) * n
        distractors = [
            (
                int(rng.integers(len(CLASSES))),
                float(rng.uniform(0.1, 0.2)) * n,
                rng.uniform(0.0, 1.0, size=2) * n,
                bool(rng.random() < 1 / 3),  # drawn over the labelled object
            )
            for _ in range(int(rng.integers(3)))
        ]
        below = [d[:3] for d in distractors if not d[3]]
        above = [d[:3] for d in distractors if d[3]]
        for shape, size, centre in [*below, (label, main_size, main_centre), *above]:
            self._draw(image, rng, shape, size, centre, bg0, bg1)

        sigma = float(rng.uniform(0.0, 0.04))
        image += sigma * rng.standard_normal(image.shape, dtype=np.float32)
        np.clip(image, 0.0, 1.0, out=image)
        return image, label

    @staticmethod
    def _background_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        bg0 = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        # A nearby second colour keeps backgrounds calmer than the objects drawn on them.
        bg1 = np.clip(bg0 + rng.uniform(-0.35, 0.35, size=3), 0.0, 1.0).astype(np.float32)
        return bg0, bg1

    def _background(self, rng: np.random.Generator, bg0: np.ndarray, bg1: np.ndarray):
        n = self.image_size
        xs, ys = self._xs / n, self._ys / n  # (H, W) in (0, 1)
        kind = int(rng.integers(4))
        if kind == 0:  # flat
            t = np.zeros_like(xs)
        elif kind == 1:  # linear gradient in a random direction
            angle = float(rng.uniform(0, 2 * np.pi))
            proj = float(np.cos(angle)) * (xs - 0.5) + float(np.sin(angle)) * (ys - 0.5)
            t = np.clip(proj / _SQRT2 + 0.5, 0.0, 1.0)
        elif kind == 2:  # radial gradient from a random point
            cx, cy = rng.uniform(0.0, 1.0, size=2)
            t = np.clip(np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) / 1.2, 0.0, 1.0)
        else:  # low-frequency waves (a soft texture)
            fx, fy = rng.uniform(1.0, 4.0, size=2) * 2 * np.pi
            px, py = rng.uniform(0, 2 * np.pi, size=2)
            t = 0.5 + 0.25 * (np.sin(fx * xs + px) + np.sin(fy * ys + py))
        t = t.astype(np.float32)[None]  # (1, H, W)
        return bg0[:, None, None] * (1.0 - t) + bg1[:, None, None] * t  # (3, H, W)

    def _draw(
        self,
        image: np.ndarray,
        rng: np.random.Generator,
        shape: int,
        size: float,
        centre: np.ndarray,
        bg0: np.ndarray,
        bg1: np.ndarray,
    ) -> None:
        """Paint one shaded shape over ``image`` (3, H, W) in place."""
        dx, dy = self._xs - centre[0], self._ys - centre[1]  # (H, W)
        coverage = _shape_coverage(shape, dx, dy, size, rng)[None]  # (1, H, W)
        # Pick the candidate colour farthest from both background colours among a few draws,
        # so objects stand out without all being saturated primaries.
        candidates = rng.uniform(0.0, 1.0, size=(6, 3)).astype(np.float32)
        contrast = np.minimum(
            np.linalg.norm(candidates - bg0, axis=1), np.linalg.norm(candidates - bg1, axis=1)
        )
        colour = candidates[int(np.argmax(contrast))]
        # Directional shading: brightness varies by up to +-15 % across the object.
        angle = float(rng.uniform(0, 2 * np.pi))
        gain = float(rng.uniform(0.0, 0.15))
        shade = (
            1.0 + gain * (float(np.cos(angle)) * dx + float(np.sin(angle)) * dy) / size
        )  # (H, W)
        fill = np.clip(colour[:, None, None] * shade[None], 0.0, 1.0)  # (3, H, W)
        image += coverage * (fill - image)
