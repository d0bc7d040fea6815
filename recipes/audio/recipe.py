"""The audio recipe: train the VQ-VAE (a WaveNet decoder over samples, or a mel decoder) -> its
vocoder (mel decoder: Griffin-Lim, or a WaveNet vocoder trained once and cached) -> encode ->
train a WaveNet prior over codes -> reconstruct, convert voices and sample from the prior ->
evaluate units and conversion -> report.

Run it with ``vqkit run audio [--preset builtin|fsdd|vctk|folder|units] [--set key=value ...]``;
the presets beside this file are small YAML files over the defaults of
:class:`AudioRecipeConfig`. The evaluation helpers (unit metrics, conversion scoring, plots) live
in ``evaluate.py`` beside this file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vqkit.audio import (
    MAX_PEAK,
    AudioError,
    MuLawEncode,
    audio_format,
    audio_info,
    read_chunks,
    save_audio,
    silence_class,
)
from vqkit.config import builder_kwargs, builder_section, ranged
from vqkit.datasets import FrameLabelCrops, SequenceCrops
from vqkit.datasets.audio import skip_file
from vqkit.datasets.utterances import Utterances, load_labelled, spread
from vqkit.errors import InputError
from vqkit.io import atomic_write, write_json
from vqkit.metrics import LN2, code_histogram
from vqkit.metrics.unit_baselines import kmeans_units, speaker_normalise, with_context
from vqkit.models import griffinlim, vqvae_audio, wavenet_prior, wavenet_vocoder
from vqkit.models.vqvae_audio import IGNORE
from vqkit.nn.conv import strides_per_stage, total_factor
from vqkit.pipeline import (
    Run,
    cache_root,
    data_fingerprint,
    load_stages,
    model_section,
    one_thread_on_cpu,
    prior_vocabulary,
    quantizer_logs,
    sampling,
)
from vqkit.train import TrainConfig

from . import evaluate as ev
from . import generate as generation

# --- config ----------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which speech. ``kind``: builtin (the festival corpus, built once into ``root`` or
    ``data/generated/speech``), fsdd (``root/recordings/{digit}_{speaker}_{n}.wav``), vctk (VCTK
    0.92 or 0.80 folders), folder (``root/<speaker>/*.wav``)."""

    kind: str = "builtin"
    root: str | None = None
    # builtin: sentences per speaker when the corpus is built
    num_sentences: int = ranged(300, ge=1)
    sample_rate: int = ranged(8000, ge=1)
    # per split, spread evenly over the files (tiny runs)
    max_files: int | None = ranged(None, ge=1)
    max_seconds: float | None = ranged(8.0, gt=0)  # longer utterances are cut to this
    # A file shorter than min_seconds, unreadable, holding NaN/inf or float samples above 1 is
    # left out with a warning and counted in metrics.json (skipped_files); strict: an error.
    min_seconds: float = ranged(0.1, ge=0)
    strict: bool = False
    # Speakers left out of training: their test utterances are converted as unseen voices (each
    # read with the statistics of their own test utterances) and scored apart.
    heldout_speakers: list[str] = field(default_factory=list)


# The model sections are the builders' arguments (the builders hold the defaults), plus the
# recipe's own keys. vqvae.features: the encoder reads the waveform ("waveform": strides over
# samples) or log-mel frames every mel_hop samples ("logmel": strides over frames; hop = mel_hop *
# prod(strides)).
VQVAEConfig = model_section(
    "VQVAEConfig",
    vqvae_audio,
    skip=("num_speakers", "sample_rate"),  # from the data
    extra={
        "speaker_conditioning": (bool, True),  # a speaker embedding in the decoder
        "crop": (int, ranged(2048, ge=1)),  # training crop in samples
        # > 0: before step 0 the codebook is set to k-means centres of this many latent rows
        # of the training split, encoded by the untrained encoder (init_codebook_from); 0: the
        # quantizer's own init (kmeans_init: the first training batch)
        "kmeans_init_rows": (int, ranged(0, ge=0)),
        # what the pseudo-labels cluster (PSEUDO_LABEL_SOURCES; pseudo_labels): "mfcc", or
        # "latents", HuBERT's second iteration: the latents of a teacher, this very model
        # trained first with the mfcc labels (cached), as the student's targets
        "pseudo_label_source": (str, "mfcc"),
        # latents: the codes of context each side of a row (the mfcc rows have 1)
        "pseudo_label_context": (int, ranged(1, ge=0)),
    },
)
PSEUDO_LABEL_SOURCES = ("mfcc", "latents")
PriorConfig = model_section(
    "PriorConfig",
    wavenet_prior,
    skip=("num_codes", "num_speakers"),
    extra={
        "speaker_conditional": (bool, True),
        # codes per training sequence (shorter utterances are masked)
        "crop": (int, ranged(128, ge=1)),
    },
)


