"""The stages every recipe shares: the run context, training a stage, loading a finished run,
sampling settings, single-threaded generation and codebook figures.

A recipe (``recipes/<modality>/recipe.py``) owns only its step functions, evaluation, media and
presets; everything a second modality would write again lives here::

    run = Run(cfg, run_dir, resume=resume, progress=progress)  # checks cfg, writes nothing
    with run.stage("vqvae"):
        vqvae = run.train("vqvae", lambda: vqvae_image(**builder_kwargs(cfg.vqvae)), step, data)
    ...
    if not run.main:  # evaluation, media and the report are rank 0's
        return {}
    return run.finish(metrics, code_usage=hist)  # metrics.json, code_usage.json, report.html

Model sections of a recipe config are derived from the builders' signatures
(:func:`model_section`), so a builder is the one source of its defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vqkit.bundle import load_model
from vqkit.config import ConfigError, builder_section, save_config
from vqkit.distributed import is_main, rank, rank_device, world
from vqkit.errors import InputError
from vqkit.io import LATEST, TRAINER, atomic_write_bytes, latest_checkpoint, write_json
from vqkit.metrics import code_histogram, perplexity, unigram_bits, usage
from vqkit.models.vqvae import QUANTIZER_DEFAULTS
from vqkit.quantize import KINDS as QUANTIZER_KINDS
from vqkit.quantize import QuantizerOutput, VectorQuantizer
from vqkit.quantize.factory import OPTIONS as QUANTIZER_OPTIONS
from vqkit.report import build_report
from vqkit.runs import add_media
from vqkit.train import TrainConfig, fit, resolve_device, seed_everything
from vqkit.train.device import get_rng_state, set_rng_state

__all__ = [
    "QuantizerConfig",
    "Run",
    "Stages",
    "cache_root",
    "check_run_config",
    "codebook_metrics",
    "data_fingerprint",
    "load_stages",
    "model_section",
    "one_thread_on_cpu",
    "prior_vocabulary",
    "quantizer_logs",
    "sampling",
    "vqvae_step",
]


def _check_kind(self) -> None:
    if self.kind not in QUANTIZER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(QUANTIZER_KINDS)}, got {self.kind!r}")


def _quantizer_arg(self) -> dict[str, Any]:
    """The builders' ``quantizer=`` dict: ``kind`` and the options that apply to it. ``vq`` and
    ``residual`` take every VectorQuantizer option of the section; the other kinds take only
    those set away from the section's defaults (their own defaults hold otherwise). An option
    set for a kind that has no such option is an error naming both."""
    allowed, defaults, out = QUANTIZER_OPTIONS[self.kind], type(self)(), {"kind": self.kind}
    for f in dataclasses.fields(self):
        value, default = getattr(self, f.name), getattr(defaults, f.name)
        if f.name == "kind" or (f.name in allowed and value is None and default is None):
            continue
        if f.name in allowed and (self.kind in ("vq", "residual") or value != default):
            out[f.name] = value
        elif f.name not in allowed and value != default:
            raise ConfigError(
                f"quantizer.{f.name}={value!r} does not apply to quantizer.kind={self.kind!r}; "
                f"it takes {', '.join(sorted(allowed))} (set it back to the default with --set "
                f"vqvae.quantizer.{f.name}={json.dumps(default)})"
            )
    return out


QuantizerConfig = builder_section(
    "QuantizerConfig",
    VectorQuantizer,
    skip=("num_codes", "dim"),
    defaults=QUANTIZER_DEFAULTS,
    extra={
        # vq | fsq | lfq | simvq | residual (vqkit.quantize.build_quantizer)
        "kind": (str, "vq"),
        # fsq: steps per channel, e.g. [8, 5, 5, 5]; residual: the number of stages
        "levels": (list[int] | int | None, None),
        # lfq's entropy term and code scale (None: LFQ's defaults)
        "entropy_weight": (float | None, None),
        "diversity_gamma": (float | None, None),
        "inv_temperature": (float | None, None),
        "codebook_scale": (float | None, None),
    },
    namespace={"__post_init__": _check_kind, "as_builder_arg": _quantizer_arg},
)
"""``vqvae.quantizer``: ``kind`` (``vq`` by default) and its options: the
:class:`~vqkit.quantize.VectorQuantizer` arguments with the VQ-VAE builders'
:data:`~vqkit.models.vqvae.QUANTIZER_DEFAULTS`, and the other kinds' (``levels``, LFQ's)."""


def prior_vocabulary(vqvae: nn.Module) -> int:
    """The number of codes a prior over ``vqvae``'s codes predicts: one code per position.

    Raises:
        InputError: the quantizer gives several codes per position (residual VQ, heads > 1),
            which no prior of vqkit models yet.
    """
    q = vqvae.quantizer
    if isinstance(getattr(q, "levels", None), nn.ModuleList) or getattr(q, "heads", 1) > 1:
        raise InputError(
            "the priors model one code per position; this quantizer gives several (residual VQ "
            "or heads > 1): set vqvae.quantizer.kind to vq, fsq, lfq or simvq (heads 1)"
        )
    return q.num_codes


CACHE_ENV = "VQKIT_CACHE"


def cache_root() -> Path:
    """Where stages trained once for their settings are kept (:meth:`Run.train_cached`):
    ``$VQKIT_CACHE``, else ``runs/.cache`` under the working directory."""
    return Path(os.environ.get(CACHE_ENV) or "runs/.cache")


def data_fingerprint(items: Sequence[Tensor]) -> str:
    """A sha256 of tensors' shapes, dtypes and values: which data a cached stage saw."""
    digest = hashlib.sha256()
    for x in items:
        digest.update(f"{tuple(x.shape)} {x.dtype};".encode())
        digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_section(
    name: str,
    builder: Callable[..., nn.Module],
    *,
    skip: Sequence[str] = (),
    extra: Mapping[str, tuple[Any, Any]] | None = None,
) -> type:
    """A recipe's config section for ``builder``: its keyword arguments (less ``skip``, which
    the recipe sets from the data) plus the recipe's own ``extra`` keys; a ``quantizer``
    argument becomes a :data:`QuantizerConfig` sub-section."""
    return builder_section(
        name, builder, skip=skip, extra=extra, nested={"quantizer": QuantizerConfig}
    )


