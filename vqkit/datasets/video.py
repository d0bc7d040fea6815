"""Video files: read and write clips with PyAV (FFmpeg), and a folder of videos as a data set.

A clip is a float32 tensor ``(3, T, H, W)`` in ``[0, 1]``, channels first as the video VQ-VAE
takes it. Any container and codec FFmpeg reads works (mp4, webm, avi, mov, mkv, animated gif).

Bad files: a file FFmpeg cannot open, one without a video stream, and one with no frames all
raise :class:`VideoError` naming the file; :class:`VideoFolder` raises it too unless
``on_error="skip"``, which leaves such files out with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vqkit.datasets.images import resize_center_crop
from vqkit.errors import InputError, check_int

log = logging.getLogger("vqkit.datasets")

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".gif", ".mov", ".mkv", ".m4v")


class VideoError(InputError):
    """A video file that cannot be read, or holds no frames; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns without decoding.

    Attributes:
        path: the file.
        pts: presentation timestamps of the frames, sorted, in ``time_base`` units.
        time_base: seconds per ``pts`` unit.
    """

    path: Path
    pts: tuple[int, ...]
    time_base: float

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    @property
    def times(self) -> np.ndarray:
        """``(num_frames,)`` seconds from the first frame."""
        return (np.asarray(self.pts, dtype=np.float64) - self.pts[0]) * self.time_base

    @property
    def fps(self) -> float | None:
        """Mean frame rate, or None for a single frame."""
        span = self.times[-1] if self.num_frames > 1 else 0.0
        return (self.num_frames - 1) / span if span > 0 else None


def probe_video(path: str | Path) -> VideoInfo:
    """Timestamps of every frame of a video's first video stream, read from its packets.

    Raises:
        VideoError: the file cannot be opened, has no video stream or no frames.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream (audio-only or empty file)")
            stream = container.streams.video[0]
            pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
            time_base = float(stream.time_base) if stream.time_base else 0.0
    except av.error.FFmpegError as e:
        raise VideoError(
            f"{path}: cannot read the video ({e}); is it a complete video file?"
        ) from e
    if not pts:
        raise VideoError(f"{path}: the video stream has no frames")
    return VideoInfo(path, tuple(pts), time_base)


def select_frames(info: VideoInfo, frame_rate: float | None) -> list[int]:
    """Frame indices that resample a video to ``frame_rate`` frames per second.

    Output frame ``k`` shows time ``k / frame_rate``: the last frame that started by then, so a
    lower rate drops frames and a higher one repeats them. None keeps every frame.
    """
    if frame_rate is None or info.num_frames == 1:
        return list(range(info.num_frames))
    if not frame_rate > 0:
        raise InputError(f"frame_rate must be positive or None, got {frame_rate!r}")
    times = info.times
    count = int(math.floor(times[-1] * frame_rate + 1e-6)) + 1
    targets = np.arange(count) / frame_rate
    return (np.searchsorted(times, targets + 1e-9, side="right") - 1).tolist()