# The vocoder of a mel decoder (vqvae.decoder=mel), its log-mel frames those of the VQ-VAE:
# kind griffinlim (no training; its builder's arguments) or wavenet (the wavenet section: the
# arguments of wavenet_vocoder, trained by teacher forcing on the true log-mel of the training
# split's real audio, crops of `crop` samples, with vocoder_train's settings; trained once per
# sample rate, mel setting, its own settings and training audio, and cached: see train_vocoder).
VOCODERS = ("griffinlim", "wavenet")
MEL = ("sample_rate", "n_mels", "mel_hop")  # from the VQ-VAE
WaveNetVocoderConfig = model_section(
    "WaveNetVocoderConfig", wavenet_vocoder, skip=MEL, extra={"crop": (int, 2048)}
)


def _check_vocoder(self) -> None:
    if self.kind not in VOCODERS:
        raise ValueError(f"kind must be one of {', '.join(VOCODERS)}, got {self.kind!r}")


VocoderConfig = builder_section(
    "VocoderConfig",
    griffinlim,
    skip=MEL,
    extra={"kind": (str, "griffinlim"), "wavenet": (WaveNetVocoderConfig, WaveNetVocoderConfig())},
    namespace={"__post_init__": _check_vocoder},
)


@dataclass
class ConvertConfig:
    """The conversion matrix and the prior samples, all decoded in one batch."""

    sources: int = ranged(3, ge=1)  # test utterances, each decoded with every target speaker
    max_targets: int | None = ranged(6, ge=1)  # target speakers (None: all training speakers)
    seconds: float = ranged(1.5, gt=0)  # longest decoded clip
    prior_samples: int = ranged(1, ge=0)  # prior samples per target speaker
    pictures: int = ranged(4, ge=0)  # sources whose cells get log-mel pictures in the report
    temperature: float = ranged(1.0, ge=0)  # 0: the most likely code at every step
    seed: int = 0


@dataclass
class EvalConfig:
    classifier_steps: int = ranged(300, ge=1)
    # samples per training crop of the classifiers
    classifier_crop: int | None = ranged(16000, ge=1)
    abx_triples: int = ranged(2000, ge=1)
    # k-means baselines (evaluate.BASELINES) scored beside the codes, fit on at most this many
    # training frames (None: all); baseline_fit_frames=0 leaves them out.
    baseline_fit_frames: int | None = ranged(100_000, ge=0)
    # k-means seeds 0..N-1 of each baseline: its figures are their mean, with the accuracy's
    # min and max beside (on the units preset the MFCC baseline spans 52.45-53.58% over 3 seeds)
    baseline_seeds: int = ranged(1, ge=1)
    max_utterances: int | None = ranged(None, ge=1)  # held-out utterances for the unit metrics
    plots: int = ranged(2, ge=0)  # codes-vs-labels plots


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
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    vocoder_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=2000, batch_size=8, lr=1e-3, grad_clip=1.0, ckpt_every=500
        )
    )
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # torch intra-op threads (None: torch's default). On a CPU shared with other jobs, 1 is often
    # several times faster than oversubscribing the cores.
    threads: int | None = ranged(None, ge=1)


CONFIG = AudioRecipeConfig
TRAIN_STAGES = ("vqvae_train", "prior_train", "vocoder_train")


# --- stages ----------------------------------------------------------------------------------


def _hops(v) -> tuple[int, int]:
    """``(samples per code, samples per frame of the encoder's input)`` of a vqvae section."""
    per = math.prod(total_factor(strides_per_stage(v.strides, 1)))
    return (v.mel_hop * per, v.mel_hop) if v.features == "logmel" else (per, per)


PSEUDO_LABEL_SEED_STEP = 1000  # set j of vqvae.pseudo_label_sets: k-means seed + j * this