class Stages:
    """Times a recipe's stages and gives the run-level figures of ``metrics.json``.

    Example:
        >>> stages = Stages()
        >>> with stages("vqvae"):
        ...     pass  # train
        >>> sorted(stages.times)
        ['time_vqvae_s']
    """

    def __init__(self) -> None:
        self.t_start, self.cpu_start = time.perf_counter(), time.process_time()
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"time_{name}_s"] = time.perf_counter() - t

    def summary(self, device: Any, **fits: Any) -> dict[str, Any]:
        """Steps of each fit (``vqvae=result`` gives ``vqvae_steps``), skipped steps, device,
        threads, stage times, wall and CPU time."""
        out: dict[str, Any] = {f"{name}_steps": r.step for name, r in fits.items()}
        out.update(
            skipped_steps=sum(r.skipped_steps for r in fits.values()),
            device=str(device),
            torch_threads=torch.get_num_threads(),
            **self.times,
            wall_time_s=time.perf_counter() - self.t_start,
            cpu_time_s=time.process_time() - self.cpu_start,
        )
        return out


def check_run_config(cfg: Any) -> None:
    """Checks of a recipe config beyond its fields' own ranges (:func:`~vqkit.config.ranged`,
    checked as the config is read), each naming the key: every ``*.quantizer.beta >= 0``, and
    every training stage's device (resolved here, so a bad one is refused before anything is
    written).

    Raises:
        ConfigError: a value out of range; InputError: an unknown or unavailable device.
    """
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        quantizer = getattr(section, "quantizer", None)
        beta = getattr(quantizer, "beta", None)
        if beta is not None and not beta >= 0:
            key = f"{f.name}.quantizer.beta"
            raise ConfigError(f"config key {key!r} must be >= 0, got {beta} (--set {key}=...)")
        if isinstance(section, TrainConfig):
            resolve_device(section.device)


