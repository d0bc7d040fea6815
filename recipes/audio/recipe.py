"""The audio recipe: train the VQ-VAE with a WaveNet decoder -> encode -> train a WaveNet prior over
codes -> reconstruct, convert voices and sample from the prior -> evaluate units and conversion ->
report.

Run it with ``vqkit run audio [--preset builtin|fsdd|vctk|folder|units] [--set key=value ...]``;
the presets beside this file are small YAML files over the defaults of
:class:`AudioRecipeConfig`. The evaluation helpers (unit metrics, conversion scoring, plots) live
in ``evaluate.py`` beside this file.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vqkit.audio import MuLawDecode, save_audio
from vqkit.bundle import load_model
from vqkit.config import save_config
from vqkit.io import write_json
from vqkit.models import vqvae_audio, wavenet_prior
from vqkit.quantize import QuantizerConfig
from vqkit.report import build_report
from vqkit.runs import Stages, add_media
from vqkit.train import TrainConfig, fit, resolve_device, seed_everything


def _sibling(name: str):
    """Import ``<name>.py`` beside this file (recipes are loaded from their path, not a package)."""
    module_name = f"vqkit_recipe_audio_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            module_name, Path(__file__).with_name(f"{name}.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


ev = _sibling("evaluate")
generation = _sibling("generate")
LN2 = math.log(2)


# --- config ----------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which speech. ``kind``: builtin (the festival corpus, built once into ``root`` or
    ``data/generated/speech``), fsdd (``root/recordings/{digit}_{speaker}_{n}.wav``), vctk (VCTK
    0.92 or 0.80 folders), folder (``root/<speaker>/*.wav``)."""

    kind: str = "builtin"
    root: str | None = None
    num_sentences: int = 300  # builtin: sentences per speaker when the corpus is built
    sample_rate: int = 8000
    max_files: int | None = None  # per split, spread evenly over the files (tiny runs)
    max_seconds: float | None = 8.0  # longer utterances are cut to this


@dataclass
class VQVAEConfig:
    # features: the encoder reads the waveform ("waveform": strides over samples) or log-mel
    # frames every mel_hop samples ("logmel": strides over frames; hop = mel_hop * prod(strides))
    features: str = "waveform"
    mel_hop: int = 80
    n_mels: int = 40
    jitter: float = 0.0  # time-jitter probability of the codes while training (0: off)
    strides: list[int] = field(default_factory=lambda: [2] * 8)  # hop 256: 31.25 Hz at 8 kHz
    hidden: int = 64
    res_hidden: int = 32
    num_res_blocks: int = 2
    num_codes: int = 128
    code_dim: int = 64
    residual_channels: int = 32
    skip_channels: int | None = 32  # None: 2 * residual_channels
    kernel_size: int = 2
    layers_per_stack: int = 8
    stacks: int = 1
    upsample: str = "repeat"
    speaker_conditioning: bool = True
    crop: int = 2048  # training crop in samples
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)


@dataclass
class PriorConfig:
    residual_channels: int = 64
    layers_per_stack: int = 6
    stacks: int = 2
    speaker_conditional: bool = True
    crop: int = 128  # codes per training sequence (shorter utterances are masked)


@dataclass
class ConvertConfig:
    """The conversion matrix and the prior samples, all decoded in one batch."""

    sources: int = 3  # test utterances, each decoded with every target speaker
    max_targets: int | None = 6  # target speakers (None: all training speakers)
    seconds: float = 1.5  # longest decoded clip
    prior_samples: int = 1  # prior samples per target speaker
    temperature: float = 1.0
    seed: int = 0


@dataclass
class EvalConfig:
    classifier_steps: int = 300
    classifier_crop: int | None = 16000  # samples per training crop of the classifiers
    abx_triples: int = 2000
    max_utterances: int | None = None  # held-out utterances for the unit metrics
    plots: int = 2  # codes-vs-labels plots