def pseudo_labels(
    cfg: AudioRecipeConfig,
    train: Utterances,
    run: Run | None = None,
    speakers: list[str] | None = None,
) -> tuple[list, dict]:
    """HuBERT-style targets of the pseudo-label head (``vqvae.pseudo_label > 0``): k-means
    (``vqvae.pseudo_label_codes`` clusters) of per-code rows with one code of context each
    side, speaker-normalised, fit on at most ``eval.baseline_fit_frames`` training rows
    (100,000 when that is 0, all when None). The rows (``vqvae.pseudo_label_source``): ``mfcc``,
    the ``mfcc`` baseline's MFCCs; ``latents``, HuBERT's second iteration: the encoder latents
    of a teacher (:func:`train_teacher`, trained in ``run`` when neither these labels nor the
    teacher are cached; ``speakers``: the training speakers). ``vqvae.pseudo_label_sets`` fits
    of the same rows, set j with the k-means seed ``vqvae_train.seed + j *
    PSEUDO_LABEL_SEED_STEP`` (set 0 is the single set's labels exactly); the rows are built
    once, and only when a set is not cached.

    Returns per training utterance a ``(codes * frames per code,)`` int16 array (``(..., sets)``
    with several sets), entry f the cluster of the code window starting at frame f (every start
    frame, so crops may start on any frame: :class:`~vqkit.datasets.FrameLabelCrops`), and what
    the metrics say of the fit. Each set is kept in ``cache_root()/pseudo_labels/<key>.npz``
    (``key``: the settings, its seed and the training audio, and the teacher's settings for
    ``latents``) and reused by every run with the same."""
    v = cfg.vqvae
    if v.pseudo_label_source not in PSEUDO_LABEL_SOURCES:
        raise InputError(
            f"vqvae.pseudo_label_source must be one of {', '.join(PSEUDO_LABEL_SOURCES)}, got "
            f"{v.pseudo_label_source!r}"
        )
    hop, frame_hop = _hops(v)
    per = hop // frame_hop
    fit_frames = cfg.eval.baseline_fit_frames
    fit_frames = 100_000 if fit_frames == 0 else fit_frames  # None: every frame
    settings = {
        "codes": v.pseudo_label_codes,
        "hop": hop,
        "frame_hop": frame_hop,
        "fit_frames": fit_frames,
        "sample_rate": train.sample_rate,
        "audio": data_fingerprint(train.audio),
    }
    latents = v.pseudo_label_source == "latents"
    if latents:  # (the mfcc labels' key stays what it was)
        if speakers is None:
            raise ValueError("pseudo_label_source='latents' needs the training speakers")
        teacher_cfg = teacher_config(cfg)
        settings["source"] = "latents"
        settings["context"] = v.pseudo_label_context
        settings["teacher"] = teacher_settings(teacher_cfg, train, speakers)
    info: dict = {}
    built: list = []  # the normalised rows of every phase, once a set needs them
    teacher_s = 0.0  # pseudo_label_s: the labels' own time, the teacher's apart

    def rows() -> list:
        nonlocal info, teacher_s
        if not built:
            if latents:
                if run is None:
                    raise ValueError(
                        "pseudo_label_source='latents' needs the run to train the teacher in"
                    )
                t = time.perf_counter()
                teacher, info = train_teacher(run, teacher_cfg, train, speakers,
                                              settings["teacher"])  # fmt: skip
                teacher_s = time.perf_counter() - t
                phases = latent_rows(teacher, train, speakers, phases=per,
                                     context=v.pseudo_label_context)  # fmt: skip
            else:
                phases = ev.mfcc_rows(train, hop, frame_hop, phases=per)
            own = phases[0]
            built.extend(
                speaker_normalise(r, train.speakers, fit_feats=own, fit_speakers=train.speakers)
                for r in phases
            )
        return built

    t0 = time.perf_counter()
    n = len(train.audio)
    sets, cached = [], True
    for j in range(v.pseudo_label_sets):
        seed = cfg.vqvae_train.seed + j * PSEUDO_LABEL_SEED_STEP
        key = json.dumps({**settings, "seed": seed}, sort_keys=True).encode()
        path = cache_root() / "pseudo_labels" / f"{hashlib.sha256(key).hexdigest()[:16]}.npz"
        if path.is_file():
            with np.load(path) as stored:
                sets.append([stored[f"u{i}"] for i in range(n)])
            continue
        cached = False
        phase_rows = rows()
        codes, _ = kmeans_units(
            phase_rows[0],
            [x for phase in phase_rows for x in phase],
            num_codes=v.pseudo_label_codes,
            seed=seed,
            max_fit_frames=fit_frames,
        )
        labels = [  # entry p + per * k: phase p's code k
            np.stack([codes[p * n + i] for p in range(per)], 1).reshape(-1).astype(np.int16)
            for i in range(n)
        ]
        # a temporary file of its own, then a rename: runs fitting the same labels at once (two
        # seeds' jobs side by side) each leave a whole file
        atomic_write(path, lambda f, x=labels: np.savez(f, **{f"u{i}": a for i, a in enumerate(x)}))
        sets.append(labels)
    labels = sets[0] if len(sets) == 1 else [np.stack(u, 1) for u in zip(*sets)]
    return labels, {
        "pseudo_label_cached": cached,
        "pseudo_label_s": time.perf_counter() - t0 - teacher_s,
        **info,
    }


def teacher_config(cfg: AudioRecipeConfig) -> AudioRecipeConfig:
    """The first iteration of ``pseudo_label_source=latents``: the same config with the mfcc
    pseudo-labels."""
    out = copy.deepcopy(cfg)
    out.vqvae.pseudo_label_source = "mfcc"
    out.vqvae.pseudo_label_context = 1  # the student's alone: no other teacher for it
    return out


TRAIN_IGNORED = ("device", "num_workers", "log_every", "ckpt_every", "keep_checkpoints")