class Run:
    """One ``vqkit run``: the run directory, the device, the stage timer and the trained stages.

    Under torchrun every rank trains; rank 0 alone (``run.main``) writes ``config.yaml``,
    ``metrics.json``, media and the report. Nothing is written before the first stage's model
    is built (:meth:`claim`): bad data or a bad model size leave no run directory.

    Args:
        cfg: the recipe config; ``cfg.vqvae_train.device`` picks the device (each rank takes
            its own GPU) and an optional ``cfg.threads`` sets torch's intra-op threads.
        run_dir: the run directory.
        resume: continue each stage from its latest checkpoint.
        progress: show progress bars.
    """

    def __init__(self, cfg: Any, run_dir: Path, *, resume: bool = False, progress: bool = True):
        self.cfg, self.dir, self.resume, self.progress = cfg, Path(run_dir), resume, progress
        self.main = is_main()
        # Every input is checked before config.yaml is written (claim()): a failed start
        # leaves no run.
        check_run_config(cfg)
        self.device = rank_device(resolve_device(cfg.vqvae_train.device))
        threads = getattr(cfg, "threads", None)
        if threads is not None:
            torch.set_num_threads(threads)
        self._claimed = False
        self.stages = Stages()
        self.fits: dict[str, Any] = {}

    def claim(self) -> None:
        """Create the run directory and write ``config.yaml`` (rank 0, once): called before
        the first file of the run is written, so the data and the first model's build are
        checked first, and a run that fails there leaves nothing behind."""
        if self.main and not self._claimed:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.dir / "config.yaml")
        self._claimed = True

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage, announcing it and its duration on every process that runs it."""
        who = f"rank {rank()}: " if world() > 1 else ""
        print(f"vqkit: {who}stage {name}", flush=True)
        with self.stages(name):
            yield
        print(f"vqkit: {who}stage {name} done in {self.stages.times[f'time_{name}_s']:.1f} s")

    def train(
        self,
        name: str,
        build: Callable[[], nn.Module],
        step: Callable,
        dataset: Dataset,
        *,
        image_fn: Callable | None = None,
        section: str | None = None,
    ) -> nn.Module:
        """Seed, build and :func:`~vqkit.train.fit` the stage ``name`` (its settings are
        ``cfg.<name>_train``; checkpoints in ``run_dir/<name>/``); returns it in eval mode.

        ``section``: the dotted config key of the builder's arguments, named when the builder
        refuses one (default ``name``; e.g. ``prior.maskgit`` for a prior of that kind)."""
        train_cfg = getattr(self.cfg, f"{name}_train")
        model = self._build(name, build, train_cfg.seed, section)
        self.claim()
        self.fits[name] = fit(
            model,
            step,
            dataset,
            cfg=train_cfg,
            run_dir=self.dir,
            name=name,
            resume=self.resume,
            image_fn=image_fn,
            progress=self.progress,
        )
        return model.eval()

    def trial_build(
        self, name: str, build: Callable[[], nn.Module], section: str | None = None
    ) -> nn.Module:
        """Build stage ``name`` once before anything trains, so that a setting its builder
        refuses (say a prior's size) ends the command before the run directory is claimed,
        not after the stages before it have trained. Every random generator is left as it was;
        the model is for reading its shape (codes, grid), not for training."""
        state = get_rng_state()
        try:
            return self._build(name, build, getattr(self.cfg, f"{name}_train").seed, section)
        finally:
            set_rng_state(state)

    def _build(
        self, name: str, build: Callable[[], nn.Module], seed: int, section: str | None = None
    ) -> nn.Module:
        """``build()`` with seeded initial weights; a builder's refusal of an argument becomes
        a ConfigError naming the key of ``section`` (dotted; default: the stage's name)."""
        # Torch seeds every new process at random: seed the initial weights.
        seed_everything(seed)
        try:
            return build()
        except ValueError as e:  # a builder's check of an argument the config gave it
            key, _, rest = str(e).partition(" ")
            path = section or name
            found = self.cfg
            for part in path.split("."):
                found = getattr(found, part, None)
            sub = getattr(found, key, None)
            if dataclasses.is_dataclass(sub):  # a nested section: vqvae.quantizer
                raise ConfigError(
                    f"{path}.{key}: {rest} (change it with --set {path}.{key}.<key>=<value>)"
                ) from e
            if key in getattr(type(found), "__builder_params__", ()):
                raise ConfigError(
                    f"config key '{path}.{key}' {rest} (--set {path}.{key}=...)"
                ) from e
            hint = "" if "--set" in str(e) else f" (change it with --set {path}.<key>=<value>)"
            raise ConfigError(f"{path}: {e}{hint}") from e

    def train_cached(
        self,
        name: str,
        build: Callable[[], nn.Module],
        step: Callable,
        dataset: Dataset,
        *,
        settings: Mapping[str, Any],
        train_cfg: TrainConfig | None = None,
        section: str | None = None,
        keep_copy: bool = True,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Stage ``name`` trained once for ``settings`` and reused by every run with the same.

        ``train_cfg``: its training settings (default ``cfg.<name>_train``); ``section``: the
        config key of its builder's arguments (as in :meth:`train`); ``keep_copy=False``: the run
        keeps no copy of the weights (a stage only an earlier stage of the run needs).

        ``settings`` (JSON data) must hold everything that decides the weights: the model's and
        ``cfg.<name>_train``'s settings and the data (e.g. :func:`data_fingerprint`). The stage
        trains in ``cache_root()/<name>/<key>/`` (``key``: 16 hex digits of the settings'
        sha256) beside a ``settings.json``, continues there from its last checkpoint when a run
        stopped mid-way, and is loaded from there once ``complete.json`` says it finished. The
        run keeps a copy of the final weights in ``run_dir/<name>/ckpt`` (self-contained for
        ``vqkit convert`` and bundles).

        Returns:
            The model in eval mode and ``{"cached": reused or not, "dir": the cache folder,
            "train_s": its training time, "steps"}``.

        Raises:
            InputError: the folder of the key holds a stage trained for other settings.
        """
        settings = json.loads(json.dumps(settings))  # as settings.json holds them
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        where = cache_root() / name / key
        stored_file, done_file = where / "settings.json", where / "complete.json"
        if stored_file.is_file():
            stored = json.loads(stored_file.read_text())
            if stored != settings:
                differ = sorted(
                    k for k in stored.keys() | settings.keys() if stored.get(k) != settings.get(k)
                )
                raise InputError(
                    f"{where} holds a {name} trained for other settings ({', '.join(differ)} "
                    f"differ); delete that folder, or set {CACHE_ENV} to another one"
                )
        if done_file.is_file():
            info = {"cached": True, "dir": str(where), **json.loads(done_file.read_text())}
            print(
                f"vqkit: {name}: reusing the one cached in {where}, trained for these settings "
                f"({info['steps']} steps, {info['train_s']:.0f} s)",
                flush=True,
            )
            model = load_model(where / "ckpt", device=self.device)
        else:
            partial = stored_file.is_file()
            print(
                f"vqkit: {name}: "
                + ("continuing the training cached in" if partial else "training it once into")
                + f" {where}; later runs with these settings reuse it",
                flush=True,
            )
            if self.main:
                where.mkdir(parents=True, exist_ok=True)
                write_json(stored_file, settings)
            train_cfg = train_cfg or getattr(self.cfg, f"{name}_train")
            model = self._build(name, build, train_cfg.seed, section)
            result = fit(
                model,
                step,
                dataset,
                cfg=train_cfg,
                run_dir=where.parent,
                name=where.name,
                resume=partial,
                progress=self.progress,
            )
            self.fits[name] = result
            info = {"cached": False, "dir": str(where), "steps": result.step}
            info["train_s"] = result.wall_time
            if self.main:
                write_json(done_file, {"steps": result.step, "train_s": result.wall_time})
        self.claim()
        if self.main and keep_copy:  # the run's own copy of the final weights (as run.train)
            final = latest_checkpoint(where / "ckpt")
            root = self.dir / name / "ckpt"
            shutil.copytree(
                final, root / final.name, dirs_exist_ok=True, ignore=shutil.ignore_patterns(TRAINER)
            )
            atomic_write_bytes(root / LATEST, f"{final.name}\n".encode())
        return model.eval(), info

    def media(self, kind: str, path: str, title: str, group: str) -> None:
        """Record a media file of the run (relative to its directory) for the report."""
        self.claim()
        add_media(self.dir, kind, path, title, group)

    def finish(
        self,
        metrics: dict[str, Any],
        *,
        code_usage: Tensor | None = None,
        lists: Mapping[str, Any] | None = None,
        title: str | None = None,
    ) -> dict[str, Any]:
        """Add the run-level figures, write ``metrics.json`` (with ``lists``, per-frame or
        per-horizon series kept out of the returned dict), ``code_usage.json`` and the
        report; returns the metrics."""
        self.claim()
        metrics.update(self.stages.summary(self.device, **self.fits))
        write_json(self.dir / "metrics.json", {**metrics, **(lists or {})})
        if code_usage is not None:
            write_json(self.dir / "code_usage.json", code_usage.tolist())
        build_report(self.dir, title=title)
        return metrics


def quantizer_logs(quant: QuantizerOutput) -> dict[str, Tensor]:
    """What a training step logs of its quantizer: the loss, and the batch's perplexity, code
    usage and reachable usage (of every level of a residual VQ as well)."""
    logs = {"vq_loss": quant.loss, "perplexity": quant.perplexity, "usage": quant.usage}
    if quant.reachable_usage is not None:
        logs["reachable_usage"] = quant.reachable_usage
    if quant.level_perplexity is not None:
        for i, (p, u) in enumerate(zip(quant.level_perplexity, quant.level_usage)):
            logs[f"perplexity_level{i}"], logs[f"usage_level{i}"] = p, u
            if quant.level_reachable_usage is not None:
                logs[f"reachable_usage_level{i}"] = quant.level_reachable_usage[i]
    return logs


def vqvae_step(recon_scale: float, prepare: Callable[[Tensor], Tensor]) -> Callable:
    """The training step of a VQ-VAE over data batches ``(x, label)``: ``recon_scale *
    reconstruction loss + quantizer loss``, logging the terms and the codebook's batch health.

    Args:
        recon_scale: weight of the reconstruction term (``1 / data variance``: Sonnet's recipe,
            so the quantizer's beta keeps its meaning whatever the scale of the data).
        prepare: the batch's data -> the model's input (e.g. :func:`~vqkit.models.to_model`).
    """

    def step(model: nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(prepare(batch[0]))
        loss = recon_scale * out.recon_loss + out.quant.loss
        return loss, {"recon_loss": out.recon_loss, **quantizer_logs(out.quant)}

    return step


def load_stages(run_dir: Path, device: str, *names: str) -> tuple[torch.device, list[nn.Module]]:
    """The device and the trained models of a finished run's stages, in eval mode."""
    dev = resolve_device(device)
    return dev, [load_model(Path(run_dir) / name / "ckpt", device=dev).eval() for name in names]


def sampling(
    section: Any, temperature: float | None, seed: int | None, device: torch.device, offset=0
) -> tuple[float, torch.Generator]:
    """The temperature and a seeded generator: the command's values, else the run's
    ``section.temperature`` and ``section.seed`` (``offset`` is added to the seed)."""
    temp = section.temperature if temperature is None else temperature
    gen = torch.Generator(device=device).manual_seed(
        (section.seed if seed is None else seed) + offset
    )
    return temp, gen


@contextlib.contextmanager
def one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Generation on a CPU runs single-threaded: its per-step ops are too small to split, and
    splitting them costs more than it saves (many times more on a busy machine)."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def codebook_metrics(
    codes_train: Tensor | Sequence[Tensor], codes_test: Tensor | Sequence[Tensor], num_codes: int
) -> tuple[dict[str, Any], Tensor]:
    """Codebook health on the test codes and the unigram baseline for a prior's NLL.

    Returns:
        ``({"num_codes", "log2_num_codes", "unigram_bits_per_code", "test_perplexity",
        "test_usage"}, histogram (K,))``; lists of per-utterance codes are joined.
    """
    if not isinstance(codes_train, Tensor):
        codes_train = torch.cat([c.flatten() for c in codes_train])
    if not isinstance(codes_test, Tensor):
        codes_test = torch.cat([c.flatten() for c in codes_test])
    hist = code_histogram(codes_test, num_codes)
    return {
        "num_codes": num_codes,
        "log2_num_codes": math.log2(num_codes),
        "unigram_bits_per_code": float(unigram_bits(codes_train, codes_test, num_codes)),
        "test_perplexity": float(perplexity(hist)),
        "test_usage": float(usage(hist)),
    }, hist
