"""The image recipe: train VQ-VAE -> encode -> train Gated PixelCNN prior -> sample -> evaluate
-> report.

Run it with ``vqkit run image [--preset builtin|cifar10|folder] [--set key=value ...]``; the
presets beside this file are small YAML files over the defaults of :class:`ImageRecipeConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from vqkit.bundle import load_model
from vqkit.config import save_config
from vqkit.datasets import WithMirrors, build_image_dataset, load_rgb, resize_center_crop
from vqkit.distributed import is_main, rank_device
from vqkit.io import write_json
from vqkit.metrics import code_histogram, data_variance, perplexity, psnr, unigram_bits, usage
from vqkit.models import gated_pixelcnn, vqvae_image
from vqkit.quantize import QuantizerConfig
from vqkit.report import build_report
from vqkit.runs import Stages, add_media
from vqkit.train import TrainConfig, fit, resolve_device, seed_everything

LN2 = math.log(2)


@dataclass
class DataConfig:
    """Which images. ``kind``: builtin (synthetic, no files), cifar10 (torchvision's, or the
    ``train/``+``test/`` image folders of a copy), folder (``root/train/<class>/*``,
    ``root/test/<class>/*``)."""

    kind: str = "builtin"
    root: str | None = None
    image_size: int = 32
    train_size: int | None = None  # builtin only
    test_size: int | None = None  # builtin only
    download: bool = False
    seed: int = 0
    mirror: bool = False  # train the VQ-VAE on the training images and their mirror images


@dataclass
class ImageQuantizerConfig(QuantizerConfig):
    heads: int = 1  # codes per position (the paper's CIFAR-10 latent has 10)


@dataclass
class VQVAEConfig:
    hidden: int = 128
    res_hidden: int = 32
    num_res_blocks: int = 2
    num_codes: int = 512
    code_dim: int = 64
    strides: list[int] = field(default_factory=lambda: [2, 2])
    likelihood: str = "gaussian"
    # Divide the reconstruction loss by the data variance (Sonnet's recipe), so beta keeps
    # its meaning whatever the scale of the data.
    normalize_by_variance: bool = True
    quantizer: ImageQuantizerConfig = field(default_factory=ImageQuantizerConfig)


@dataclass
class PriorConfig:
    channels: int = 64
    num_layers: int = 8
    kernel_size: int = 3
    class_conditional: bool = True


@dataclass
class SampleConfig:
    per_class: int = 8  # class-conditional: one row of this many per class
    count: int = 64  # unconditional
    temperature: float = 1.0
    seed: int = 0


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
    eval_batch_size: int = 256


CONFIG = ImageRecipeConfig
TRAIN_STAGES = ("vqvae_train", "prior_train")


# --- building blocks -------------------------------------------------------------------------


def datasets(cfg: ImageRecipeConfig) -> tuple[Dataset, Dataset]:
    d = cfg.data
    common = dict(root=d.root, image_size=d.image_size, seed=d.seed, download=d.download)
    train = build_image_dataset(d.kind, split="train", size=d.train_size, **common)
    test = build_image_dataset(d.kind, split="test", size=d.test_size, **common)
    return train, test


def num_classes(dataset: Dataset) -> int:
    classes = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    return int(max(int(dataset[i][1]) for i in range(len(dataset)))) + 1


def build_vqvae(cfg: VQVAEConfig):
    q = cfg.quantizer
    return vqvae_image(
        hidden=cfg.hidden,
        res_hidden=cfg.res_hidden,
        num_res_blocks=cfg.num_res_blocks,
        num_codes=cfg.num_codes,
        code_dim=cfg.code_dim,
        strides=list(cfg.strides),
        likelihood=cfg.likelihood,
        quantizer=q.kwargs(),
    )


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
        codes.append(model.encode(x.to(device) - 0.5).cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(codes), torch.cat(labels)


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


def train_vqvae(cfg, train_set, run_dir, *, resume, progress, variance):
    # Torch seeds every new process at random: seed the initial weights.
    seed_everything(cfg.vqvae_train.seed)
    model = build_vqvae(cfg.vqvae)
    scale = 1.0 / variance if cfg.vqvae.normalize_by_variance else 1.0

    def step(model, batch):
        x, _ = batch
        out = model(x - 0.5)
        loss = scale * out.recon_loss + out.quant.loss
        return loss, {
            "recon_loss": out.recon_loss,
            "vq_loss": out.quant.loss,
            "perplexity": out.quant.perplexity,
            "usage": out.quant.usage,
        }

    fixed = torch.stack([train_set[i][0] for i in range(min(8, len(train_set)))])

    def reconstructions(model, step):  # TensorBoard, at each checkpoint
        model.eval()
        recon = model.decode(model.encode(fixed.to(next(model.parameters()).device) - 0.5))
        grid = torch.cat([fixed, (recon.cpu() + 0.5).clamp(0, 1)])  # originals above recons
        return {"vqvae/reconstructions": make_grid(grid, nrow=len(fixed))}

    result = fit(
        model,
        step,
        train_set,
        cfg=cfg.vqvae_train,
        run_dir=run_dir,
        name="vqvae",
        resume=resume,
        image_fn=reconstructions,
        progress=progress,
    )
    return model.eval(), result


def train_prior(cfg, codes, labels, classes, run_dir, *, resume, progress):
    conditional = cfg.prior.class_conditional
    # Torch seeds every new process at random: seed the initial weights.
    seed_everything(cfg.prior_train.seed)
    prior = gated_pixelcnn(
        num_codes=cfg.vqvae.num_codes,
        channels=cfg.prior.channels,
        num_layers=cfg.prior.num_layers,
        kernel_size=cfg.prior.kernel_size,
        num_classes=classes if conditional else None,
    )

    def step(prior, batch):
        c, y = batch
        loss = prior.loss(c, y if conditional else None)
        return loss, {"nll_bits": loss / LN2}

    result = fit(
        prior,
        step,
        TensorDataset(codes, labels),
        cfg=cfg.prior_train,
        run_dir=run_dir,
        name="prior",
        resume=resume,
        progress=progress,
    )
    return prior.eval(), result


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
) -> tuple[torch.Tensor, int]:
    """Decoded prior samples in [0, 1] and the number per row (one row per class)."""
    gen = torch.Generator(device=device).manual_seed(cfg.seed if seed is None else seed)
    temp = cfg.temperature if temperature is None else temperature
    if prior.num_classes:
        y = torch.arange(prior.num_classes, device=device).repeat_interleave(cfg.per_class)
        codes = prior.sample((len(y), *latent), y=y, temperature=temp, generator=gen, device=device)
        per_row = cfg.per_class
    else:
        codes = prior.sample((cfg.count, *latent), temperature=temp, generator=gen, device=device)
        per_row = 8
    return (vqvae.decode(codes) + 0.5).clamp(0, 1).cpu(), per_row


@torch.no_grad()
def evaluate(
    vqvae, prior, cfg, train_set, test_set, codes_train, codes_test, labels_test, variance, device
) -> dict:
    """Test reconstruction, bits/dim, codebook health and prior NLL."""
    vqvae.eval()
    prior.eval()
    likelihood = vqvae.likelihood
    if hasattr(likelihood, "sigma"):
        # The Gaussian decoder is trained with MSE; its NLL uses sigma fitted on training
        # reconstructions (maximum likelihood: sigma^2 = MSE).
        se, n = 0.0, 0
        for x, _ in loader(
            torch.utils.data.Subset(train_set, range(min(2000, len(train_set)))),
            cfg.eval_batch_size,
        ):
            x = x.to(device) - 0.5
            se += F.mse_loss(vqvae.decode(vqvae.encode(x)), x, reduction="sum").item()
            n += x.numel()
        likelihood.sigma = math.sqrt(se / n)
    sq_err = psnr_sum = recon_bits = prior_bits = 0.0
    count = dims = 0
    offset = 0
    conditional = bool(prior.num_classes)
    for x, _ in loader(test_set, cfg.eval_batch_size):
        x = x.to(device) - 0.5
        b = x.shape[0]
        codes = codes_test[offset : offset + b].to(device)
        y = labels_test[offset : offset + b].to(device)
        offset += b
        params = vqvae.decode_params(codes)
        recon = likelihood.mean(params)
        sq_err += F.mse_loss(recon, x, reduction="sum").item()
        psnr_sum += psnr(recon.clamp(-0.5, 0.5) + 0.5, x + 0.5, reduction="none").sum().item()
        recon_bits += likelihood.nll_bits_per_dim(params, x).sum().item()
        per_code = prior.nll_bits(codes, y if conditional else None)  # (B,) bits per code
        prior_bits += per_code.sum().item()
        count += b
        dims = x[0].numel()
    num_codes = vqvae.quantizer.num_codes
    latents = codes_test[0].numel()
    hist = code_histogram(codes_test, num_codes)
    mse = sq_err / (count * dims)
    return {
        "test_mse": mse,
        "test_psnr": psnr_sum / count,
        "data_variance": variance,
        "test_mse_over_variance": mse / variance,
        "bits_per_dim": recon_bits / count + prior_bits / count * latents / dims,
        "recon_bits_per_dim": recon_bits / count,
        "prior_bits_per_code": prior_bits / count,
        "log2_num_codes": math.log2(num_codes),
        "unigram_bits_per_code": float(unigram_bits(codes_train, codes_test, num_codes)),
        "test_perplexity": float(perplexity(hist)),
        "test_usage": float(usage(hist)),
        "num_codes": num_codes,
        "latent_shape": list(codes_test.shape[1:]),
    }, hist


def run(
    cfg: ImageRecipeConfig, run_dir: Path, *, resume: bool = False, progress: bool = True
) -> dict:
    """Run every stage; returns the metrics written to ``run_dir/metrics.json``."""
    if is_main():  # under torchrun every rank trains; rank 0 alone writes the run's files
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    device = rank_device(resolve_device(cfg.vqvae_train.device))
    train_set, test_set = datasets(cfg)
    classes = num_classes(train_set)
    variance = data_variance(train_set, max_items=5000)
    stages = Stages()

    with stages("vqvae"):
        vqvae_set = WithMirrors(train_set) if cfg.data.mirror else train_set
        vqvae, vq_result = train_vqvae(
            cfg, vqvae_set, run_dir, resume=resume, progress=progress, variance=variance
        )

    with stages("encode"):
        # On every rank of a distributed run: each trains the prior on these codes.
        bar = progress and is_main()
        codes_train, labels_train = encode_all(
            vqvae, train_set, device, cfg.eval_batch_size, progress=bar
        )
        codes_test, labels_test = encode_all(
            vqvae, test_set, device, cfg.eval_batch_size, progress=bar
        )

    with stages("prior"):
        prior, prior_result = train_prior(
            cfg, codes_train, labels_train, classes, run_dir, resume=resume, progress=progress
        )
    if not is_main():  # sampling, evaluation and the report are rank 0's
        return {}

    with stages("sample"):
        samples, per_row = draw_samples(
            vqvae, prior, cfg.sample, tuple(codes_test.shape[1:]), device
        )
        save_image(upscale(samples), run_dir / "samples.png", nrow=per_row, padding=2)

    with stages("eval"):
        metrics, hist = evaluate(
            vqvae,
            prior,
            cfg,
            train_set,
            test_set,
            codes_train,
            codes_test,
            labels_test,
            variance,
            device,
        )
        originals = torch.stack([test_set[i][0] for i in range(min(16, len(test_set)))])
        with torch.no_grad():
            recons = (vqvae.decode(vqvae.encode(originals.to(device) - 0.5)) + 0.5).clamp(0, 1)
        save_pairs(originals, recons.cpu(), run_dir / "reconstructions.png")

    metrics.update(stages.summary(device, vqvae=vq_result, prior=prior_result))
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "code_usage.json", hist.tolist())
    add_media(
        run_dir,
        "image",
        "reconstructions.png",
        "Test images (odd rows) above their reconstructions (even rows)",
        "Reconstructions",
    )
    caption = "Prior samples, one row per class" if prior.num_classes else "Prior samples"
    add_media(run_dir, "image", "samples.png", caption, "Samples")
    build_report(run_dir)
    return metrics


# --- commands on a finished run --------------------------------------------------------------


def sample(
    cfg: ImageRecipeConfig,
    run_dir: Path,
    *,
    out: Path | None,
    temperature: float | None,
    seed: int | None,
    device: str,
) -> Path:
    """Draw new prior samples from a finished run and save them as a grid."""
    dev = resolve_device(device)
    vqvae = load_model(run_dir / "vqvae" / "ckpt", device=dev).eval()
    prior = load_model(run_dir / "prior" / "ckpt", device=dev).eval()
    side = cfg.data.image_size
    latent = tuple(side // f for f in vqvae.factor)
    images, per_row = draw_samples(
        vqvae, prior, cfg.sample, latent, dev, temperature=temperature, seed=seed
    )
    out = out or run_dir / "samples_new.png"
    save_image(upscale(images), out, nrow=per_row, padding=2)
    return out


def reconstruct(
    cfg: ImageRecipeConfig, run_dir: Path, inputs: list[Path], *, out: Path | None, device: str
) -> tuple[Path, list[float]]:
    """Reconstruct image files with a finished run's VQ-VAE; returns the grid and PSNRs (dB)."""
    dev = resolve_device(device)
    vqvae = load_model(run_dir / "vqvae" / "ckpt", device=dev).eval()
    images = torch.stack([resize_center_crop(load_rgb(p), cfg.data.image_size) for p in inputs])
    with torch.no_grad():
        recons = (vqvae.decode(vqvae.encode(images.to(dev) - 0.5)) + 0.5).clamp(0, 1).cpu()
    out = out or run_dir / "reconstruct.png"
    save_pairs(images, recons, out)
    return out, psnr(recons, images, reduction="none").tolist()