def teacher_settings(teacher_cfg: AudioRecipeConfig, train: Utterances, speakers) -> dict:
    """Everything that decides the teacher's weights (its cache key): the model's and its
    training's settings, its mfcc labels' and the data's."""
    return {
        "vqvae": dataclasses.asdict(teacher_cfg.vqvae),
        "train": {
            k: x
            for k, x in dataclasses.asdict(teacher_cfg.vqvae_train).items()
            if k not in TRAIN_IGNORED
        },
        "baseline_fit_frames": teacher_cfg.eval.baseline_fit_frames,  # of its labels
        "sample_rate": teacher_cfg.data.sample_rate,
        "speakers": list(speakers),
        "utterance_speakers": list(train.speakers),
        "audio": data_fingerprint(train.audio),
    }


def train_teacher(run: Run, teacher_cfg: AudioRecipeConfig, train, speakers, settings: dict):
    """The teacher of ``pseudo_label_source=latents``: the VQ-VAE of ``teacher_cfg`` (mfcc
    labels) trained once for ``settings`` into ``cache_root()/teacher/<key>/`` and reused
    (:meth:`Run.train_cached`); the run keeps no copy. Returns it and its figures."""
    targets, _ = pseudo_labels(teacher_cfg, train)
    build, step, crops = _vqvae_training(teacher_cfg, train, speakers, targets)
    teacher, info = run.train_cached(
        "teacher", build, step, crops, settings=settings, train_cfg=teacher_cfg.vqvae_train,
        section="vqvae", keep_copy=False,
    )  # fmt: skip
    return teacher, {
        "teacher_cached": info["cached"],
        "teacher_train_s": info["train_s"],
        "teacher_cache_dir": info["dir"],
    }