@dataclass
class AudioRecipeConfig:
    modality: str = "audio"
    data: DataConfig = field(default_factory=DataConfig)
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    vqvae_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=800, batch_size=8, lr=1e-3, grad_clip=1.0, ckpt_every=400
        )
    )
    prior: PriorConfig = field(default_factory=PriorConfig)
    prior_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=300, batch_size=16, lr=1e-3, ckpt_every=300)
    )
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # torch intra-op threads (None: torch's default). On a CPU shared with other jobs, 1 is often
    # several times faster than oversubscribing the cores.
    threads: int | None = None


CONFIG = AudioRecipeConfig
TRAIN_STAGES = ("vqvae_train", "prior_train")


# --- data sets for the two training stages ---------------------------------------------------


class AudioCrops(Dataset):
    """Random crops of mu-law utterances: ``(classes (crop,) int64, speaker id)``; utterances
    shorter than the crop are padded with silence (class ``classes // 2``)."""

    def __init__(self, audio: list[torch.Tensor], speakers: list[int], crop: int) -> None:
        self.audio, self.speakers, self.crop = audio, speakers, crop

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.audio[i].long()
        if len(x) < self.crop:
            return F.pad(x, (0, self.crop - len(x)), value=128), self.speakers[i]
        start = int(torch.randint(len(x) - self.crop + 1, (1,)))
        return x[start : start + self.crop], self.speakers[i]


class CodeCrops(Dataset):
    """Random crops of code sequences: ``(codes (crop,), mask (crop,), speaker id)``; the mask
    is False on padding, which the loss leaves out."""

    def __init__(self, codes: list[torch.Tensor], speakers: list[int], crop: int) -> None:
        self.codes, self.speakers, self.crop = codes, speakers, crop

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        c = self.codes[i]
        mask = torch.ones(self.crop, dtype=torch.bool)
        if len(c) < self.crop:
            mask[len(c) :] = False
            return F.pad(c, (0, self.crop - len(c))), mask, self.speakers[i]
        start = int(torch.randint(len(c) - self.crop + 1, (1,)))
        return c[start : start + self.crop], mask, self.speakers[i]


# --- stages ----------------------------------------------------------------------------------


def build_vqvae(cfg: AudioRecipeConfig, num_speakers: int):
    v, q = cfg.vqvae, cfg.vqvae.quantizer
    return vqvae_audio(
        num_speakers=num_speakers if v.speaker_conditioning else None,
        strides=list(v.strides),
        hidden=v.hidden,
        res_hidden=v.res_hidden,
        num_res_blocks=v.num_res_blocks,
        num_codes=v.num_codes,
        code_dim=v.code_dim,
        residual_channels=v.residual_channels,
        skip_channels=v.skip_channels,
        kernel_size=v.kernel_size,
        layers_per_stack=v.layers_per_stack,
        stacks=v.stacks,
        upsample=v.upsample,
        features=v.features,
        sample_rate=cfg.data.sample_rate,
        mel_hop=v.mel_hop,
        n_mels=v.n_mels,
        jitter=v.jitter,
        quantizer=q.kwargs(),
    )


def train_vqvae(cfg, train: ev.Split, speakers: list[str], run_dir, *, resume, progress):
    # Torch seeds every new process at random: seed the initial weights.
    seed_everything(cfg.vqvae_train.seed)
    model = build_vqvae(cfg, len(speakers))
    crop = cfg.vqvae.crop
    if crop % model.hop:
        raise ValueError(f"vqvae.crop={crop} must be a multiple of the hop {model.hop}")
    spk = [speakers.index(s) for s in train.speakers]

    def step(model, batch):
        audio, speaker = batch
        out = model(audio, generation.speaker_arg(model, speaker))
        return out.loss, {
            "recon_loss": out.recon_loss,
            "bits_per_sample": out.recon_loss / LN2,
            "vq_loss": out.quant.loss,
            "perplexity": out.quant.perplexity,
            "usage": out.quant.usage,
        }

    dataset = AudioCrops(train.audio, spk, crop)
    result = fit(
        model,
        step,
        dataset,
        cfg=cfg.vqvae_train,
        run_dir=run_dir,
        name="vqvae",
        resume=resume,
        progress=progress,
    )
    return model.eval(), result