def _decode(info: VideoInfo, indices: Sequence[int]) -> np.ndarray:
    """RGB frames ``(len(indices), H, W, 3)`` uint8 for frame ``indices`` (may repeat)."""
    wanted = {info.pts[i] for i in indices}
    first, last = min(wanted), max(wanted)
    frames: dict[int, np.ndarray] = {}
    for seek in (first > info.pts[0], False):  # if seeking lands past a frame, start over
        try:
            with av.open(str(info.path)) as container:
                stream = container.streams.video[0]
                if seek:
                    container.seek(first, stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.pts in wanted:
                        frames[frame.pts] = frame.to_ndarray(format="rgb24")
                    if frame.pts is not None and frame.pts >= last:
                        break
        except av.error.FFmpegError as e:
            raise VideoError(f"{info.path}: decoding failed ({e})") from e
        if len(frames) == len(wanted):
            return np.stack([frames[info.pts[i]] for i in indices])
    missing = sorted(wanted - frames.keys())
    raise VideoError(
        f"{info.path}: could not decode {len(missing)} frame(s) (first at "
        f"{(missing[0] - info.pts[0]) * info.time_base:.3f} s); the file may be damaged"
    )


def _to_clip(frames: np.ndarray, size: int | None) -> Tensor:
    """uint8 ``(T, H, W, 3)`` -> float ``(3, T, size, size)`` (shorter side resized, centre crop)."""
    t, h, w, _ = frames.shape
    clip = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(255)  # (3, T, H, W)
    if size is None:
        return clip
    # resize_center_crop treats the leading axis as channels, so all frames go in one call.
    return resize_center_crop(clip.reshape(3 * t, h, w), size).reshape(3, t, size, size)


def read_video(
    path: str | Path,
    *,
    size: int | None = None,
    frame_rate: float | None = None,
    start: int = 0,
    num_frames: int | None = None,
) -> Tensor:
    """Read a video file as a clip.

    Args:
        path: any file FFmpeg reads (mp4, webm, avi, gif, ...).
        size: resize the shorter side to ``size`` and centre-crop a square; None keeps frames
            as they are.
        frame_rate: resample to this many frames per second; None keeps every frame.
        start: first (resampled) frame to return.
        num_frames: frames to return; None reads to the end.

    Returns:
        ``(3, T, H, W)`` float32 in ``[0, 1]``.

    Raises:
        VideoError: unreadable file, no frames, or fewer than ``start + num_frames`` frames.
    """
    info = probe_video(path)
    indices = select_frames(info, frame_rate)
    end = len(indices) if num_frames is None else start + num_frames
    if start < 0 or end > len(indices) or end <= start:
        raise VideoError(
            f"{info.path}: asked for frames {start}..{end - 1} but it has {len(indices)} frames"
            + (f" at {frame_rate} fps" if frame_rate else "")
        )
    return _to_clip(_decode(info, indices[start:end]), size)


def write_video(path: str | Path, clip: Tensor, *, fps: float = 8.0) -> Path:
    """Write a clip ``(3, T, H, W)`` in ``[0, 1]`` as a GIF (Pillow) or mp4/webm (PyAV).

    GIFs loop forever, so they play in a browser or a report as soon as they are shown.
    """
    path = Path(path)
    if not isinstance(clip, Tensor) or clip.dim() != 4 or clip.shape[0] != 3:
        raise InputError(f"clip must be (3, T, H, W), got {tuple(getattr(clip, 'shape', ()))}")
    frames = (clip.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    frames = frames.permute(1, 2, 3, 0).cpu().numpy()  # (T, H, W, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        duration = max(int(round(1000 / fps)), 20)
        images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)
        return path
    codecs = {".mp4": ("libx264", "yuv420p"), ".webm": ("libvpx-vp9", "yuv420p")}
    if suffix not in codecs:
        raise InputError(f"{path}: write .gif, .mp4 or .webm, not {suffix!r}")
    codec, pix_fmt = codecs[suffix]
    _, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # yuv420: even
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], pix_fmt
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return path


