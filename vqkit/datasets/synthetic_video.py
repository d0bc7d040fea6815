"""A built-in synthetic video set: moving sprites on textured backgrounds, one steered by actions.

Nothing is stored or downloaded. Clip ``i`` of a split is drawn from a numpy ``Generator`` seeded
by a hash of ``(seed, split, i)``, so the same arguments always give the same clip and train and
test come from disjoint seed streams.

Each clip is a static textured background (gradient, waves or a soft checkerboard in muted
colours) with several *distractor* sprites (discs, squares, triangles, rings, crosses, diamonds)
that move at constant velocity, bounce off the borders and pass over one another (a fixed
drawing order per clip, so they occlude each other), and one *controlled* sprite: a red square
that moves by ``speed`` pixels per frame in the direction of that frame's action and stops at the
borders. As in a 2D game, sprites sit on pixel centres and move by whole pixels, and colours and
textures come from small palettes; the world is discrete but for where things are. It is drawn last, so it is always visible, and no other colour in the clip is that red,
so :func:`controlled_mask` finds it in any frame, generated ones included.

The action of frame ``t`` is the move that took the controlled sprite from frame ``t - 1`` to
frame ``t`` (``actions[0]`` is always "none"). Actions are sticky (kept with probability
``_STICKY``), so paths are long straight runs with turns, like a player's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqkit.datasets.synthetic_images import _shape_coverage
from vqkit.errors import InputError, check_int

ACTIONS: tuple[str, ...] = ("none", "up", "down", "left", "right")
# (dy, dx) per action; y grows downwards as in image coordinates.
MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.float32)
CONTROLLED_COLOUR = (0.95, 0.12, 0.1)
_SPRITE_SHAPES = (0, 1, 2, 3, 4, 6)  # synthetic_images shape ids: no random-angle stripes
# Muted colour pairs for the backgrounds and clear non-red colours for the distractors: a small
# palette, so a codebook can give every texture patch its own codes.
_BACKGROUNDS = (
    ((0.55, 0.55, 0.6), (0.35, 0.38, 0.42)),
    ((0.62, 0.6, 0.5), (0.45, 0.47, 0.4)),
    ((0.45, 0.55, 0.5), (0.3, 0.36, 0.35)),
    ((0.6, 0.55, 0.62), (0.42, 0.4, 0.5)),
    ((0.7, 0.7, 0.7), (0.5, 0.5, 0.5)),
    ((0.5, 0.52, 0.62), (0.34, 0.34, 0.45)),
)
_SPRITE_COLOURS = (
    (0.95, 0.85, 0.2),  # yellow
    (0.3, 0.85, 0.3),  # green
    (0.2, 0.8, 0.9),  # cyan
    (0.25, 0.35, 0.95),  # blue
    (0.65, 0.3, 0.9),  # purple
    (0.95, 0.95, 0.95),  # white
)
_SPLITS = ("train", "test")
_DEFAULT_SIZE = {"train": 4000, "test": 256}
_STICKY = 0.75


def action_ids(names: str | list[str | int]) -> list[int]:
    """Action names or ids (``"up,up,left"``, ``["up", 3]``) -> ids in ``[0, len(ACTIONS))``."""
    items = names.split(",") if isinstance(names, str) else list(names)
    ids = []
    for item in items:
        text = str(item).strip().lower()
        if text.isdigit() and int(text) < len(ACTIONS):
            ids.append(int(text))
        elif text in ACTIONS:
            ids.append(ACTIONS.index(text))
        else:
            raise InputError(
                f"unknown action {item!r}; actions are {list(ACTIONS)} or their ids 0-"
                f"{len(ACTIONS) - 1}"
            )
    return ids


def action_path(
    start: np.ndarray | Tensor, actions: np.ndarray | Tensor, *, frame_size: int, speed: float
) -> np.ndarray:
    """Positions of the controlled sprite under ``actions``: the path the actions command.

    Args:
        start: ``(..., 2)`` ``(y, x)`` position at frame 0 (pixel units, pixel centres at +0.5).
        actions: ``(..., T)`` action ids; ``actions[..., 0]`` is ignored (it leads to frame 0).
        frame_size: frame height and width in pixels.
        speed: pixels moved per frame.

    Returns:
        ``(..., T, 2)`` float32 positions; a move that would cross a border stops at it.
    """
    start = np.asarray(start, dtype=np.float32)
    actions = np.asarray(actions, dtype=np.int64)
    low, high = _controlled_bounds(frame_size)
    path = np.empty((*actions.shape, 2), dtype=np.float32)
    pos = start.copy()
    path[..., 0, :] = pos
    for t in range(1, actions.shape[-1]):
        pos = np.clip(pos + speed * MOVES[actions[..., t]], low, high)
        path[..., t, :] = pos
    return path


def controlled_mask(frames: Tensor) -> Tensor:
    """Pixels of the controlled sprite's red, in real or generated frames.

    Args:
        frames: ``(..., 3, T, H, W)`` RGB in ``[0, 1]`` (channel axis 4th from the end).

    Returns:
        ``(..., T, H, W)`` bool.
    """
    r, g, b = frames.unbind(dim=-4)
    return (r > 0.5) & (r - torch.maximum(g, b) > 0.3)


def _controlled_half(frame_size: int) -> float:
    return 0.1 * frame_size


def _controlled_bounds(frame_size: int) -> tuple[float, float]:
    """Lowest and highest centre, on pixel centres, that keep the controlled sprite inside."""
    low = float(np.ceil(_controlled_half(frame_size))) + 0.5
    return low, frame_size - low


class SyntheticVideo(Dataset):
    """Moving sprites with bounces and occlusion, one controlled by per-frame actions.

    Args:
        root: Accepted for symmetry with torchvision data sets and ignored: nothing is stored.
        split: ``"train"`` or ``"test"``; the two splits use disjoint seed streams.
        size: Number of clips; default 4000 for train and 256 for test.
        num_frames: Frames per clip T (>= 2).
        frame_size: Frame height and width in pixels (>= 16).
        num_sprites: Distractor sprites per clip (the controlled one comes on top).
        seed: Non-negative integer; different seeds give different data sets.
        transform: Optional callable applied to the clip tensor.
        download: Accepted for symmetry with torchvision data sets and ignored.

    Attributes:
        actions: the action names, ``ACTIONS`` (id = position).
        speed: pixels the controlled sprite moves per frame (``frame_size / 16``).

    Returns of ``__getitem__``:
        ``(clip, actions)``: clip a float32 tensor ``(3, T, H, W)`` in ``[0, 1]`` (before
        ``transform``), actions an int64 tensor ``(T,)`` of ids into ``ACTIONS``.

    Examples:
        >>> ds = SyntheticVideo(split="test", size=8, num_frames=16, frame_size=32)
        >>> clip, actions = ds[0]
        >>> clip.shape, actions.shape
        (torch.Size([3, 16, 32, 32]), torch.Size([16]))
        >>> ds.controlled_path(0).shape  # (y, x) of the red square per frame
        torch.Size([16, 2])
    """

    actions: tuple[str, ...] = ACTIONS

    def __init__(
        self,
        root: str | None = None,
        *,
        split: str = "train",
        size: int | None = None,
        num_frames: int = 16,
        frame_size: int = 32,
        num_sprites: int = 3,
        seed: int = 0,
        transform: Callable[[Tensor], Tensor] | None = None,
        download: bool = False,
    ) -> None:
        if split not in _SPLITS:
            raise InputError(f"split must be one of {_SPLITS}, got {split!r}")
        size = _DEFAULT_SIZE[split] if size is None else size
        for name, value, low in (
            ("size", size, 1),
            ("num_frames", num_frames, 2),
            ("frame_size", frame_size, 16),
            ("num_sprites", num_sprites, 0),
            ("seed", seed, 0),
        ):
            check_int(name, value, low, InputError)
        self.root = root
        self.split = split
        self.size = size
        self.num_frames = num_frames
        self.frame_size = frame_size
        self.num_sprites = num_sprites
        self.seed = seed
        self.transform = transform
        self.speed = frame_size / 16
        coords = np.arange(frame_size, dtype=np.float32) + 0.5
        self._ys, self._xs = np.meshgrid(coords, coords, indexing="ij")  # (H, W) each

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        # Hashed like SyntheticShapes: SeedSequence pads short entropy with zeros, so raw
        # [seed, split, index] lists could collide.
        key = f"vqkit.SyntheticVideo/{self.seed}/{self.split}/{index}".encode()
        digest = hashlib.blake2b(key, digest_size=16).digest()
        return np.random.default_rng(int.from_bytes(digest, "little"))

    def _index(self, index: int) -> int:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} clips")
        return index % self.size

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        clip, actions, _ = self.render(self._rng(self._index(index)))
        tensor = torch.from_numpy(clip)
        if self.transform is not None:
            tensor = self.transform(tensor)
        return tensor, torch.from_numpy(actions)

    def controlled_path(self, index: int) -> Tensor:
        """``(T, 2)`` float32 ``(y, x)`` centre of the controlled sprite in each frame of a clip."""
        return torch.from_numpy(self.render(self._rng(self._index(index)), draw=False)[2])

    def sample_actions(self, rng: np.random.Generator, num_frames: int | None = None) -> np.ndarray:
        """Sticky random actions ``(T,)`` as the clips use (``actions[0]`` is "none")."""
        n = self.num_frames if num_frames is None else num_frames
        actions = np.zeros(n, dtype=np.int64)
        for t in range(1, n):
            keep = t > 1 and rng.random() < _STICKY
            actions[t] = actions[t - 1] if keep else int(rng.integers(len(ACTIONS)))
        return actions

    # ---------------------------------------------------------------- rendering

    def render(
        self, rng: np.random.Generator, *, draw: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """Draw one clip from ``rng``.

        Returns:
            ``(clip, actions, path)``: float32 ``(3, T, H, W)`` in ``[0, 1]`` (None when
            ``draw=False``), int64 actions ``(T,)``, float32 controlled positions ``(T, 2)``.
        """
        n, frames = self.frame_size, self.num_frames
        background = self._background(rng)  # (3, H, W)
        sprites = [self._distractor(rng) for _ in range(self.num_sprites)]
        low, high = _controlled_bounds(n)
        start = (low + rng.integers(0, int(high - low) + 1, size=2)).astype(np.float32)
        actions = self.sample_actions(rng)
        path = action_path(start, actions, frame_size=n, speed=self.speed)  # (T, 2)
        if not draw:
            return None, actions, path
        clip = np.repeat(background[:, None], frames, axis=1)  # (3, T, H, W)
        for shape, half, colour, centres in sprites:
            self._paint(clip, shape, half, colour, centres, rng)
        self._paint(clip, 1, _controlled_half(n), np.array(CONTROLLED_COLOUR), path, rng)
        return np.clip(clip, 0.0, 1.0, out=clip), actions, path

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """A muted two-colour texture ``(3, H, W)``: never saturated enough to pass for red."""
        c0, c1 = np.array(_BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))], dtype=np.float32)
        if rng.random() < 0.5:
            c0, c1 = c1, c0
        xs, ys = self._xs / self.frame_size, self._ys / self.frame_size  # (H, W) in (0, 1)
        kind = int(rng.integers(4))
        if kind == 0:  # a linear gradient along one of four directions
            angle = float(rng.integers(4)) * np.pi / 4
            t = 0.5 + 0.7 * (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5))
        elif kind == 1:  # waves, two cycles across the frame
            t = 0.5 + 0.25 * (np.sin(4 * np.pi * xs) + np.sin(4 * np.pi * ys))
        else:  # a soft checkerboard of 4 or 8 cells a side
            cells = (2.0 if kind == 2 else 4.0) * np.pi
            t = 0.5 + 0.5 * np.tanh(3.0 * np.sin(cells * xs) * np.sin(cells * ys))
        t = np.clip(t, 0.0, 1.0).astype(np.float32)[None]  # (1, H, W)
        return c0[:, None, None] * (1.0 - t) + c1[:, None, None] * t

    def _distractor(self, rng: np.random.Generator):
        """``(shape, half size, colour (3,), centres (T, 2))`` of a bouncing sprite."""
        n = self.frame_size
        shape = int(rng.choice(_SPRITE_SHAPES))
        half = float(rng.choice((0.08, 0.11, 0.14))) * n
        colour = np.array(_SPRITE_COLOURS[int(rng.integers(len(_SPRITE_COLOURS)))], np.float32)
        # Centres on pixel centres and whole-pixel velocities: reflections keep them there.
        low = np.floor(half) + 0.5
        high = n - low
        pos = low + rng.integers(0, int(high - low) + 1, size=2).astype(np.float64)
        top = max(1, n // 16)  # pixels per frame
        vel = np.zeros(2)
        while not vel.any():
            vel = rng.integers(-top, top + 1, size=2).astype(np.float64)
        centres = np.empty((self.num_frames, 2), dtype=np.float32)
        for t in range(self.num_frames):
            centres[t] = pos
            pos = pos + vel
            for axis in range(2):  # reflect off the borders
                if pos[axis] < low:
                    pos[axis], vel[axis] = 2 * low - pos[axis], -vel[axis]
                elif pos[axis] > high:
                    pos[axis], vel[axis] = 2 * high - pos[axis], -vel[axis]
        return shape, half, colour, centres

    def _paint(
        self,
        clip: np.ndarray,
        shape: int,
        half: float,
        colour: np.ndarray,
        centres: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        """Composite one sprite over every frame of ``clip`` (3, T, H, W), in place."""
        dy = self._ys[None] - centres[:, 0, None, None]  # (T, H, W)
        dx = self._xs[None] - centres[:, 1, None, None]
        coverage = _shape_coverage(shape, dx, dy, half, rng).astype(np.float32)[None]
        clip += coverage * (colour.astype(np.float32)[:, None, None, None] - clip)