@torch.no_grad()
def latent_rows(
    model, train: Utterances, speakers: list[str], phases: int, context: int = 1
) -> list[list]:
    """The rows of ``pseudo_label_source=latents``, laid out as :func:`evaluate.mfcc_rows`'s: for
    each phase ``p`` and each utterance a ``(ceil(T / hop), (2 context + 1) D)`` array, row i the
    encoder latents of the code window starting at input frame ``p + i * frames per code`` (the
    audio shifted by ``p`` frames, its tail padded with silence) beside those of its ``context``
    neighbours each side."""
    device = next(model.parameters()).device
    hop, frame_hop = model.hop, model.mel_hop or model.hop
    pad = silence_class(model.classes)
    out = [[] for _ in range(phases)]
    for a, s in zip(train.audio, train.speakers):
        n = max(1, -(-len(a) // hop))
        for p in range(phases):
            x = a.long()[p * frame_hop :].to(device)
            x = F.pad(x, (0, n * hop - len(x)), value=pad)[None]
            z = model.encode_latents(x, speakers.index(s))[0].t()  # (n, D)
            z = z.double().cpu().numpy()
            out[p].append(with_context(z, context) if context else z)
    return out


def vqvae_build(cfg: AudioRecipeConfig, speakers: list[str], train: Utterances | None = None):
    """The VQ-VAE's builder; with ``train``, a speaker-normalising model gets each training
    speaker's log-mel statistics (without: a model for reading shapes only)."""
    v = cfg.vqvae

    def build():
        model = vqvae_audio(
            num_speakers=len(speakers) if v.speaker_conditioning else None,
            sample_rate=cfg.data.sample_rate,
            **builder_kwargs(v),
        )
        if v.crop % model.hop:
            raise InputError(f"vqvae.crop={v.crop} must be a multiple of the hop {model.hop}")
        if train is not None and model.speaker_norm:  # each training speaker's statistics
            model.set_speaker_stats(train.audio, [speakers.index(s) for s in train.speakers])
        if train is not None and v.kmeans_init_rows:
            per_step = cfg.vqvae_train.batch_size * (v.crop // model.hop)  # rows of one batch
            init_codebook_from(
                model, train, [speakers.index(s) for s in train.speakers], v.kmeans_init_rows,
                seed=cfg.vqvae_train.seed, counts_total=per_step,
            )  # fmt: skip
        return model

    return build


@torch.no_grad()
def init_codebook_from(
    model, train: Utterances, speaker_ids: list[int], rows: int, *, seed: int, counts_total: float
) -> None:
    """``vqvae.kmeans_init_rows``: the codebook of ``model`` set to k-means centres
    (:meth:`~vqkit.quantize.VectorQuantizer.init_codebook`) of ``rows`` latent rows of the
    training split, encoded by ``model`` as it is (untrained) in eval mode: whole utterances in
    an order seeded by ``seed`` until ``rows`` are reached (all of them if fewer), then ``rows``
    drawn from those uniformly. The EMA counts start at ``counts_total`` in all (one batch's
    rows), as after the first-batch init."""
    quantizer = model.quantizer
    if not hasattr(quantizer, "init_codebook"):
        raise InputError(
            f"vqvae.kmeans_init_rows={rows} needs the vq quantizer, not "
            f"{type(quantizer).__name__} (set vqvae.kmeans_init_rows=0)"
        )
    if rows < quantizer.num_codes:
        raise InputError(
            f"vqvae.kmeans_init_rows={rows} must be >= the codebook size "
            f"{quantizer.num_codes} (or 0: off)"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    latents, total = [], 0
    for i in np.random.default_rng(seed).permutation(len(train.audio)):
        z = model.encode_latents(ev._padded(model, train.audio[i], device), speaker_ids[i])
        latents.append(z[0].t().float())  # (T', D)
        total += latents[-1].shape[0]
        if total >= rows:
            break
    model.train(was_training)
    data = torch.cat(latents)
    if data.shape[0] > rows:
        gen = torch.Generator().manual_seed(seed)
        data = data[torch.randperm(data.shape[0], generator=gen)[:rows].to(data.device)]
    if data.shape[0] < quantizer.num_codes:
        raise InputError(
            f"vqvae.kmeans_init_rows: the training split has only {data.shape[0]} latent rows, "
            f"fewer than the codebook size {quantizer.num_codes}"
        )
    quantizer.init_codebook(data, counts_total=counts_total)


def check_models(run: Run, speakers: list[str]) -> None:
    """Both models built once before anything trains (:meth:`Run.trial_build`): a prior
    setting its builder refuses ends the command before the VQ-VAE has trained."""
    source = run.cfg.vqvae.pseudo_label_source
    if source not in PSEUDO_LABEL_SOURCES:
        raise InputError(
            f"vqvae.pseudo_label_source must be one of {', '.join(PSEUDO_LABEL_SOURCES)}, got "
            f"{source!r} (--set vqvae.pseudo_label_source=...)"
        )
    vqvae = run.trial_build("vqvae", vqvae_build(run.cfg, speakers))
    run.trial_build("prior", prior_build(run.cfg, len(speakers), prior_vocabulary(vqvae)))


def _vqvae_training(cfg: AudioRecipeConfig, train: Utterances, speakers: list[str], targets):
    """The VQ-VAE's builder, step and training crops (``targets``: its pseudo-labels or None)."""
    v = cfg.vqvae
    spk = [speakers.index(s) for s in train.speakers]
    build = vqvae_build(cfg, speakers, train)

    def step(model, batch):
        audio, _, speaker, *targets = batch
        out = model(audio, generation.speaker_arg(model, speaker), *targets)
        logs = {
            "recon_loss": out.recon_loss,
            "bits_per_sample": out.recon_loss / LN2,
            **quantizer_logs(out.quant),
        }
        if out.cycle_loss is not None:
            logs["cycle_loss"] = out.cycle_loss
        if out.pseudo_label_loss is not None:
            logs["pseudo_label_loss"] = out.pseudo_label_loss
        return out.loss, logs

    pad = silence_class(v.classes)
    if targets is not None:
        hop, frame_hop = _hops(v)
        if v.crop % hop:
            raise InputError(f"vqvae.crop={v.crop} must be a multiple of the hop {hop}")
        crops = FrameLabelCrops(
            train.audio, spk, targets, v.crop, frame_hop=frame_hop, per=hop // frame_hop,
            pad_value=pad, ignore=IGNORE,
        )  # fmt: skip
    else:
        crops = SequenceCrops(train.audio, spk, v.crop, pad_value=pad)
    return build, step, crops


def train_vqvae(run: Run, train: Utterances, speakers: list[str]):
    targets, info = None, {}
    if run.cfg.vqvae.pseudo_label:
        targets, info = pseudo_labels(run.cfg, train, run, speakers)
    build, step, crops = _vqvae_training(run.cfg, train, speakers, targets)
    return run.train("vqvae", build, step, crops), info


def _mel(cfg: AudioRecipeConfig, vqvae) -> dict:
    return {
        "sample_rate": cfg.data.sample_rate,
        "n_mels": vqvae.encoder.n_mels,
        "mel_hop": vqvae.mel_hop,
    }


def train_vocoder(run: Run, train: Utterances, vqvae):
    """The vocoder of a mel decoder, and what the metrics say of it. ``wavenet``: trained once
    by teacher forcing on the true log-mel of ``train``'s real audio, cached in
    ``$VQKIT_CACHE/vocoder/<key>/`` (default ``runs/.cache``; ``key`` hashes the sample rate and
    mel setting, its own and ``vocoder_train``'s settings and the training audio), reused by
    every run with the same; the run keeps a copy in ``run_dir/vocoder/``."""
    cfg = run.cfg
    kind, mel = cfg.vocoder.kind, _mel(cfg, vqvae)
    if kind == "griffinlim":
        return griffinlim(**mel, **builder_kwargs(cfg.vocoder)), {"vocoder_kind": kind}
    w = cfg.vocoder.wavenet
    if w.crop % vqvae.mel_hop:
        raise InputError(
            f"vocoder.wavenet.crop={w.crop} must be a multiple of the mel hop {vqvae.mel_hop}"
        )

    def build():
        voc = wavenet_vocoder(**mel, **builder_kwargs(w))
        hop = voc.mel_hop
        voc.fit_norm([voc.logmel(a[None, : len(a) // hop * hop].long())[0] for a in train.audio])
        return voc

    def step(voc, batch):
        loss = voc.loss(batch[0])
        return loss, {"bits_per_sample": loss / LN2}

    ignored = TRAIN_IGNORED
    settings = {
        "kind": kind,
        **mel,
        "wavenet": dataclasses.asdict(w),
        "train": {
            k: v for k, v in dataclasses.asdict(cfg.vocoder_train).items() if k not in ignored
        },
        "audio": data_fingerprint(train.audio),
    }
    crops = SequenceCrops(train.audio, [0] * len(train.audio), w.crop, pad_value=silence_class(256))
    vocoder, info = run.train_cached("vocoder", build, step, crops, settings=settings)
    return vocoder, {
        "vocoder_kind": kind,
        "vocoder_cached": info["cached"],
        "vocoder_train_s": info["train_s"],
        "vocoder_steps": info["steps"],
        "vocoder_cache_dir": info["dir"],
    }


def load_vocoder(cfg: AudioRecipeConfig, vqvae, run_dir: Path, device):
    """A finished run's vocoder (None for the WaveNet decoder)."""
    if not vqvae.is_mel:
        return None
    if cfg.vocoder.kind == "griffinlim":
        return griffinlim(**_mel(cfg, vqvae), **builder_kwargs(cfg.vocoder))
    return load_stages(run_dir, device, "vocoder")[1][0]


def prior_build(cfg: AudioRecipeConfig, num_speakers: int, num_codes: int):
    p = cfg.prior
    return lambda: wavenet_prior(
        num_codes=num_codes,
        num_speakers=num_speakers if p.speaker_conditional else None,
        **builder_kwargs(p),
    )


def train_prior(run: Run, codes, speaker_ids, num_speakers: int, num_codes: int):
    p = run.cfg.prior
    build = prior_build(run.cfg, num_speakers, num_codes)

    def step(prior, batch):
        c, mask, speaker = batch
        logits = prior(prior.shift_right(c), speaker=speaker if prior.global_classes else None)
        nll = F.cross_entropy(logits, c, reduction="none")
        loss = (nll * mask).sum() / mask.sum().clamp_min(1)
        return loss, {"nll_bits": loss / LN2}

    return run.train("prior", build, step, SequenceCrops(codes, speaker_ids, p.crop))


def run(
    cfg: AudioRecipeConfig, run_dir: Path, *, resume: bool = False, progress: bool = True
) -> dict:
    """Run every stage; returns the metrics written to ``run_dir/metrics.json``."""
    run = Run(cfg, run_dir, resume=resume, progress=progress)
    device = run.device

    with run.stage("data"):
        train, test = ev.load_split(cfg.data, "train"), ev.load_split(cfg.data, "test")
        train = ev.leave_out(train, cfg.data.heldout_speakers)
        speakers = sorted(set(train.speakers))
    check_models(run, speakers)

    with run.stage("vqvae"):
        vqvae, pseudo_label_info = train_vqvae(run, train, speakers)
    if run.main:  # once the model is built: nothing of a run is written before (Run.claim)
        write_json(run_dir / "speakers.json", speakers)

    vocoder, vocoder_metrics = None, {}
    if vqvae.is_mel:  # the WaveNet decoder renders samples itself
        with run.stage("vocoder"):
            vocoder, vocoder_metrics = train_vocoder(run, train, vqvae)

    with run.stage("encode"):
        bar = run.progress and run.main
        codes_train = ev.encode_split(vqvae, train, speakers, device, progress=bar)
        codes_test = ev.encode_split(vqvae, test, speakers, device, progress=bar)

    with run.stage("prior"):
        spk_train = [speakers.index(s) for s in train.speakers]
        prior = train_prior(run, codes_train, spk_train, len(speakers), prior_vocabulary(vqvae))
    if not run.main:  # decoding, evaluation and the report are rank 0's
        return {}

    with run.stage("decode"):
        with one_thread_on_cpu(device):
            sources = ev.pick_sources(test, speakers, cfg.convert.sources)
            unseen = sorted(set(cfg.data.heldout_speakers))
            sources += ev.pick_sources(test, unseen, cfg.convert.sources) if unseen else []
            result = generation.decode_matrix(
                vqvae,
                vocoder,
                prior,
                cfg,
                test,
                codes_test,
                sources,
                speakers,
                device,
                progress=run.progress,
            )

    with run.stage("eval"):
        metrics = {
            "num_codes": vqvae.quantizer.num_codes,
            "code_rate_hz": cfg.data.sample_rate / vqvae.hop,
            "sample_rate": cfg.data.sample_rate,
            "hop": vqvae.hop,
            "num_speakers": len(speakers),
            "train_utterances": len(train.audio),
            "test_utterances": len(test.audio),
            "skipped_files": len(train.skipped) + len(test.skipped),  # unusable, left out
            **vocoder_metrics,
            **pseudo_label_info,
        }
        metrics.update(ev.reconstruction_metrics(vqvae, test, speakers, result, device))
        metrics.update(ev.prior_metrics(prior, codes_train, codes_test, test, speakers, device))
        metrics.update(ev.speaker_probe(codes_train, train, codes_test, test, speakers, vqvae))
        metrics.update(
            ev.unit_metrics(
                codes_test,
                test,
                metrics["code_rate_hz"],
                cfg.eval,
                codebook=ev.codebook_vectors(vqvae),
                first_centre_s=ev.code_centre_s(vqvae, cfg.data.sample_rate),
            )
        )
        metrics.update(
            ev.unit_baseline_metrics(
                vqvae, train, test, speakers, metrics["code_rate_hz"], cfg.eval, device
            )
        )
        scores, verdicts = ev.conversion_metrics(
            train, test, speakers, result, cfg, device, progress=run.progress
        )
        metrics.update(scores)
        generation.write_media(
            run_dir, result, test, speakers, cfg.data.sample_rate, verdicts,
            pictures=cfg.convert.pictures,
        )  # fmt: skip
        for k, path in enumerate(
            ev.plot_codes(run_dir, codes_test, test, metrics["code_rate_hz"], cfg.eval.plots)
        ):
            run.media(
                "image", path, f"Codes of {test.ids[k]} against its labels", "Codes over time"
            )
    usage = code_histogram(torch.cat(codes_test), vqvae.quantizer.num_codes)
    skipped = [{"file": f, "reason": why} for f, why in train.skipped + test.skipped]
    return run.finish(
        metrics,
        code_usage=usage,
        lists={"skipped": skipped},
        title=f"vqkit audio run: {run_dir.name}",
    )


# --- commands on a finished run --------------------------------------------------------------


def _load(run_dir: Path, device: str, *, prior: bool = False):
    dev, models = load_stages(run_dir, device, "vqvae", *(("prior",) if prior else ()))
    speakers = json.loads((run_dir / "speakers.json").read_text())
    return dev, models[0], speakers, models[1] if prior else None


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def _source_files(sources: list[Path]) -> list[Path]:
    """The audio files named, and those in the folders named (sorted)."""
    files = []
    for src in sources:
        if src.is_dir():
            found = sorted(f for f in src.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise InputError(f"{src} holds no audio file ({', '.join(AUDIO_SUFFIXES)})")
            files += found
        elif src.is_file():
            files.append(src)
        else:
            raise FileNotFoundError(f"source audio not found: {src}")
    return files


def convert(
    cfg: AudioRecipeConfig,
    run_dir: Path,
    *,
    sources: list[Path],
    speakers: list[str],
    out: Path | None = None,
    out_dir: Path | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    device: str = "auto",
    chunk_seconds: float = 10.0,
    progress: bool = True,
    strict: bool = False,
) -> list[Path]:
    """Every source (files, or folders of them) in the voice of every speaker.

    Writes ``out_dir/<source stem>_to_<speaker>.wav`` (or ``out`` for one source and one
    speaker, in the format of its extension). Each source is read, encoded and decoded in chunks
    of ``chunk_seconds``, every target speaker of a chunk in one batch, and written as it goes:
    memory stays bounded by one chunk whatever the length of the input. An encoder normalised per
    speaker reads each source with the statistics of its first chunk. An unusable source
    (unreadable, NaN or inf, shorter than ``data.min_seconds``, float samples above 1) is
    skipped with a warning, its partial outputs removed; with ``strict`` (or a single source
    given with ``out``) every source is read through first and an unusable one is an error.

    Returns:
        The files written, source by source, speaker by speaker.
    """
    dev, vqvae, known, _ = _load(run_dir, device)
    unknown = [s for s in speakers if s not in known]
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        raise InputError(f"unknown speaker {names}; this run knows: {', '.join(known)}")
    files = _source_files(sources)
    if out is not None and (len(files) != 1 or len(speakers) != 1):
        raise InputError(
            f"--out takes one source and one speaker ({len(files)} and {len(speakers)} given); "
            "use --out-dir DIR for several"
        )
    sr, vocoder = cfg.data.sample_rate, load_vocoder(cfg, vqvae, run_dir, dev)
    temp, gen = sampling(cfg.convert, temperature, seed, dev)
    ids = torch.tensor([known.index(s) for s in speakers], device=dev)
    strict, skipped, usable = strict or out is not None, [], []
    for f in files:
        try:
            info = audio_info(f, min_seconds=cfg.data.min_seconds)
            if strict:  # every sample checked before any work (NaN, peak)
                rate = info.sample_rate
                for _ in read_chunks(f, sample_rate=rate, seconds=chunk_seconds, max_peak=MAX_PEAK):
                    pass
            usable.append((f, info))
        except AudioError as e:
            skip_file(skipped, f, e, strict=strict, where="of the sources", hint="pass --strict")
    total = sum(i.frames / i.sample_rate for _, i in usable) * len(speakers)  # seconds to do
    written = []
    with tqdm(total=round(total, 1), unit="s", desc="convert", disable=not progress) as bar:
        for f, _ in usable:
            paths = (
                [out] if out is not None else [out_dir / f"{f.stem}_to_{s}.wav" for s in speakers]
            )
            fmt, subtype = audio_format(paths[0])
            writers = [
                sf.SoundFile(str(p), "w", sr, 1, subtype, format=fmt) for p in paths
            ]  # fmt: skip
            stats, failed = None, None
            try:
                chunks = read_chunks(f, sample_rate=sr, seconds=chunk_seconds, max_peak=MAX_PEAK)
                for piece in chunks:
                    classes = MuLawEncode(vqvae.classes)(piece).to(torch.uint8)
                    if stats is None and vqvae.speaker_norm:
                        stats = vqvae.speaker_stats([classes])
                    codes = ev.encode_utterance(vqvae, classes, dev, stats=stats)
                    with one_thread_on_cpu(dev):
                        wav = generation.render(
                            vqvae, vocoder, codes.expand(len(ids), -1), ids,
                            temperature=temp, generator=gen,
                        )  # fmt: skip
                    for w, writer in zip(wav[:, : len(piece)], writers):
                        writer.write(w.numpy())
                    bar.update(round(len(piece) / sr * len(ids), 1))
            except AudioError as e:  # found part-way (NaN in a later chunk, say)
                failed = e
            finally:
                for writer in writers:
                    writer.close()
            if failed is not None:
                for p in paths:
                    p.unlink(missing_ok=True)
                skip_file(skipped, f, failed, strict=strict, where="of the sources",
                          hint="pass --strict")  # fmt: skip
                continue
            written += paths
    if skipped:
        print(f"vqkit: {len(skipped)} unusable source(s) skipped (see the warnings above)")
    return written


def sample(
    cfg: AudioRecipeConfig,
    run_dir: Path,
    *,
    out: Path | None,
    temperature: float | None,
    seed: int | None,
    device: str,
) -> Path:
    """Prior samples, one per target speaker, joined by 0.3 s of silence into one file (in the
    format of its extension)."""
    out = out or run_dir / "samples_new.wav"
    audio_format(out)  # an unknown extension is refused before any work
    dev, vqvae, speakers, prior = _load(run_dir, device, prior=True)
    c = cfg.convert
    targets = torch.tensor(generation.targets_of(speakers, c.max_targets), device=dev)
    temp, gen = sampling(c, temperature, seed, dev)
    n = max(1, int(c.seconds * cfg.data.sample_rate / vqvae.hop))
    with one_thread_on_cpu(dev):
        codes = prior.generate(
            n,
            speaker=targets if prior.global_classes else None,
            batch=len(targets),
            temperature=temp,
            generator=gen,
        )
        vocoder = load_vocoder(cfg, vqvae, run_dir, dev)
        audio = generation.render(vqvae, vocoder, codes, targets, temperature=temp, generator=gen)
    gap = torch.zeros(int(0.3 * cfg.data.sample_rate))
    wav = torch.cat([torch.cat([a, gap]) for a in audio])
    return save_audio(out, wav, cfg.data.sample_rate)


def units(
    cfg: AudioRecipeConfig,
    run_dir: Path,
    *,
    data: Path,
    max_utterances: int | None = None,
    device: str = "auto",
    baselines: bool = True,
) -> dict:
    """Unit metrics of a finished run's codes on the held-out utterances of ``data``, and
    (``baselines``) those of the k-means baselines (``evaluate.BASELINES``) beside them."""
    dev, vqvae, speakers, _ = _load(run_dir, device)
    read = dict(sample_rate=cfg.data.sample_rate, max_seconds=cfg.data.max_seconds)
    test = load_labelled(data, **read)
    limit = cfg.eval.max_utterances if max_utterances is None else max_utterances
    if limit is not None:
        test = test.subset(spread(len(test.audio), limit))
    codes = ev.encode_split(vqvae, test, speakers, dev)
    rate = cfg.data.sample_rate / vqvae.hop
    out = {"num_codes": vqvae.quantizer.num_codes, "code_rate_hz": rate, "utterances": len(codes)}
    out["skipped_files"] = len(test.skipped)  # unusable, left out with a warning each
    first = ev.code_centre_s(vqvae, cfg.data.sample_rate)
    out.update(
        ev.unit_metrics(
            codes, test, rate, cfg.eval, codebook=ev.codebook_vectors(vqvae), first_centre_s=first
        )
    )
    if baselines and cfg.eval.baseline_fit_frames != 0:  # fit on the training split of data
        try:
            train = load_labelled(data, **read, split="train")
        except InputError as e:  # e.g. a folder of test recordings only
            print(f"vqkit: no k-means baselines: they are fit on the training split ({e})")
        else:
            out.update(ev.unit_baseline_metrics(vqvae, train, test, speakers, rate, cfg.eval, dev))
            out["unit_baselines"] = ev.BASELINES
    return out
