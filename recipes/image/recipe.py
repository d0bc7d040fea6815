"""The image recipe: train VQ-VAE -> encode -> train the prior over codes (Gated PixelCNN or
MaskGIT, ``prior.kind``) -> sample -> train the sample-quality classifier -> evaluate -> report.

Run it with ``vqkit run image [--preset builtin|cifar10|folder] [--set key=value ...]``; the
presets beside this file are small YAML files over the defaults of :class:`ImageRecipeConfig`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from vqkit.config import ConfigError, builder_kwargs, ranged
from vqkit.datasets import WithMirrors, build_image_dataset, load_rgb, resize_center_crop
from vqkit.errors import InputError
from vqkit.metrics import LN2, data_variance, psnr
from vqkit.metrics.samples import quality_caption, sample_quality, train_image_classifier
from vqkit.models import gated_pixelcnn, maskgit, to_data, to_model, vqvae_image
from vqkit.models.guidance import check_guidance
from vqkit.pipeline import (
    Run,
    codebook_metrics,
    load_stages,
    model_section,
    prior_vocabulary,
    sampling,
    vqvae_step,
)
from vqkit.train import TrainConfig, rewrite_weights


@dataclass
class DataConfig:
    """Which images. ``kind``: builtin (synthetic, no files), cifar10 (torchvision's, or the
    ``train/``+``test/`` image folders of a copy), folder (``root/train/<class>/*``,
    ``root/test/<class>/*``)."""

    kind: str = "builtin"
    root: str | None = None
    image_size: int = ranged(32, ge=8)
    train_size: int | None = ranged(None, ge=1)  # builtin only
    test_size: int | None = ranged(None, ge=1)  # builtin only
    download: bool = False
    seed: int = 0
    mirror: bool = False  # train the VQ-VAE on the training images and their mirror images
    strict: bool = False  # image folders: an unreadable image is an error, not skipped


# The model sections are the builders' arguments (the builders hold the defaults), plus the
# recipe's own keys.
VQVAEConfig = model_section(
    "VQVAEConfig",
    vqvae_image,
    # Divide the reconstruction loss by the data variance (Sonnet's recipe), so beta keeps
    # its meaning whatever the scale of the data.
    extra={"normalize_by_variance": (bool, True)},
)
MaskGITPriorConfig = model_section(
    "MaskGITPriorConfig",
    maskgit,
    skip=("num_codes", "grid", "num_classes", "num_conds", "cond_per_step"),
)
PixelCNNPriorConfig = model_section(
    "PixelCNNPriorConfig",
    gated_pixelcnn,
    skip=("num_codes", "num_classes"),
    extra={
        "kind": (Literal["pixelcnn", "maskgit"], "pixelcnn"),
        "class_conditional": (bool, True),
    },
)


@dataclass
class PriorConfig(PixelCNNPriorConfig):
    """``prior``: ``kind`` (pixelcnn | maskgit), ``class_conditional``, the Gated PixelCNN's
    arguments, and MaskGIT's under ``prior.maskgit`` (as in the video recipe)."""

    maskgit: MaskGITPriorConfig = field(default_factory=MaskGITPriorConfig)


@dataclass
class SampleConfig:
    per_class: int = ranged(8, ge=1)  # class-conditional: one row of this many per class
    count: int = ranged(64, ge=1)  # unconditional
    temperature: float = ranged(1.0, ge=0)  # 0: the most likely code at every step
    seed: int = 0
    steps: int | None = ranged(None, ge=1)  # MaskGIT passes (None: prior.maskgit.steps)
    # Classifier-free guidance scale: logits uncond + s * (cond - uncond); 1: the plain
    # conditional prior; other values need the prior's class_dropout > 0 (its null class).
    guidance: float = ranged(1.0, ge=0)


@dataclass
class EvalConfig:
    """Sample quality: a small CNN trained on the real training images scores real test images,
    their reconstructions and ``samples`` prior samples (vqkit.metrics.samples)."""

    classifier_steps: int = ranged(300, ge=1)
    classifier_batch_size: int = ranged(64, ge=1)
    classifier_channels: int = ranged(16, ge=1)
    classifier_seed: int = 0
    samples: int = ranged(500, ge=2)  # prior samples scored (conditional: as many per class)
    sample_seed: int = 1  # their seed (the grid of samples.png uses sample.seed)


@dataclass
class ImageRecipeConfig:
    modality: str = "image"
    data: DataConfig = field(default_factory=DataConfig)
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    vqvae_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000))
    prior: PriorConfig = field(default_factory=PriorConfig)
    prior_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=2000, batch_size=64, lr=1e-3)
    )
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    eval_batch_size: int = ranged(256, ge=1)
    # torch intra-op threads (None: torch's default); 1 is often faster on a CPU shared with
    # other jobs.
    threads: int | None = ranged(None, ge=1)

    def __post_init__(self) -> None:
        if self.sample.steps is not None and self.prior.kind != "maskgit":
            raise ConfigError(
                f"config key 'sample.steps' sets MaskGIT's sampling passes, but prior.kind is "
                f"{self.prior.kind!r} (one code at a time): drop it or --set prior.kind=maskgit"
            )
        # Classifier-free guidance needs the null class that class_dropout trains (the range of
        # class_dropout itself is the builder's check, run before any stage: Run.trial_build).
        maskgit_prior = self.prior.kind == "maskgit"
        dropout = (self.prior.maskgit if maskgit_prior else self.prior).class_dropout
        key = "prior.maskgit.class_dropout" if maskgit_prior else "prior.class_dropout"
        classes = 2 if self.prior.class_conditional else None  # any number: the data decides
        try:
            check_guidance(self.sample.guidance, num_classes=classes, has_null=dropout > 0)
        except ValueError as e:
            fix = "--set sample.guidance=1" + (
                f" --set {key}=0" if dropout > 0 and not classes else ""
            )
            raise ConfigError(
                f"config key 'sample.guidance': {e} (here {key}={dropout}); for this prior: {fix}"
            ) from e


CONFIG = ImageRecipeConfig
TRAIN_STAGES = ("vqvae_train", "prior_train")


# --- building blocks -------------------------------------------------------------------------


def datasets(cfg: ImageRecipeConfig) -> tuple[Dataset, Dataset]:
    d = cfg.data
    common = dict(
        root=d.root, image_size=d.image_size, seed=d.seed, download=d.download, strict=d.strict
    )
    train = build_image_dataset(d.kind, split="train", size=d.train_size, **common)
    test = build_image_dataset(d.kind, split="test", size=d.test_size, **common)
    return train, test


def num_classes(dataset: Dataset) -> int:
    classes = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    return int(max(int(dataset[i][1]) for i in range(len(dataset)))) + 1


def loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def encode_all(
    model, dataset: Dataset, device, batch_size: int, *, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``(N, *latent)`` and labels ``(N,)`` of a whole data set."""
    codes, labels = [], []
    batches = loader(dataset, batch_size)
    for x, y in tqdm(batches, desc="encode", disable=not progress, leave=False):
        codes.append(model.encode(to_model(x.to(device))).cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(codes), torch.cat(labels)


@torch.no_grad()
def reconstruct_images(vqvae, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> their reconstructions in [0, 1] (on the CPU)."""
    device = next(vqvae.parameters()).device
    return to_data(vqvae.decode(vqvae.encode(to_model(images.to(device))))).cpu()


def upscale(images: torch.Tensor, factor: int = 3) -> torch.Tensor:
    """Nearest-neighbour upscaling so 32x32 images are visible in a report."""
    return F.interpolate(images, scale_factor=factor, mode="nearest")


def save_pairs(originals: torch.Tensor, recons: torch.Tensor, path: Path, per_row: int = 8) -> None:
    """Originals above their reconstructions, ``per_row`` images a row (pixels in [0, 1])."""
    per_row = min(per_row, len(originals))
    rows = []
    for start in range(0, len(originals), per_row):
        rows += [originals[start : start + per_row], recons[start : start + per_row]]
    save_image(upscale(torch.cat(rows).clamp(0, 1)), path, nrow=per_row, padding=2)


# --- the stages ------------------------------------------------------------------------------


def train_vqvae(run: Run, train_set: Dataset, variance: float):
    cfg = run.cfg
    step = vqvae_step(1.0 / variance if cfg.vqvae.normalize_by_variance else 1.0, to_model)
    fixed = torch.stack([train_set[i][0] for i in range(min(8, len(train_set)))])

    def reconstructions(model, step):  # TensorBoard, at each checkpoint
        model.eval()
        grid = torch.cat([fixed, reconstruct_images(model, fixed)])  # originals above recons
        return {"vqvae/reconstructions": make_grid(grid, nrow=len(fixed))}

    return run.train("vqvae", vqvae_build(cfg), step, train_set, image_fn=reconstructions)


def vqvae_build(cfg: ImageRecipeConfig):
    return lambda: vqvae_image(**builder_kwargs(cfg.vqvae))


def prior_build(cfg: ImageRecipeConfig, num_codes: int, grid: list[int], classes: int):
    """The prior's builder and the config section of its settings."""
    num_classes = classes if cfg.prior.class_conditional else None

    def build():
        if cfg.prior.kind == "pixelcnn":
            return gated_pixelcnn(
                num_codes=num_codes, num_classes=num_classes, **builder_kwargs(cfg.prior)
            )
        return maskgit(
            num_codes=num_codes, grid=grid, num_classes=num_classes,
            **builder_kwargs(cfg.prior.maskgit),
        )  # fmt: skip

    return build, "prior.maskgit" if cfg.prior.kind == "maskgit" else "prior"


def check_models(run: Run, classes: int) -> None:
    """Both models built once before anything trains (:meth:`Run.trial_build`): a prior
    setting its builder refuses ends the command before the VQ-VAE has trained."""
    vqvae = run.trial_build("vqvae", vqvae_build(run.cfg))
    grid = [run.cfg.data.image_size // f for f in vqvae.factor]
    run.trial_build("prior", *prior_build(run.cfg, prior_vocabulary(vqvae), grid, classes))


def train_prior(run: Run, codes, labels, classes: int, num_codes: int):
    cfg = run.cfg
    conditional = cfg.prior.class_conditional
    build, section = prior_build(cfg, num_codes, list(codes.shape[1:]), classes)

    def step(prior, batch):
        c, y = batch
        loss = prior.loss(c, y if conditional else None)
        return loss, {name: loss / LN2}

    # MaskGIT's loss covers the masked codes only: cross-entropy, not a likelihood.
    name = "masked_bits" if cfg.prior.kind == "maskgit" else "nll_bits"
    return run.train("prior", build, step, TensorDataset(codes, labels), section=section)


@torch.no_grad()
def draw_samples(
    vqvae,
    prior,
    cfg: SampleConfig,
    latent: tuple[int, int],
    device,
    *,
    temperature: float | None = None,
    seed: int | None = None,
    per_class: int | None = None,
    count: int | None = None,
    batch_size: int = 256,
    steps: int | None = None,
    guidance: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Decoded prior samples in [0, 1] (decoded ``batch_size`` at a time), the class each was
    drawn for (None: unconditional prior) and the number per row (one row per class).
    ``per_class``, ``count``, ``steps`` (MaskGIT's passes) and ``guidance`` default to
    ``cfg``'s."""
    temp, gen = sampling(cfg, temperature, seed, device)
    opts = dict(
        temperature=temp, generator=gen, device=device, **options(prior, cfg, steps, guidance)
    )
    y = None
    if prior.num_classes:
        per_row = per_class or cfg.per_class
        y = torch.arange(prior.num_classes, device=device).repeat_interleave(per_row)
        codes = prior.sample((len(y), *latent), y=y, **opts)
    else:
        per_row = 8
        codes = prior.sample((count or cfg.count, *latent), **opts)
    images = torch.cat([to_data(vqvae.decode(c)).cpu() for c in codes.split(batch_size)])
    return images, None if y is None else y.cpu(), per_row


def options(prior, cfg: SampleConfig, steps: int | None, guidance: float | None) -> dict:
    """``sample()``'s ``guidance`` (the command's, else ``sample.guidance``) and, for a MaskGIT
    prior, ``steps`` (the command's, else ``sample.steps``, else the prior's own); the Gated
    PixelCNN refuses a number of steps."""
    steps = cfg.steps if steps is None else steps
    guidance = cfg.guidance if guidance is None else guidance
    try:
        check_guidance(guidance, num_classes=prior.num_classes, has_null=prior.class_dropout > 0)
    except ValueError as e:
        raise InputError(f"--guidance: {e}") from e
    opts = {"guidance": guidance}
    if prior.has_likelihood:  # autoregressive: one code at a time
        if steps is not None:
            raise InputError(
                "--steps sets MaskGIT's sampling passes; this run's prior is a Gated PixelCNN, "
                "which draws one code at a time: drop --steps"
            )
        return opts
    return opts if steps is None else {**opts, "steps": steps}


@torch.no_grad()
def sampling_seconds(prior, cfg: SampleConfig, latent, device, count: int = 16) -> float:
    """Seconds to sample ``count`` code grids (class 0 for a class-conditional prior), with the
    run's guidance."""
    y = torch.zeros(count, dtype=torch.long, device=device) if prior.num_classes else None
    gen = torch.Generator(device=device).manual_seed(0)
    t = time.perf_counter()
    opts = options(prior, cfg, None, None)
    prior.sample((count, *latent), y=y, generator=gen, device=device, **opts)
    return time.perf_counter() - t


def train_classifier(run: Run, train_set: Dataset, classes: int):
    """The sample-quality classifier, trained on the real training images."""
    e = run.cfg.eval
    return train_image_classifier(
        train_set,
        num_classes=classes,
        steps=e.classifier_steps,
        batch_size=e.classifier_batch_size,
        channels=e.classifier_channels,
        seed=e.classifier_seed,
        device=run.device,
        progress=run.progress,
    )


@torch.no_grad()
def fit_sigma(vqvae, train_set: Dataset, batch_size: int, device) -> None:
    """The Gaussian decoder is trained with MSE; its NLL uses sigma fitted on training
    reconstructions (maximum likelihood: sigma^2 = MSE)."""
    se, n = 0.0, 0
    for x, _ in loader(Subset(train_set, range(min(2000, len(train_set)))), batch_size):
        x = to_model(x.to(device))
        se += F.mse_loss(vqvae.decode(vqvae.encode(x)), x, reduction="sum").item()
        n += x.numel()
    vqvae.likelihood.sigma = math.sqrt(se / n)


@torch.no_grad()
def evaluate(
    vqvae, prior, cfg, test_set, codes_train, codes_test, labels_test, variance, device,
    progress=False,
):  # fmt: skip
    """Test reconstruction, bits/dim, codebook health and prior NLL (not defined for MaskGIT),
    a bar over the batches with ``progress``; also the test images and their reconstructions in
    [0, 1] (on the CPU)."""
    vqvae.eval()
    prior.eval()
    likelihood = vqvae.likelihood
    sq_err = psnr_sum = recon_bits = prior_bits = 0.0
    count = dims = 0
    offset = 0
    conditional = bool(prior.num_classes)
    exact = prior.has_likelihood
    images, recons = [], []
    batches = loader(test_set, cfg.eval_batch_size)
    batches = tqdm(batches, desc="eval", disable=not progress, leave=False)
    for x, _ in batches:
        images.append(x)
        x = to_model(x.to(device))
        b = x.shape[0]
        codes = codes_test[offset : offset + b].to(device)
        y = labels_test[offset : offset + b].to(device)
        offset += b
        params = vqvae.decode_params(codes)
        recon = likelihood.mean(params)
        recons.append(to_data(recon).clamp(0, 1).cpu())
        sq_err += F.mse_loss(recon, x, reduction="sum").item()
        psnr_sum += psnr(to_data(recon), to_data(x), reduction="none").sum().item()
        recon_bits += likelihood.nll_bits_per_dim(params, x).sum().item()
        if exact:
            per_code = prior.nll_bits(codes, y if conditional else None)  # (B,) bits per code
            prior_bits += per_code.sum().item()
        count += b
        dims = x[0].numel()
    latents = codes_test[0].numel()
    codebook, hist = codebook_metrics(codes_train, codes_test, vqvae.quantizer.num_codes)
    mse = sq_err / (count * dims)
    na = "n/a: MaskGIT has no exact likelihood"
    return (
        {
            "test_mse": mse,
            "test_psnr": psnr_sum / count,
            "data_variance": variance,
            "test_mse_over_variance": mse / variance,
            "bits_per_dim": recon_bits / count + prior_bits / count * latents / dims
            if exact
            else na,
            "recon_bits_per_dim": recon_bits / count,
            "prior_bits_per_code": prior_bits / count if exact else na,
            **codebook,
            "latent_shape": list(codes_test.shape[1:]),
        },
        hist,
        (torch.cat(images), torch.cat(recons)),
    )


def run(
    cfg: ImageRecipeConfig, run_dir: Path, *, resume: bool = False, progress: bool = True
) -> dict:
    """Run every stage; returns the metrics written to ``run_dir/metrics.json``."""
    run = Run(cfg, run_dir, resume=resume, progress=progress)
    device = run.device
    train_set, test_set = datasets(cfg)
    classes = num_classes(train_set)
    variance = data_variance(train_set, max_items=5000)
    check_models(run, classes)

    with run.stage("vqvae"):
        vqvae = train_vqvae(run, WithMirrors(train_set) if cfg.data.mirror else train_set, variance)

    with run.stage("encode"):
        # On every rank of a distributed run: each trains the prior on these codes.
        bar = progress and run.main
        codes_train, labels_train = encode_all(
            vqvae, train_set, device, cfg.eval_batch_size, progress=bar
        )
        codes_test, labels_test = encode_all(
            vqvae, test_set, device, cfg.eval_batch_size, progress=bar
        )

    with run.stage("prior"):
        prior = train_prior(run, codes_train, labels_train, classes, prior_vocabulary(vqvae))
    if not run.main:  # sampling, evaluation and the report are rank 0's
        return {}

    latent = tuple(codes_test.shape[1:])
    with run.stage("sample"):
        t = time.perf_counter()
        grid, _, per_row = draw_samples(vqvae, prior, cfg.sample, latent, device)
        grid_s = time.perf_counter() - t
        save_image(upscale(grid), run_dir / "samples.png", nrow=per_row, padding=2)
        # The scored samples: as many per class as fit in eval.samples.
        scored, scored_y, _ = draw_samples(
            vqvae,
            prior,
            cfg.sample,
            latent,
            device,
            seed=cfg.eval.sample_seed,
            per_class=max(cfg.eval.samples // classes, 1),
            count=cfg.eval.samples,
            batch_size=cfg.eval_batch_size,
        )
        timing = {
            "prior_kind": cfg.prior.kind,
            "sample_guidance": cfg.sample.guidance,
            "sample_grid_s": grid_s,
            "sample_grid_count": len(grid),
            "sample_16_s": sampling_seconds(prior, cfg.sample, latent, device),
        }
        if not prior.has_likelihood:
            timing["sample_steps"] = cfg.sample.steps or prior.steps

    clf = None
    if classes >= 2:  # one class: nothing to classify, no sample-quality figures
        with run.stage("classifier"):
            clf = train_classifier(run, train_set, classes)

    with run.stage("eval"):
        if hasattr(vqvae.likelihood, "sigma"):
            fit_sigma(vqvae, train_set, cfg.eval_batch_size, device)
            rewrite_weights(run_dir / "vqvae" / "ckpt", vqvae)  # the weights carry sigma
        metrics, hist, (real, recons) = evaluate(
            vqvae, prior, cfg, test_set, codes_train, codes_test, labels_test, variance, device,
            progress=progress,
        )  # fmt: skip
        if clf is not None:
            metrics.update(sample_quality(clf, real, labels_test, recons, scored, scored_y))
        else:
            metrics["classifier_sample_accuracy"] = "n/a: the data has one class"
        metrics.update(timing)
        originals = torch.stack([test_set[i][0] for i in range(min(16, len(test_set)))])
        save_pairs(originals, reconstruct_images(vqvae, originals), run_dir / "reconstructions.png")

    run.media(
        "image",
        "reconstructions.png",
        "Test images (odd rows) above their reconstructions (even rows)",
        "Reconstructions",
    )
    caption = "Prior samples, one row per class" if prior.num_classes else "Prior samples"
    if clf is not None:
        caption = f"{caption}. {quality_caption(metrics)}"
    run.media("image", "samples.png", caption, "Samples")
    # Unreadable images left out (image folders); encoding read every one in this process.
    skipped = sorted({f for ds in (train_set, test_set) for f in getattr(ds, "skipped", [])})
    metrics["skipped_files"] = len(skipped)
    return run.finish(metrics, code_usage=hist, lists={"skipped": skipped})


# --- commands on a finished run --------------------------------------------------------------


def sample(
    cfg: ImageRecipeConfig,
    run_dir: Path,
    *,
    out: Path | None,
    temperature: float | None,
    seed: int | None,
    device: str,
    steps: int | None = None,
    guidance: float | None = None,
) -> Path:
    """Draw new prior samples from a finished run and save them as a grid (``steps``: MaskGIT's
    sampling passes, refused for the Gated PixelCNN; ``guidance``: the classifier-free guidance
    scale, None: the run's ``sample.guidance``)."""
    dev, (vqvae, prior) = load_stages(run_dir, device, "vqvae", "prior")
    side = cfg.data.image_size
    latent = tuple(side // f for f in vqvae.factor)
    images, _, per_row = draw_samples(
        vqvae, prior, cfg.sample, latent, dev, temperature=temperature, seed=seed, steps=steps,
        guidance=guidance,
    )  # fmt: skip
    out = out or run_dir / "samples_new.png"
    save_image(upscale(images), out, nrow=per_row, padding=2)
    return out


def reconstruct(
    cfg: ImageRecipeConfig, run_dir: Path, inputs: list[Path], *, out: Path | None, device: str
) -> tuple[Path, list[float]]:
    """Reconstruct image files with a finished run's VQ-VAE; returns the grid and PSNRs (dB)."""
    _, (vqvae,) = load_stages(run_dir, device, "vqvae")
    images = torch.stack([resize_center_crop(load_rgb(p), cfg.data.image_size) for p in inputs])
    recons = reconstruct_images(vqvae, images)
    out = out or run_dir / "reconstruct.png"
    save_pairs(images, recons, out)
    return out, psnr(recons, images, reduction="none").tolist()
