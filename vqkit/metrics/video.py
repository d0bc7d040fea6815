"""Video metrics: PSNR per frame, the copy-last-frame baseline, and following a commanded path.

Clips are ``(B, C, T, H, W)`` with values in ``[0, 1]``, as the video VQ-VAE takes them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vqkit.metrics.reconstruction import psnr


def _check_clips(x: Tensor, name: str = "clips") -> None:
    if not isinstance(x, Tensor) or x.dim() != 5:
        raise ValueError(
            f"{name} must be a (B, C, T, H, W) tensor, got {tuple(getattr(x, 'shape', ()))}"
        )


def psnr_per_frame(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """``(T,)`` PSNR in dB of each frame index, the mean over the batch of per-frame PSNRs.

    Args:
        pred, target: ``(B, C, T, H, W)`` clips of the same shape.
        data_range: 1 for ``[0, 1]`` data.
    """
    _check_clips(pred, "pred")
    _check_clips(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    b, c, t, h, w = pred.shape
    frames = lambda x: x.transpose(1, 2).reshape(b * t, c, h, w)  # noqa: E731
    per = psnr(frames(pred), frames(target), data_range, reduction="none")  # (B * T,)
    return per.view(b, t).mean(dim=0)


def copy_last_frame(clips: Tensor, context: int) -> Tensor:
    """The copy-last-frame prediction: frame ``context - 1`` repeated over the future frames.

    Args:
        clips: ``(B, C, T, H, W)``.
        context: frames given, ``1 <= context < T``.

    Returns:
        ``(B, C, T - context, H, W)``.
    """
    _check_clips(clips)
    frames = clips.shape[2]
    if not 1 <= context < frames:
        raise ValueError(
            f"context must lie in [1, {frames}) for {frames}-frame clips, got {context}"
        )
    return clips[:, :, context - 1 : context].expand(-1, -1, frames - context, -1, -1)


def track_centroids(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Follow an object through frames by the centroid of its pixel mask.

    A frame where the mask is empty keeps the previous frame's position (the last one found;
    the frame centre before the first), as a simple tracker would.

    Args:
        mask: ``(B, T, H, W)`` bool, the object's pixels in each frame.

    Returns:
        ``(positions, found)``: ``(B, T, 2)`` float ``(y, x)`` in pixel units with pixel centres
        at ``+0.5`` (the convention of the synthetic video set), and ``(B, T)`` bool.
    """
    if not isinstance(mask, Tensor) or mask.dim() != 4:
        raise ValueError(f"mask must be (B, T, H, W), got {tuple(getattr(mask, 'shape', ()))}")
    b, t, h, w = mask.shape
    weight = mask.float()
    count = weight.sum(dim=(2, 3))  # (B, T)
    ys = torch.arange(h, dtype=torch.float32, device=mask.device) + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=mask.device) + 0.5
    y = (weight.sum(dim=3) * ys).sum(dim=2) / count.clamp(min=1)
    x = (weight.sum(dim=2) * xs).sum(dim=2) / count.clamp(min=1)
    found = count > 0
    pos = torch.stack([y, x], dim=-1)  # (B, T, 2)
    last = torch.tensor([h / 2, w / 2], device=mask.device).expand(b, 2).clone()
    for i in range(t):
        last = torch.where(found[:, i, None], pos[:, i], last)
        pos[:, i] = last
    return pos, found


def path_error(tracked: Tensor, commanded: Tensor) -> Tensor:
    """Mean Euclidean distance in pixels between tracked and commanded positions.

    Args:
        tracked, commanded: ``(B, T, 2)`` positions.

    Returns:
        ``(T,)``: the mean over the batch at each frame (average it for one number).
    """
    if tracked.shape != commanded.shape or tracked.dim() != 3 or tracked.shape[-1] != 2:
        raise ValueError(
            f"tracked and commanded must both be (B, T, 2), got {tuple(tracked.shape)} and "
            f"{tuple(commanded.shape)}"
        )
    return (tracked.float() - commanded.float()).norm(dim=-1).mean(dim=0)


def direction_agreement(tracked: Tensor, commanded: Tensor, *, min_move: float = 0.5) -> float:
    """Fraction of commanded moves that the tracked object makes in the same direction.

    A step counts when the commanded path moves (by more than ``min_move`` pixels); it agrees
    when the tracked displacement over that step lies within 45 degrees of the commanded one
    (an object that stays put never agrees).

    Args:
        tracked, commanded: ``(B, T, 2)`` positions; steps are consecutive frames.

    Returns:
        A float in ``[0, 1]``, or NaN when the commanded path never moves.
    """
    if tracked.shape != commanded.shape or tracked.dim() != 3 or tracked.shape[1] < 2:
        raise ValueError(
            f"tracked and commanded must both be (B, T >= 2, 2), got {tuple(tracked.shape)} and "
            f"{tuple(commanded.shape)}"
        )
    d_cmd = commanded[:, 1:].float() - commanded[:, :-1].float()  # (B, T - 1, 2)
    d_trk = tracked[:, 1:].float() - tracked[:, :-1].float()
    moves = d_cmd.norm(dim=-1) > min_move
    if not moves.any():
        return float("nan")
    cos = (d_cmd * d_trk).sum(-1) / (d_cmd.norm(dim=-1) * d_trk.norm(dim=-1)).clamp(min=1e-8)
    agree = (cos > 2**-0.5) & moves
    return float(agree.sum() / moves.sum())