class VideoFolder(Dataset):
    """Fixed-length clips from every video file under a folder.

    Each video is resampled to ``frame_rate`` (if given) and cut into clips of ``clip_length``
    frames whose starts are ``frames_between_clips`` apart, as torchvision's ``VideoClips`` does;
    a video shorter than one clip gives none. Frames are resized (shorter side) and centre-cropped
    to ``size``. Files are probed once (packet timestamps, no decoding); a clip is decoded when
    it is read, from the nearest keyframe before it.

    Labels come from the first folder level: ``root/<class>/**/video`` has the index of
    ``<class>`` in :attr:`classes`; files directly in ``root`` have class ``"."``.

    Args:
        root: folder searched recursively for ``extensions``.
        split: None for every video; "train" or "test" read ``root/<split>`` when it exists, else
            a fixed tenth of the videos (by a hash of their path; at least one) is "test".
        clip_length: frames per clip T.
        frames_between_clips: distance between clip starts; default ``clip_length``.
        frame_rate: frames per second to resample to; None keeps each file's own frames.
        size: output height and width.
        extensions: file suffixes to read (lower case).
        on_error: "raise" a :class:`VideoError` for an unreadable or empty file, or "skip" it
            with a warning.
        transform: optional callable on each clip tensor.

    Returns of ``__getitem__``:
        ``(clip, label)``: float32 ``(3, T, size, size)`` in ``[0, 1]``, int label.

    Examples:
        >>> ds = VideoFolder("videos/", clip_length=16, size=64, frame_rate=8)  # doctest: +SKIP
        >>> clip, label = ds[0]  # clip: (3, 16, 64, 64)  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path,
        *,
        split: str | None = None,
        clip_length: int = 16,
        frames_between_clips: int | None = None,
        frame_rate: float | None = None,
        size: int = 64,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        on_error: str = "raise",
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        step = clip_length if frames_between_clips is None else frames_between_clips
        for name, value in (
            ("clip_length", clip_length),
            ("size", size),
            ("frames_between_clips", step),
        ):
            check_int(name, value, 1, InputError)
        if on_error not in ("raise", "skip"):
            raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if split not in (None, "train", "test"):
            raise InputError(f"split must be None, 'train' or 'test', got {split!r}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"video folder {root} not found")
        base, files = self._files(root, split, tuple(e.lower() for e in extensions))
        if not files:
            raise FileNotFoundError(
                f"no video files ({', '.join(extensions)}) under {base}"
                + (f" for split {split!r}" if split else "")
            )
        self.root, self.split, self.size = base, split, size
        self.clip_length, self.frames_between_clips, self.frame_rate = clip_length, step, frame_rate
        self.transform = transform
        self.videos: list[VideoInfo] = []
        self.frames: list[list[int]] = []  # per video, the (resampled) frame indices
        for path in files:
            try:
                info = probe_video(path)
            except VideoError as e:
                if on_error == "raise":
                    raise VideoError(
                        f"{e}; to leave such files out: --set data.skip_bad_videos=true"
                    ) from e
                log.warning("skipping %s", e)
                continue
            self.videos.append(info)
            self.frames.append(select_frames(info, frame_rate))
        rel = [v.path.relative_to(base).parts for v in self.videos]
        self.classes = sorted({p[0] if len(p) > 1 else "." for p in rel})
        self.labels = [self.classes.index(p[0] if len(p) > 1 else ".") for p in rel]
        self.clips = [
            (v, s)
            for v, idx in enumerate(self.frames)
            for s in range(0, len(idx) - clip_length + 1, step)
        ]
        if not self.clips:
            raise InputError(
                f"no video under {base} has {clip_length} frames"
                + (f" at {frame_rate} fps" if frame_rate else "")
                + "; lower clip_length or raise frame_rate"
            )

    @staticmethod
    def _files(root: Path, split: str | None, extensions: tuple[str, ...]):
        def find(folder: Path) -> list[Path]:
            return sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions)

        if split is not None and (root / split).is_dir():
            return root / split, find(root / split)
        files = find(root)
        if split is None or len(files) < 2:
            return root, files if split != "test" else []
        # A fixed held-out tenth: the files whose path hashes lowest.
        key = lambda p: hashlib.blake2b(str(p.relative_to(root)).encode()).digest()  # noqa: E731
        ranked = sorted(files, key=key)
        test = set(ranked[: max(1, round(len(files) / 10))])
        return root, [p for p in files if (p in test) == (split == "test")]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        video, start = self.clips[index]
        indices = self.frames[video][start : start + self.clip_length]
        clip = _to_clip(_decode(self.videos[video], indices), self.size)
        if self.transform is not None:
            clip = self.transform(clip)
        return clip, self.labels[video]


def add_border(clip: Tensor, colour: Sequence[float], frames: slice = slice(None)) -> Tensor:
    """A copy of ``clip`` ``(3, T, H, W)`` with a 1-pixel ``colour`` border on ``frames``
    (e.g. to mark generated frames)."""
    out = clip.clone()
    rgb = torch.tensor(colour, dtype=out.dtype)[:, None, None, None]  # (3, 1, 1, 1)
    out[:, frames, [0, -1], :] = rgb
    out[:, frames, :, [0, -1]] = rgb
    return out


def video_grid(
    rows: Sequence[Sequence[Tensor]], *, padding: int = 2, pad_value: float = 1.0, scale: int = 1
) -> Tensor:
    """Lay clips ``(3, T, H, W)`` of one size out in rows and columns, one clip of the grid.

    Like torchvision's ``make_grid`` for video: ``padding`` pixels of ``pad_value`` around
    every clip, then nearest-neighbour upscaling by ``scale`` so small frames stay visible.
    """
    pad = lambda x: F.pad(x, (padding, 0, padding, 0), value=pad_value)  # noqa: E731
    grid = torch.cat([torch.cat([pad(c) for c in row], dim=3) for row in rows], dim=2)
    grid = F.pad(grid, (0, padding, 0, padding), value=pad_value)  # (3, T, H', W')
    if scale != 1:
        grid = F.interpolate(grid.transpose(0, 1), scale_factor=scale, mode="nearest")
        grid = grid.transpose(0, 1)
    return grid
