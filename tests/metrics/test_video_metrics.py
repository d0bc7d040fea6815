"""Video metrics: per-frame PSNR, copy-last-frame, centroid tracking, path following."""

from __future__ import annotations

import math

import pytest
import torch

from vqkit.metrics.video import (
    copy_last_frame,
    direction_agreement,
    path_error,
    psnr_per_frame,
    track_centroids,
)


def test_psnr_per_frame_matches_the_definition():
    target = torch.zeros(2, 3, 4, 5, 5)
    pred = target.clone()
    pred[:, :, 1] = 0.1  # MSE 0.01 -> 20 dB
    pred[0, :, 2] = 0.01  # MSE 1e-4 -> 40 dB in clip 0
    pred[1, :, 2] = 0.1  # 20 dB in clip 1
    pred[:, :, 3] = 0.5  # MSE 0.25 -> 6.02 dB
    got = psnr_per_frame(pred, target)
    assert got.shape == (4,)
    assert math.isinf(got[0])  # an exact frame
    torch.testing.assert_close(got[1:], torch.tensor([20.0, 30.0, 10 * math.log10(4)]))
    with pytest.raises(ValueError, match="differ"):
        psnr_per_frame(pred, target[:, :, :3])
    with pytest.raises(ValueError, match="T, H, W"):
        psnr_per_frame(pred[0], target[0])


def test_copy_last_frame_repeats_the_last_context_frame():
    clips = torch.arange(2 * 1 * 5 * 2 * 2, dtype=torch.float32).view(2, 1, 5, 2, 2)
    out = copy_last_frame(clips, 2)
    assert out.shape == (2, 1, 3, 2, 2)
    for t in range(3):
        assert torch.equal(out[:, :, t], clips[:, :, 1])
    with pytest.raises(ValueError, match="context"):
        copy_last_frame(clips, 5)


def test_track_centroids_and_missing_frames():
    mask = torch.zeros(1, 4, 8, 8, dtype=torch.bool)
    mask[0, 0, 2:4, 4:6] = True  # rows 2-3, columns 4-5: centre (3.0, 5.0) with +0.5 centres
    mask[0, 2, 6, 1] = True  # one pixel: (6.5, 1.5)
    pos, found = track_centroids(mask)
    assert found.tolist() == [[True, False, True, False]]
    torch.testing.assert_close(pos[0], torch.tensor([[3.0, 5.0], [3.0, 5.0], [6.5, 1.5], [6.5, 1.5]]))
    # Never found: the frame centre.
    pos, found = track_centroids(torch.zeros(1, 2, 8, 6, dtype=torch.bool))
    torch.testing.assert_close(pos[0], torch.tensor([[4.0, 3.0], [4.0, 3.0]]))


def test_path_error_and_direction_agreement():
    commanded = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [0.0, 4.0], [2.0, 4.0], [2.0, 4.0]]])
    assert path_error(commanded, commanded).tolist() == [0.0] * 5
    shifted = commanded + torch.tensor([3.0, 4.0])
    torch.testing.assert_close(path_error(shifted, commanded), torch.full((5,), 5.0))
    # Same moves, offset: full agreement on the 3 commanded moves (the last step stays put).
    assert direction_agreement(shifted, commanded) == 1.0
    # Tracked: right, then stays, then up instead of down.
    tracked = torch.tensor([[[0.0, 0.0], [0.1, 1.5], [0.1, 1.5], [-1.0, 1.5], [-1.0, 1.5]]])
    assert direction_agreement(tracked, commanded) == pytest.approx(1 / 3)
    assert math.isnan(direction_agreement(tracked, torch.zeros_like(tracked)))
    with pytest.raises(ValueError, match="B, T"):
        path_error(tracked[0], commanded[0])
