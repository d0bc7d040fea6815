"""The video recipe: train VQ-VAE -> encode -> train prior -> reconstruct -> predict continuations
from context frames -> action-conditioned rollouts -> evaluate -> report.

Run it with ``vqkit run video [--preset builtin|folder] [--set key=value ...]``, then
``vqkit predict RUN_DIR --context CLIP [--actions up,up,left]`` on the finished run.

The prior (``prior.kind``) is a causal transformer over the ``(T', H', W')`` code volume
(``transformer``, the default; its options are ``prior.*``) or MaskGIT (``maskgit``; options
``prior.maskgit.*``), conditioned on one condition per frame (the built-in set's actions, or a
folder's class label repeated over the frames). A prediction encodes the context frames *alone*
(so no code sees the future) and keeps their codes: the transformer continues them as a prefix,
one code at a time; MaskGIT keeps them as known positions and fills the rest in parallel steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from vqkit.config import builder_kwargs, builder_section, ranged
from vqkit.datasets.synthetic_video import (
    ACTIONS,
    SyntheticVideo,
    action_ids,
    action_path,
    controlled_mask,
)
from vqkit.datasets.video import VideoFolder, add_border, read_video, video_grid, write_video
from vqkit.errors import InputError
from vqkit.metrics import LN2, data_variance, psnr
from vqkit.metrics.video import (
    copy_last_frame,
    direction_agreement,
    path_error,
    psnr_per_frame,
    track_centroids,
)
from vqkit.models import to_data, to_model
from vqkit.models.maskgit import maskgit
from vqkit.models.video_prior import predict_video, video_prior
from vqkit.models.vqvae import vqvae_video
from vqkit.pipeline import (
    Run,
    codebook_metrics,
    load_stages,
    model_section,
    one_thread_on_cpu,
    prior_vocabulary,
    sampling,
    vqvae_step,
)
from vqkit.train import TrainConfig

GREEN, RED = (0.1, 0.8, 0.1), (0.9, 0.1, 0.1)  # borders: context and generated frames


@dataclass
class DataConfig:
    """Which clips. ``kind``: builtin (synthetic sprites, no files) or folder (video files under
    ``root``: ``root/train`` + ``root/test``, or a tenth of the videos held out)."""

    kind: str = "builtin"
    root: str | None = None
    num_frames: int = ranged(16, ge=2)
    context_frames: int = ranged(6, ge=1)
    frame_size: int = ranged(32, ge=16)
    train_size: int | None = ranged(
        2000, ge=1
    )  # builtin: clips; folder: at most this many (None: all)
    test_size: int | None = ranged(64, ge=1)
    num_sprites: int = ranged(3, ge=0)  # builtin: distractor sprites
    frame_rate: float | None = ranged(None, gt=0)  # folder: resample to this many fps
    frames_between_clips: int | None = ranged(None, ge=1)  # folder: default num_frames
    skip_bad_videos: bool = False  # folder: leave unreadable or empty files out
    seed: int = 0


# The model sections are the builders' arguments (the builders hold the defaults: strides per
# stage and axis (time, height, width), time x2 and space x4), plus the recipe's own keys.
VQVAEConfig = model_section(
    "VQVAEConfig",
    vqvae_video,
    extra={"normalize_by_variance": (bool, True)},  # Sonnet's recipe: beta keeps its meaning
)
PRIOR_KINDS = ("transformer", "maskgit")
# prior.maskgit: MaskGIT's arguments; half the training items are the recipe's task (continue
# the first code steps), the rest plain masked modelling.
# The video priors take no class labels (classes, like actions, are per-frame conditions), so
# MaskGIT's class_dropout (classifier-free guidance over labels) has no place here.
MaskGITPriorConfig = builder_section(
    "MaskGITPriorConfig",
    maskgit,
    skip=("num_codes", "grid", "num_classes", "class_dropout", "num_conds", "cond_per_step"),
    defaults={"prefix_share": 0.5},
)
TransformerPriorConfig = model_section(
    "TransformerPriorConfig",
    video_prior,
    skip=("num_codes", "shape", "num_conds", "cond_per_step"),
    # actions (builtin) or classes (a folder with several); transformer | maskgit
    extra={"conditional": (bool, True), "kind": (str, "transformer")},
)


@dataclass
class PriorConfig(TransformerPriorConfig):
    """``prior``: ``kind``, ``conditional``, the causal transformer's arguments, and MaskGIT's
    under ``prior.maskgit``."""

    maskgit: MaskGITPriorConfig = field(default_factory=MaskGITPriorConfig)

    def __post_init__(self) -> None:
        if self.kind not in PRIOR_KINDS:
            raise ValueError(f"kind must be one of {', '.join(PRIOR_KINDS)}, got {self.kind!r}")


@dataclass
class PredictConfig:
    temperature: float = ranged(1.0, ge=0)  # 0: the most likely code at every step
    seed: int = 0
    rollouts: int = ranged(64, ge=1)  # builtin: test clips steered by new action sequences
    gif_clips: int = ranged(4, ge=1)  # clips shown in each GIF
    fps: float = ranged(6.0, gt=0)
    upscale: int = ranged(3, ge=1)


@dataclass
class VideoRecipeConfig:
    modality: str = "video"
    data: DataConfig = field(default_factory=DataConfig)
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    vqvae_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=1500, batch_size=8, lr=1e-3)
    )
    prior: PriorConfig = field(default_factory=PriorConfig)
    prior_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=1500, batch_size=8, lr=1e-3)
    )
    predict: PredictConfig = field(default_factory=PredictConfig)
    eval_batch_size: int = ranged(32, ge=1)


CONFIG = VideoRecipeConfig
TRAIN_STAGES = ("vqvae_train", "prior_train")


# --- data ------------------------------------------------------------------------------------


def datasets(cfg: VideoRecipeConfig) -> tuple[Dataset, Dataset]:
    """Train and test clip sets returning ``(clip (3, T, H, W) in [0, 1], cond)``."""
    d = cfg.data
    if d.context_frames < 1 or d.context_frames >= d.num_frames:
        raise InputError(
            f"data.context_frames={d.context_frames} must lie in [1, num_frames={d.num_frames})"
        )
    if d.kind == "builtin":
        common = dict(num_frames=d.num_frames, frame_size=d.frame_size, seed=d.seed)
        return (
            SyntheticVideo(split="train", size=d.train_size, num_sprites=d.num_sprites, **common),
            SyntheticVideo(split="test", size=d.test_size, num_sprites=d.num_sprites, **common),
        )
    if d.kind == "folder":
        if d.root is None:
            raise InputError("data.kind=folder needs a folder of videos: pass --data ROOT")
        common = dict(
            clip_length=d.num_frames,
            frames_between_clips=d.frames_between_clips,
            frame_rate=d.frame_rate,
            size=d.frame_size,
            on_error="skip" if d.skip_bad_videos else "raise",
        )
        return VideoFolder(d.root, split="train", **common), VideoFolder(
            d.root, split="test", **common
        )
    raise InputError(f"data.kind must be 'builtin' or 'folder', got {d.kind!r}")


def materialize(dataset: Dataset, limit: int | None) -> TensorDataset:
    """The first ``limit`` clips as uint8 ``(N, 3, T, H, W)`` and per-frame conditions ``(N, T)``.

    Clips are decoded (or drawn) once: training then reads memory, not files. Evenly spaced
    clips are kept when a folder has more than ``limit``.
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    order = np.linspace(0, len(dataset) - 1, n).round().astype(int) if n else []
    clips, conds = [], []
    for i in order:
        clip, cond = dataset[int(i)]
        clips.append((clip * 255).round().to(torch.uint8))
        cond = torch.as_tensor(cond, dtype=torch.long)
        conds.append(cond if cond.dim() else cond.expand(clip.shape[1]))  # a label per frame
    return TensorDataset(torch.stack(clips), torch.stack(conds))