def train_prior(cfg, codes, speaker_ids, num_speakers, num_codes, run_dir, *, resume, progress):
    p = cfg.prior
    # Torch seeds every new process at random: seed the initial weights.
    seed_everything(cfg.prior_train.seed)
    prior = wavenet_prior(
        num_codes=num_codes,
        num_speakers=num_speakers if p.speaker_conditional else None,
        residual_channels=p.residual_channels,
        layers_per_stack=p.layers_per_stack,
        stacks=p.stacks,
    )

    def step(prior, batch):
        c, mask, speaker = batch
        logits = prior(prior.shift_right(c), speaker=speaker if prior.global_classes else None)
        nll = F.cross_entropy(logits, c, reduction="none")
        loss = (nll * mask).sum() / mask.sum().clamp_min(1)
        return loss, {"nll_bits": loss / LN2}

    dataset = CodeCrops(codes, speaker_ids, p.crop)
    result = fit(
        prior,
        step,
        dataset,
        cfg=cfg.prior_train,
        run_dir=run_dir,
        name="prior",
        resume=resume,
        progress=progress,
    )
    return prior.eval(), result


def run(
    cfg: AudioRecipeConfig, run_dir: Path, *, resume: bool = False, progress: bool = True
) -> dict:
    """Run every stage; returns the metrics written to ``run_dir/metrics.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    device = resolve_device(cfg.vqvae_train.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    stages = Stages()

    with stages("data"):
        train, test = ev.load_split(cfg.data, "train"), ev.load_split(cfg.data, "test")
        speakers = sorted(set(train.speakers))
        write_json(run_dir / "speakers.json", speakers)

    with stages("vqvae"):
        vqvae, vq_result = train_vqvae(
            cfg, train, speakers, run_dir, resume=resume, progress=progress
        )

    with stages("encode"):
        codes_train = [ev.encode_utterance(vqvae, a, device).cpu() for a in train.audio]
        codes_test = [ev.encode_utterance(vqvae, a, device).cpu() for a in test.audio]

    with stages("prior"):
        spk_train = [speakers.index(s) for s in train.speakers]
        prior, prior_result = train_prior(
            cfg,
            codes_train,
            spk_train,
            len(speakers),
            vqvae.quantizer.num_codes,
            run_dir,
            resume=resume,
            progress=progress,
        )

    with stages("decode"):
        with generation.one_thread_on_cpu(device):
            sources = ev.pick_sources(test, speakers, cfg.convert.sources)
            result = generation.decode_matrix(
                vqvae, prior, cfg, test, codes_test, sources, speakers, device
            )
        generation.write_media(run_dir, result, test, speakers, cfg.data.sample_rate)

    with stages("eval"):
        metrics = {
            "num_codes": vqvae.quantizer.num_codes,
            "code_rate_hz": cfg.data.sample_rate / vqvae.hop,
            "sample_rate": cfg.data.sample_rate,
            "hop": vqvae.hop,
            "num_speakers": len(speakers),
            "train_utterances": len(train.audio),
            "test_utterances": len(test.audio),
        }
        metrics.update(ev.reconstruction_metrics(vqvae, test, speakers, result, device))
        metrics.update(ev.prior_metrics(prior, codes_train, codes_test, test, speakers, device))
        metrics.update(
            ev.unit_metrics(
                codes_test,
                test,
                metrics["code_rate_hz"],
                cfg.eval,
                codebook=ev.codebook_vectors(vqvae),
            )
        )
        metrics.update(ev.conversion_metrics(train, test, speakers, result, cfg, device))
        for k, path in enumerate(
            ev.plot_codes(run_dir, codes_test, test, metrics["code_rate_hz"], cfg.eval.plots)
        ):
            add_media(
                run_dir,
                "image",
                path,
                f"Codes of {test.ids[k]} against its labels",
                "Codes over time",
            )
        write_json(
            run_dir / "code_usage.json",
            torch.bincount(torch.cat(codes_test), minlength=vqvae.quantizer.num_codes).tolist(),
        )

    metrics.update(stages.summary(device, vqvae=vq_result, prior=prior_result))
    write_json(run_dir / "metrics.json", metrics)
    build_report(run_dir, title=f"vqkit audio run: {run_dir.name}")
    return metrics


# --- commands on a finished run --------------------------------------------------------------


def _load(run_dir: Path, device: str, *, prior: bool = False):
    dev = resolve_device(device)
    vqvae = load_model(run_dir / "vqvae" / "ckpt", device=dev).eval()
    speakers = json.loads((run_dir / "speakers.json").read_text())
    p = load_model(run_dir / "prior" / "ckpt", device=dev).eval() if prior else None
    return dev, vqvae, speakers, p


def convert(
    cfg: AudioRecipeConfig,
    run_dir: Path,
    *,
    source: Path,
    speaker: str,
    out: Path,
    temperature: float | None = None,
    seed: int | None = None,
    device: str = "auto",
) -> Path:
    """Decode ``source``'s codes with ``speaker``'s voice into ``out`` (a WAV file)."""
    dev, vqvae, speakers, _ = _load(run_dir, device)
    if speaker not in speakers:
        raise ValueError(f"unknown speaker {speaker!r}; this run knows: {', '.join(speakers)}")
    audio = ev.load_classes(source, cfg.data.sample_rate, None)
    codes = ev.encode_utterance(vqvae, audio, dev)[None]
    spk = torch.tensor([speakers.index(speaker)], device=dev)
    gen = torch.Generator(device=dev).manual_seed(cfg.convert.seed if seed is None else seed)
    temp = cfg.convert.temperature if temperature is None else temperature
    with generation.one_thread_on_cpu(dev):
        out_classes = vqvae.decode(
            codes, generation.speaker_arg(vqvae, spk), temperature=temp, generator=gen
        )
    return save_audio(
        out, MuLawDecode(256)(out_classes[0, : len(audio)].cpu()), cfg.data.sample_rate
    )


def sample(
    cfg: AudioRecipeConfig,
    run_dir: Path,
    *,
    out: Path | None,
    temperature: float | None,
    seed: int | None,
    device: str,
) -> Path:
    """Prior samples, one per target speaker, joined by 0.3 s of silence into one WAV."""
    dev, vqvae, speakers, prior = _load(run_dir, device, prior=True)
    c = cfg.convert
    targets = torch.tensor(generation.targets_of(speakers, c.max_targets), device=dev)
    gen = torch.Generator(device=dev).manual_seed(c.seed if seed is None else seed)
    temp = c.temperature if temperature is None else temperature
    n = max(1, int(c.seconds * cfg.data.sample_rate / vqvae.hop))
    with generation.one_thread_on_cpu(dev):
        codes = prior.generate(
            n,
            speaker=targets if prior.global_classes else None,
            batch=len(targets),
            temperature=temp,
            generator=gen,
        )
        audio = vqvae.decode(
            codes, generation.speaker_arg(vqvae, targets), temperature=temp, generator=gen
        )
    gap = torch.zeros(int(0.3 * cfg.data.sample_rate))
    wav = torch.cat([torch.cat([MuLawDecode(256)(a.cpu()), gap]) for a in audio])
    return save_audio(out or run_dir / "samples_new.wav", wav, cfg.data.sample_rate)


def units(
    cfg: AudioRecipeConfig,
    run_dir: Path,
    *,
    data: Path,
    max_utterances: int | None = None,
    device: str = "auto",
) -> dict:
    """Unit metrics of a finished run's codes on the held-out utterances of ``data``."""
    dev, vqvae, _, _ = _load(run_dir, device)
    test = ev.load_labelled(data, cfg.data)
    limit = cfg.eval.max_utterances if max_utterances is None else max_utterances
    if limit is not None:
        test = test.subset(ev.spread(len(test.audio), limit))
    codes = [ev.encode_utterance(vqvae, a, dev).cpu() for a in test.audio]
    rate = cfg.data.sample_rate / vqvae.hop
    out = {"num_codes": vqvae.quantizer.num_codes, "code_rate_hz": rate, "utterances": len(codes)}
    out.update(ev.unit_metrics(codes, test, rate, cfg.eval, codebook=ev.codebook_vectors(vqvae)))
    return out
