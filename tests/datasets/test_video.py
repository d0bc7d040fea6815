"""Video data: the synthetic sprites set (determinism, actions) and video files (PyAV, PIL)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vqkit.datasets import SyntheticVideo, VideoError, VideoFolder, read_video, write_video
from vqkit.datasets.synthetic_video import (
    ACTIONS,
    MOVES,
    action_ids,
    action_path,
    controlled_mask,
)
from vqkit.datasets.video import VideoInfo, add_border, probe_video, select_frames, video_grid
from vqkit.metrics.video import track_centroids


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha1(x.numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------- SyntheticVideo


def test_clips_are_deterministic_and_splits_differ():
    a = SyntheticVideo(split="train", size=4, num_frames=8, frame_size=16)
    b = SyntheticVideo(split="train", size=4, num_frames=8, frame_size=16)
    for i in range(4):
        (ca, aa), (cb, ab) = a[i], b[i]
        assert torch.equal(ca, cb) and torch.equal(aa, ab)
    test = SyntheticVideo(split="test", size=4, num_frames=8, frame_size=16)
    other_seed = SyntheticVideo(split="train", size=4, num_frames=8, frame_size=16, seed=1)
    digests = {_digest(a[0][0]), _digest(a[1][0]), _digest(test[0][0]), _digest(other_seed[0][0])}
    assert len(digests) == 4
    clip, actions = a[-1]  # negative indices as in a list
    assert torch.equal(clip, a[3][0])
    assert clip.shape == (3, 8, 16, 16) and clip.dtype == torch.float32
    assert 0 <= float(clip.min()) and float(clip.max()) <= 1
    assert actions.shape == (8,) and actions.dtype == torch.int64 and int(actions[0]) == 0
    assert 0 <= int(actions.min()) and int(actions.max()) < len(ACTIONS)
    with pytest.raises(IndexError):
        a[4]


def test_the_controlled_sprite_moves_as_its_actions_command():
    ds = SyntheticVideo(split="train", size=24, num_frames=12, frame_size=32)
    moved = 0
    for i in range(len(ds)):
        clip, actions = ds[i]
        path = ds.controlled_path(i)  # (T, 2)
        # The path is the actions' path from the first position: the actions cause the motion.
        expected = action_path(path[0], actions, frame_size=32, speed=ds.speed)
        np.testing.assert_allclose(path.numpy(), expected, atol=1e-5)
        for t in range(1, 12):
            step = (path[t] - path[t - 1]).numpy()
            if np.abs(step).sum() > 0:  # a move, shortened only where a border stops it
                moved += 1
                scale = float(step @ MOVES[int(actions[t])])
                assert 0 < scale <= ds.speed + 1e-5
                np.testing.assert_allclose(step, scale * MOVES[int(actions[t])], atol=1e-5)
        # The red square is the only red in the frame, drawn on top: its centroid is the path.
        tracked, found = track_centroids(controlled_mask(clip)[None])
        assert found.all()
        np.testing.assert_allclose(tracked[0].numpy(), path.numpy(), atol=0.5)  # a pixel mask
    assert moved > 100  # actions do move the sprite


def test_distractors_bounce_and_occlude():
    ds = SyntheticVideo(split="train", size=40, num_frames=16, frame_size=32, num_sprites=3)
    overlaps = reversals = 0
    for i in range(len(ds)):
        rng = ds._rng(i)
        ds._background(rng)
        sprites = [ds._distractor(rng) for _ in range(ds.num_sprites)]
        for _, half, _, centres in sprites:
            low = np.floor(half) + 0.5  # the pixel centre nearest the border it may reach
            assert (centres >= low).all() and (centres <= 32 - low).all()
            assert (centres % 1 == 0.5).all()
            velocity = np.diff(centres, axis=0)
            reversals += int((np.sign(velocity[1:]) * np.sign(velocity[:-1]) < 0).sum())
        for j in range(len(sprites)):
            for k in range(j + 1, len(sprites)):
                dist = np.abs(sprites[j][3] - sprites[k][3]).max(axis=1)
                overlaps += int((dist < sprites[j][1] + sprites[k][1]).any())
    assert reversals > 10 and overlaps > 5


def test_sample_actions_and_action_ids():
    ds = SyntheticVideo(split="test", size=1, num_frames=10)
    a = ds.sample_actions(np.random.default_rng(0))
    assert a.shape == (10,) and a[0] == 0 and a.max() < len(ACTIONS)
    assert np.array_equal(a, ds.sample_actions(np.random.default_rng(0)))
    assert action_ids("up, Left,4,none") == [1, 3, 4, 0]
    with pytest.raises(ValueError, match="unknown action 'jump'"):
        action_ids("up,jump")
    with pytest.raises(ValueError, match="frame_size"):
        SyntheticVideo(frame_size=8)


def test_action_path_stops_at_the_borders():
    path = action_path([9.5, 5.5], [0, 1, 1, 1, 1, 4], frame_size=32, speed=2.0)
    low = 4.5  # the first pixel centre that keeps the square (half size 3.2) inside
    np.testing.assert_allclose(path[:, 0], [9.5, 7.5, 5.5, low, low, low])
    np.testing.assert_allclose(path[:, 1], [5.5] * 5 + [7.5])
    # Batched: (B, T) actions give (B, T, 2) paths, each as if computed alone.
    batch = action_path(
        [[9.5, 5.5], [20.5, 20.5]],
        [[0, 1, 1, 1, 1, 4], [0, 2, 3, 0, 4, 4]],
        frame_size=32,
        speed=2.0,
    )
    np.testing.assert_allclose(batch[0], path)
    np.testing.assert_allclose(batch[1, :, 0], [20.5, 22.5, 22.5, 22.5, 22.5, 22.5])
    np.testing.assert_allclose(batch[1, :, 1], [20.5, 20.5, 18.5, 18.5, 20.5, 22.5])
    # Sprites sit on pixel centres and move by whole pixels (a discrete, game-like world).
    ds = SyntheticVideo(split="test", size=8, num_frames=10, frame_size=32)
    for i in range(8):
        assert torch.equal(ds.controlled_path(i) % 1, torch.full((10, 2), 0.5))


# ---------------------------------------------------------------- video files


def _brightness_frames(n: int, h: int = 24, w: int = 32) -> list[np.ndarray]:
    """Frame i is a flat grey of value 20 * i (so its index can be read back)."""
    return [np.full((h, w, 3), 20 * i, dtype=np.uint8) for i in range(n)]


def write_mp4(path: Path, n: int, fps: int = 10) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        stream.options = {"crf": "0"}
        for frame in _brightness_frames(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_gif(path: Path, n: int, duration_ms: int = 100) -> Path:
    images = [Image.fromarray(f) for f in _brightness_frames(n)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def write_empty_avi(path: Path) -> Path:
    """A container with a video stream and no frames."""
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
    container.start_encoding()
    container.close()
    return path


def frame_values(clip: torch.Tensor) -> list[int]:
    """The grey level of each frame, as the index it encodes."""
    return [round(float(clip[:, t].mean()) * 255 / 20) for t in range(clip.shape[1])]


@pytest.mark.parametrize("writer", [write_mp4, write_gif])
def test_read_video_frames_in_order_with_resampling_and_resizing(tmp_path, writer):
    path = writer(tmp_path / f"clip.{'mp4' if writer is write_mp4 else 'gif'}", 10)
    info = probe_video(path)
    assert info.num_frames == 10 and info.fps == pytest.approx(10.0)
    clip = read_video(path)
    assert clip.shape == (3, 10, 24, 32) and frame_values(clip) == list(range(10))
    # 5 fps keeps every other frame; 20 fps shows each twice; start/num_frames select.
    assert frame_values(read_video(path, frame_rate=5)) == [0, 2, 4, 6, 8]
    assert frame_values(read_video(path, frame_rate=20, start=3, num_frames=4)) == [1, 2, 2, 3]
    assert frame_values(read_video(path, start=6, num_frames=3)) == [6, 7, 8]  # seeks mid-file
    small = read_video(path, size=16, num_frames=2)
    assert small.shape == (3, 2, 16, 16)
    with pytest.raises(VideoError, match="has 10 frames"):
        read_video(path, start=8, num_frames=4)


def test_select_frames_follows_timestamps():
    info = VideoInfo(Path("x"), (0, 10, 30, 40), 0.01)  # 0,.1,.3,.4 s
    assert select_frames(info, None) == [0, 1, 2, 3]
    assert select_frames(info, 10) == [0, 1, 1, 2, 3]  # 0.2 s shows the frame from 0.1 s


def test_unreadable_and_empty_videos_raise_video_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 20)
    empty = write_empty_avi(tmp_path / "empty.avi")
    for path in (bad, empty):
        with pytest.raises(VideoError, match=path.name):
            read_video(path)
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")


def test_video_folder_clips_labels_and_bad_files(tmp_path, caplog):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    write_mp4(tmp_path / "cats" / "a.mp4", 10)
    write_gif(tmp_path / "dogs" / "b.gif", 7)
    (tmp_path / "dogs" / "notes.txt").write_text("not a video")
    bad = tmp_path / "dogs" / "broken.webm"
    bad.write_bytes(b"\x00" * 100)
    write_empty_avi(tmp_path / "cats" / "empty.avi")
    with pytest.raises(VideoError, match="--set data.skip_bad_videos=true"):
        VideoFolder(tmp_path, clip_length=4, size=16)
    with caplog.at_level(logging.WARNING, logger="vqkit.datasets"):
        ds = VideoFolder(tmp_path, clip_length=4, frames_between_clips=3, size=16, on_error="skip")
    assert "broken.webm" in caplog.text and "empty.avi" in caplog.text
    assert ds.classes == ["cats", "dogs"]
    # a.mp4: starts 0, 3, 6 (10 frames); b.gif: starts 0, 3 (7 frames).
    assert ds.clips == [(0, 0), (0, 3), (0, 6), (1, 0), (1, 3)]
    clip, label = ds[2]
    assert clip.shape == (3, 4, 16, 16) and label == 0 and frame_values(clip) == [6, 7, 8, 9]
    clip, label = ds[4]
    assert label == 1 and frame_values(clip) == [3, 4, 5, 6]
    # At 5 fps a.mp4 has 5 frames (one clip) and b.gif 4 (one clip).
    slow = VideoFolder(tmp_path, clip_length=4, frame_rate=5, size=16, on_error="skip")
    assert len(slow) == 2 and frame_values(slow[0][0]) == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="has 20 frames"):
        VideoFolder(tmp_path, clip_length=20, size=16, on_error="skip")


def test_video_folder_splits(tmp_path):
    for i in range(12):
        write_gif(tmp_path / f"v{i:02d}.gif", 4)
    train = VideoFolder(tmp_path, split="train", clip_length=4, size=8)
    test = VideoFolder(tmp_path, split="test", clip_length=4, size=8)
    names = lambda ds: {v.path.name for v in ds.videos}  # noqa: E731
    assert len(names(test)) == 1 and len(names(train)) == 11
    assert not names(train) & names(test)
    assert names(test) == names(VideoFolder(tmp_path, split="test", clip_length=4, size=8))
    (tmp_path / "test").mkdir()
    write_gif(tmp_path / "test" / "held.gif", 4)
    assert names(VideoFolder(tmp_path, split="test", clip_length=4, size=8)) == {"held.gif"}


@pytest.mark.parametrize("suffix", [".gif", ".mp4", ".webm"])
def test_write_video_round_trip(tmp_path, suffix):
    clip = torch.zeros(3, 5, 12, 15)
    for t in range(5):
        clip[:, t] = t / 5
    path = write_video(tmp_path / f"out{suffix}", clip, fps=5)
    back = read_video(path)
    assert back.shape[:2] == (3, 5) and back.shape[2] >= 12 and back.shape[3] >= 15
    means = [float(back[:, t, :12, :15].mean()) for t in range(5)]
    np.testing.assert_allclose(means, [t / 5 for t in range(5)], atol=0.03)
    with pytest.raises(ValueError, match="gif"):
        write_video(tmp_path / "out.png", clip)


def test_video_grid_and_borders():
    a, b = torch.zeros(3, 2, 4, 5), torch.full((3, 2, 4, 5), 0.5)
    grid = video_grid([[a, b], [b, a]], padding=1, scale=2)
    assert grid.shape == (3, 2, 2 * (2 * 5 + 1), 2 * (2 * 6 + 1))
    assert float(grid[0, 0, 0, 0]) == 1.0  # padding
    assert float(grid[0, 0, 2, 2]) == 0.0 and float(grid[0, 0, 2, 14]) == 0.5  # a, then b
    framed = add_border(a, (1.0, 0.0, 0.5), slice(1, None))
    assert torch.equal(framed[:, 0], a[:, 0])  # frame 0 untouched
    assert framed[:, 1, 0].tolist() == [[1.0] * 5, [0.0] * 5, [0.5] * 5]
    assert float(framed[:, 1, 1:-1, 1:-1].abs().sum()) == 0 and float(a.sum()) == 0