def as_float(clips: torch.Tensor) -> torch.Tensor:
    """uint8 clips -> float in ``[0, 1]``."""
    return clips.float() / 255


def num_conds(cfg: VideoRecipeConfig, train: Dataset) -> int | None:
    """Size of the condition vocabulary, or None for an unconditional prior."""
    if not cfg.prior.conditional:
        return None
    if isinstance(train, SyntheticVideo):
        return len(ACTIONS)
    classes = len(getattr(train, "classes", []))
    return classes if classes > 1 else None


def step_conds(frame_conds: torch.Tensor, time_factor: int) -> torch.Tensor:
    """Per-frame conditions ``(B, T)`` -> per code step ``(B, T', time_factor)``."""
    b, t = frame_conds.shape
    return frame_conds.reshape(b, t // time_factor, time_factor)


# --- models ----------------------------------------------------------------------------------


def train_vqvae(run: Run, train_set: TensorDataset, variance: float):
    cfg = run.cfg
    scale = 1.0 / variance if cfg.vqvae.normalize_by_variance else 1.0
    step = vqvae_step(scale, lambda clips: to_model(as_float(clips)))
    return run.train("vqvae", vqvae_build(cfg), step, train_set)


def vqvae_build(cfg: VideoRecipeConfig):
    return lambda: vqvae_video(**builder_kwargs(cfg.vqvae))


@torch.no_grad()
def encode_all(
    vqvae, clips: torch.Tensor, device, batch_size: int, *, progress: bool = False
) -> torch.Tensor:
    """uint8 clips ``(N, 3, T, H, W)`` -> codes ``(N, T', H', W')`` on the CPU (a bar over the
    batches with ``progress``)."""
    starts = range(0, len(clips), batch_size)
    return torch.cat([
        vqvae.encode(to_model(as_float(clips[i : i + batch_size].to(device)))).cpu()
        for i in tqdm(starts, desc="encode", disable=not progress, leave=False)
    ])  # fmt: skip


def prior_build(cfg: VideoRecipeConfig, num_codes: int, grid: list[int], vocab, time_factor):
    """The prior's builder and the config section of its settings."""
    common = dict(num_codes=num_codes, num_conds=vocab, cond_per_step=time_factor)

    def build():
        if cfg.prior.kind == "maskgit":
            return maskgit(grid=grid, **common, **builder_kwargs(cfg.prior.maskgit))
        return video_prior(shape=grid, **common, **builder_kwargs(cfg.prior))

    return build, "prior.maskgit" if cfg.prior.kind == "maskgit" else "prior"


def check_models(run: Run, vocab) -> None:
    """Both models built once before anything trains (:meth:`Run.trial_build`): a prior
    setting its builder refuses ends the command before the VQ-VAE has trained."""
    d = run.cfg.data
    vqvae = run.trial_build("vqvae", vqvae_build(run.cfg))
    ft, f = vqvae.factor[0], vqvae.factor[1:]
    grid = [d.num_frames // ft, *(d.frame_size // x for x in f)]
    build, section = prior_build(run.cfg, prior_vocabulary(vqvae), grid, vocab, ft)
    run.trial_build("prior", build, section)


def train_prior(run: Run, codes, conds, vocab, time_factor, num_codes: int):
    cfg = run.cfg
    build, section = prior_build(cfg, num_codes, list(codes.shape[1:]), vocab, time_factor)
    # MaskGIT's loss covers the masked codes only: cross-entropy, not a likelihood.
    name = "masked_bits" if cfg.prior.kind == "maskgit" else "nll_bits"

    def step(prior, batch):
        c, y = batch
        loss = prior.loss(c, cond=y if vocab else None)
        return loss, {name: loss / LN2}

    data = TensorDataset(codes, step_conds(conds, time_factor))
    return run.train("prior", build, step, data, section=section)


# --- prediction ------------------------------------------------------------------------------


def predict_all(
    vqvae, prior, clips, conds, cfg, device, *, seed_offset=0, progress=False
) -> torch.Tensor:
    """Predictions for uint8 clips ``(N, 3, T, H, W)`` from their first context frames (a bar
    over the batches with ``progress``)."""
    temp, gen = sampling(cfg.predict, None, None, device, offset=seed_offset)
    c, bs = cfg.data.context_frames, cfg.eval_batch_size
    outs = []
    for i in tqdm(range(0, len(clips), bs), desc="predict", disable=not progress, leave=False):
        y = None if conds is None else conds[i : i + bs]
        context = as_float(clips[i : i + bs, :, :c])
        with one_thread_on_cpu(device):
            pred = predict_video(vqvae, prior, context, y, temperature=temp, generator=gen)
        outs.append(pred.cpu())
    return torch.cat(outs)


# --- media -----------------------------------------------------------------------------------


def panel_gif(rows: list[list[torch.Tensor]], path: Path, cfg: VideoRecipeConfig) -> None:
    """A GIF of clips ``(3, T, H, W)`` in rows and columns, upscaled to be seen."""
    write_video(path, video_grid(rows, scale=cfg.predict.upscale), fps=cfg.predict.fps)


def prediction_rows(originals, recons, preds, context: int) -> list[list[torch.Tensor]]:
    """Rows of original | reconstruction | prediction; the prediction's context frames carry a
    green border, its generated frames a red one."""
    rows = []
    for x, r, p in zip(originals, recons, preds):
        p = add_border(add_border(p, GREEN, slice(0, context)), RED, slice(context, None))
        rows.append([x, r, p])
    return rows


# --- evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def reconstruct_all(vqvae, clips, device, batch_size) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and reconstructions in ``[0, 1]`` of uint8 clips."""
    codes, recons = [], []
    for i in range(0, len(clips), batch_size):
        c = vqvae.encode(to_model(as_float(clips[i : i + batch_size].to(device))))
        codes.append(c.cpu())
        recons.append(to_data(vqvae.decode(c)).cpu())
    return torch.cat(codes), torch.cat(recons)


@torch.no_grad()
def prior_bits(prior, codes, conds, time_factor, batch_size, *, from_step=0) -> float:
    """Mean bits per code of ``codes`` under the prior (steps ``>= from_step``)."""
    device, total = prior.tok.weight.device, 0.0
    for i in range(0, len(codes), batch_size):
        y = None if prior.num_conds is None else step_conds(conds[i : i + batch_size], time_factor)
        c = codes[i : i + batch_size].to(device)
        total += prior.nll_bits(c, None if y is None else y.to(device), from_step=from_step).sum()
    return float(total) / len(codes)


def prior_likelihood(prior, codes, conds, time_factor, batch_size, context_steps) -> dict:
    """Bits per code of the test codes, all and after the context; MaskGIT has no exact
    likelihood, and the metrics say so."""
    if not prior.has_likelihood:
        return dict.fromkeys(
            ("prior_bits_per_code", "prior_bits_per_code_future"),
            "not defined (MaskGIT has no exact likelihood)",
        )
    return {
        "prior_bits_per_code": prior_bits(prior, codes, conds, time_factor, batch_size),
        "prior_bits_per_code_future": prior_bits(
            prior, codes, conds, time_factor, batch_size, from_step=context_steps
        ),
    }


def action_following(vqvae, prior, test: SyntheticVideo, clips, conds, cfg, device) -> dict:
    """Steer the controlled sprite with new action sequences; score how well it follows.

    Each test clip's future gets fresh actions (the set's own sticky process, seeded); the
    commanded path is where those actions take the sprite from its true place at the last
    context frame. The same contexts are then rolled out under the *shuffled* commands (each
    clip gets another clip's) and scored against the same commanded paths: a prior that ignores
    its actions scores alike on both.
    """
    n, c = min(cfg.predict.rollouts, len(clips)), cfg.data.context_frames
    rng = np.random.default_rng(cfg.predict.seed + 7)
    commanded = conds[:n].clone()
    commanded[:, c:] = torch.from_numpy(np.stack([test.sample_actions(rng) for _ in range(n)]))[
        :, c:
    ]
    starts = torch.stack([test.controlled_path(i)[c - 1] for i in range(n)])  # (n, 2)
    path = torch.from_numpy(
        action_path(starts, commanded[:, c - 1 :], frame_size=test.frame_size, speed=test.speed)
    )  # (n, T - c + 1, 2): frames c - 1 .. T - 1
    shuffled = commanded.clone()
    shuffled[:, c:] = commanded[torch.roll(torch.arange(n), 1), c:]
    out = {}
    for name, actions in (("commanded", commanded), ("shuffled", shuffled)):
        frames = predict_all(vqvae, prior, clips[:n], actions, cfg, device, seed_offset=1)
        tracked, found = track_centroids(controlled_mask(frames[:, :, c - 1 :]))
        out[f"action_error_px_{name}"] = float(path_error(tracked[:, 1:], path[:, 1:]).mean())
        out[f"action_direction_agreement_{name}"] = direction_agreement(tracked, path)
        out[f"action_sprite_found_{name}"] = float(found[:, 1:].float().mean())
    return out


@torch.no_grad()
def evaluate(
    vqvae, prior, cfg, test_set, clips, conds, codes_train, variance, device, progress=False
) -> dict:
    """Reconstruction, prior NLL, prediction by horizon against copy-last-frame, actions (a
    progress bar over the predictions with ``progress``)."""
    c, ft = cfg.data.context_frames, vqvae.factor[0]
    bs = cfg.eval_batch_size
    x = as_float(clips)
    codes, recons = reconstruct_all(vqvae, clips, device, bs)
    recon_frames = psnr_per_frame(recons, x)  # (T,)
    vocab = prior.num_conds
    preds = predict_all(
        vqvae, prior, clips, conds if vocab else None, cfg, device, progress=progress
    )
    future = x[:, :, c:]
    pred_h = psnr_per_frame(preds[:, :, c:], future)  # (T - c,)
    copy_h = psnr_per_frame(copy_last_frame(x, c), future)
    codebook, hist = codebook_metrics(codes_train, codes, vqvae.quantizer.num_codes)
    mse = float(F.mse_loss(recons, x))
    metrics = {
        "recon_psnr": float(
            psnr(recons.transpose(1, 2).flatten(0, 1), x.transpose(1, 2).flatten(0, 1))
        ),
        "recon_mse": mse,
        "data_variance": variance,
        "recon_mse_over_variance": mse / variance,
        **prior_likelihood(prior, codes, conds, ft, bs, c // ft),
        **codebook,
        "pred_psnr_mean": float(pred_h.mean()),
        "copy_last_psnr_mean": float(copy_h.mean()),
        "recon_psnr_future_mean": float(recon_frames[c:].mean()),
        "pred_beats_copy_last_horizons": int((pred_h > copy_h).sum()),
        "horizons": len(pred_h),
    }
    for h, (p, b) in enumerate(zip(pred_h.tolist(), copy_h.tolist()), start=1):
        metrics[f"pred_psnr_h{h:02d}"] = p
        metrics[f"copy_last_psnr_h{h:02d}"] = b
    if isinstance(test_set, SyntheticVideo) and vocab:
        paths = torch.stack([test_set.controlled_path(i) for i in range(len(clips))])
        tracked, _ = track_centroids(controlled_mask(preds[:, :, c - 1 :]))
        metrics["action_error_px_true_actions"] = float(
            path_error(tracked[:, 1:], paths[:, c:]).mean()
        )
        metrics.update(action_following(vqvae, prior, test_set, clips, conds, cfg, device))
    lists = {
        "recon_psnr_per_frame": recon_frames.tolist(),
        "pred_psnr_by_horizon": pred_h.tolist(),
        "copy_last_psnr_by_horizon": copy_h.tolist(),
        "latent_shape": list(codes.shape[1:]),
    }
    return metrics, lists, hist, recons, preds


@torch.no_grad()
def rollout_rows(vqvae, prior, clips, cfg, device) -> list[list[torch.Tensor]]:
    """Per clip: the true clip, then rollouts where every future frame has one action."""
    c, t = cfg.data.context_frames, clips.shape[2]
    rows = []
    for action in range(1, len(ACTIONS)):  # up, down, left, right
        actions = torch.zeros(len(clips), t, dtype=torch.long)
        actions[:, c:] = action
        rows.append(predict_all(vqvae, prior, clips, actions, cfg, device, seed_offset=2))
    out = []
    for i in range(len(clips)):
        steer = [add_border(r[i], RED, slice(c, None)) for r in rows]
        out.append([as_float(clips[i]), *steer])
    return out


def run(
    cfg: VideoRecipeConfig, run_dir: Path, *, resume: bool = False, progress: bool = True
) -> dict:
    """Run every stage; returns the metrics written to ``run_dir/metrics.json``."""
    run = Run(cfg, run_dir, resume=resume, progress=progress)
    device = run.device

    with run.stage("data"):
        train_raw, test_raw = datasets(cfg)
        train = materialize(train_raw, cfg.data.train_size)
        test = materialize(test_raw, cfg.data.test_size)
        variance = data_variance(as_float(train.tensors[0][:500]))
    check_models(run, num_conds(cfg, train_raw))

    with run.stage("vqvae"):
        vqvae = train_vqvae(run, train, variance)

    with run.stage("encode"):
        bar = progress and run.main
        codes_train = encode_all(vqvae, train.tensors[0], device, cfg.eval_batch_size, progress=bar)

    with run.stage("prior"):
        ft, vocab = vqvae.factor[0], num_conds(cfg, train_raw)
        prior = train_prior(run, codes_train, train.tensors[1], vocab, ft, prior_vocabulary(vqvae))
    if not run.main:  # prediction, evaluation and the report are rank 0's
        return {}

    with run.stage("eval"):
        clips, conds = test.tensors
        metrics, lists, hist, recons, preds = evaluate(
            vqvae, prior, cfg, test_raw, clips, conds, codes_train, variance, device, progress
        )
        k, c = min(cfg.predict.gif_clips, len(clips)), cfg.data.context_frames
        panel_gif(
            prediction_rows(as_float(clips[:k]), recons[:k], preds[:k], c),
            run_dir / "predictions.gif",
            cfg,
        )
        run.media(
            "image",
            "predictions.gif",
            f"Test clips: original | reconstruction | prediction from the first {c} frames "
            "(green border: context, red border: generated)",
            "Predictions",
        )
        if isinstance(test_raw, SyntheticVideo) and vocab:
            panel_gif(
                rollout_rows(vqvae, prior, clips[:k], cfg, device), run_dir / "rollouts.gif", cfg
            )
            run.media(
                "image",
                "rollouts.gif",
                f"Action-conditioned rollouts: true clip | every generated frame (red border) "
                f"commanded up | down | left | right, from the same {c} context frames",
                "Rollouts",
            )
    return run.finish(metrics, code_usage=hist, lists=lists)


# --- commands on a finished run --------------------------------------------------------------


def predict(
    cfg: VideoRecipeConfig,
    run_dir: Path,
    *,
    context: Path,
    actions: str | None = None,
    label: int | None = None,
    out: Path | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    device: str = "auto",
) -> Path:
    """Continue the first ``context_frames`` of a video file; writes context + prediction.

    Args:
        context: a video file (mp4, webm, avi, gif, ...) with at least ``context_frames`` frames;
            frames are resized and centre-cropped to the run's frame size.
        actions: builtin runs: comma-separated action names or ids for the generated frames
            (one for all, or one per generated frame); default "none".
        label: class-conditional folder runs: the class id (default 0).
        out: a .gif, .mp4 or .webm file; default ``RUN_DIR/predict.gif``.
    """
    dev, (vqvae, prior) = load_stages(run_dir, device, "vqvae", "prior")
    d = cfg.data
    c, t = d.context_frames, d.num_frames
    frames = read_video(
        context,
        size=d.frame_size,
        frame_rate=d.frame_rate if d.kind == "folder" else None,
        num_frames=c,
    )  # (3, c, S, S)
    conds = None
    if d.kind == "builtin" and label is not None:
        raise InputError("this run is conditioned on actions, not classes: pass --actions")
    if prior.num_conds is not None and d.kind == "builtin":
        ids = action_ids(actions or "none")
        if len(ids) not in (1, t - c):
            raise InputError(
                f"--actions takes one action or one per generated frame ({t - c}), got {len(ids)}"
            )
        conds = torch.zeros(1, t, dtype=torch.long)
        conds[0, c:] = torch.tensor(ids if len(ids) > 1 else ids * (t - c))
    elif prior.num_conds is not None:
        if actions is not None:
            raise InputError("this run is conditioned on classes, not actions: pass --label")
        y = 0 if label is None else label
        if not 0 <= y < prior.num_conds:
            raise InputError(f"--label must lie in [0, {prior.num_conds}), got {y}")
        conds = torch.full((1, t), y, dtype=torch.long)
    elif actions is not None or label is not None:
        raise InputError("this run's prior is unconditional: drop --actions/--label")
    temp, gen = sampling(cfg.predict, temperature, seed, dev)
    pred = predict_video(vqvae, prior, frames[None], conds, temperature=temp, generator=gen)[0]
    pred = add_border(pred.cpu(), RED, slice(c, None))
    out = out or run_dir / "predict.gif"
    if out.suffix.lower() == ".gif":
        panel_gif([[pred]], out, cfg)
    else:
        write_video(out, pred, fps=cfg.predict.fps)
    return out
