"""The ``vqkit`` command: run recipes and use finished runs.

Examples::

    vqkit run image                                   # built-in data, default preset
    vqkit run image --preset cifar10 --data ../shared/data/cifar10-jpg
    vqkit run image --set vqvae_train.steps=500 --out runs/quick
    vqkit run image --out runs/quick --resume         # continue a killed run
    vqkit sample runs/quick --temperature 0.8
    vqkit reconstruct runs/quick photo1.png photo2.jpg
    vqkit report runs/quick
    vqkit run video --out runs/video                  # moving sprites steered by actions
    vqkit predict runs/video --context clip.mp4 --actions up,up,left
    vqkit run audio --out runs/speech                 # festival corpus, WaveNet decoder
    vqkit convert runs/speech --source in.wav --speaker slt --out as_slt.wav
    vqkit units runs/speech --data data/generated/speech
    vqkit data speech --out data/generated/speech     # build the phone-labelled corpus once
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import math
import statistics
import sys
from pathlib import Path

from vqkit.audio import audio_format
from vqkit.bundle import export_bundle, read_bundle_metadata
from vqkit.config import load_config
from vqkit.distributed import (
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    is_main,
    world,
)
from vqkit.errors import InputError
from vqkit.io import CheckpointError, latest_checkpoint
from vqkit.report import build_report
from vqkit.runs import (
    MODALITIES,
    check_output_dir,
    check_output_file,
    load_recipe,
    new_run_dir,
    preset_path,
    read_run_config,
)
from vqkit.train.device import resolve_device
from vqkit.train.loop import DivergenceError

DEFAULT_PRESET = {"image": "builtin", "audio": "builtin", "video": "builtin"}


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that would overwrite files of something that is not this run."""
    check_output_dir(run_dir, "--out")
    # A run writes its config.yaml first, so a non-empty folder without one is not a run (not
    # even a killed one): refused with --resume too.
    if not run_dir.is_dir() or (run_dir / "config.yaml").exists():
        return  # an existing run: continued with --resume, else refused below
    # The temporary file of a config.yaml write that a kill cut short does not count.
    if any(not (p.name.startswith(".") and p.name.endswith(".tmp")) for p in run_dir.iterdir()):
        raise InputError(
            f"--out {run_dir} is a non-empty folder that holds no vqkit run (no config.yaml); "
            "choose another --out (a new or empty folder), or --resume for a run directory"
        )


def _check_resume(recipe, cfg, existing: Path, run_dir: Path) -> None:
    """A resumed run keeps its models: refuse overrides of the builder arguments of a model
    section whose stage has a checkpoint, before anything of the run is written. A stage not
    trained yet (a run stopped before its prior trained) may still change."""
    trained = {p.name for p in run_dir.iterdir() if (p / "ckpt" / "latest").is_file()}
    if not trained:
        return
    old = load_config(recipe.CONFIG, existing)
    changed = []
    for f in dataclasses.fields(cfg):
        new_section, old_section = getattr(cfg, f.name), getattr(old, f.name)
        if f.name not in trained or not hasattr(type(new_section), "__builder_params__"):
            continue
        # Every key of a model section shapes the model (the prior's kind and its nested
        # maskgit settings included), not only the default builder's arguments.
        a, b = dataclasses.asdict(old_section), dataclasses.asdict(new_section)
        changed += _differences(f.name, a, b)
    if changed:
        raise InputError(
            f"--resume of {run_dir} would change its model ({'; '.join(changed)}); a resumed "
            "run keeps its model: drop those --set overrides, or start a new run with another --out"
        )


def _differences(prefix: str, old: object, new: object) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in [*old, *(k for k in new if k not in old)]:
            out += _differences(f"{prefix}.{k}", old.get(k), new.get(k))
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def _has_results(run_dir: Path) -> bool:
    """A checkpoint of a stage or the run's metrics: what a fresh start would lose. A run that
    failed before its first checkpoint (a bad model size, say) may start again without
    --resume."""
    stages = (p for p in run_dir.iterdir() if p.is_dir())
    return (run_dir / "metrics.json").exists() or any((p / "ckpt").is_dir() for p in stages)


def _run(args: argparse.Namespace) -> int:
    # Under torchrun (WORLD_SIZE > 1) join the other ranks first; a no-op in one process.
    if init_distributed() and not is_main():
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story
    recipe = load_recipe(args.modality)
    if args.out == "":
        raise InputError("--out is empty; give the run directory, e.g. --out runs/first")
    # Rank 0's name: a time-stamped default could differ by a second between ranks.
    run_dir = Path(broadcast_object(str(new_run_dir(args.modality, args.preset, args.out))))
    _check_run_dir(run_dir)
    overrides = list(args.set)
    if args.data is not None:
        overrides.append(f"data.root={args.data}")
    if args.device is not None:
        resolve_device(args.device)  # a bad device is refused before anything is written
        overrides += [f"{stage}.device={args.device}" for stage in recipe.TRAIN_STAGES]
    existing = run_dir / "config.yaml"
    if args.resume and not existing.is_file():
        # Like fit(resume=True): a job that always passes --resume may be killed before its
        # run wrote anything, so a missing run starts fresh rather than failing.
        print(f"vqkit: warning: --resume: no run in {run_dir} yet; starting it", file=sys.stderr)
    if args.resume and existing.is_file():
        if args.preset_given and args.preset != DEFAULT_PRESET[args.modality]:
            raise InputError(
                f"--preset {args.preset} with --resume: a resumed run keeps the config in "
                f"{existing} (its preset is not recorded there); drop --preset, or start a new "
                "run with another --out"
            )
        read_run_config(run_dir)  # a one-line error for a damaged config.yaml
        cfg = load_config(recipe.CONFIG, existing, overrides)
        _check_resume(recipe, cfg, existing, run_dir)
    else:
        if existing.exists() and _has_results(run_dir):
            raise FileExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        cfg = load_config(recipe.CONFIG, preset_path(args.modality, args.preset), overrides)
    barrier()  # every rank has checked config.yaml above before rank 0 writes it
    if is_main():
        print(f"vqkit: {args.modality} run in {run_dir} ({world()} process(es))", flush=True)
    metrics = recipe.run(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    if not is_main():  # the recipe's evaluation, files and report are rank 0's
        return 0
    print(json.dumps(metrics, indent=2))
    print(f"vqkit: report at {run_dir / 'report.html'}")
    return 0


def _finished_run(run_dir: str) -> tuple[Path, object, object]:
    path = Path(run_dir)
    data = read_run_config(path)
    recipe = load_recipe(data["modality"])
    return path, recipe, load_config(recipe.CONFIG, data)


def _sample(args: argparse.Namespace) -> int:
    path, recipe, cfg = _finished_run(args.run_dir)
    check_output_file(args.out)
    steps = {}
    if args.steps is not None:
        if args.steps < 1:
            raise InputError(f"--steps must be >= 1, got {args.steps}")
        if "steps" not in inspect.signature(recipe.sample).parameters:
            raise InputError(
                f"--steps sets a MaskGIT prior's sampling passes; the {cfg.modality} recipe's "
                "prior has none: drop --steps"
            )
        steps = {"steps": args.steps}
    if args.guidance is not None:
        if not math.isfinite(args.guidance) or args.guidance < 0:
            raise InputError(f"--guidance must be a finite number >= 0, got {args.guidance}")
        if "guidance" not in inspect.signature(recipe.sample).parameters:
            raise InputError(
                f"--guidance sets classifier-free guidance of a class-conditional prior; the "
                f"{cfg.modality} recipe's prior has none: drop --guidance"
            )
        steps["guidance"] = args.guidance
    out = recipe.sample(
        cfg,
        path,
        out=args.out,
        temperature=args.temperature,
        seed=args.seed,
        device=args.device or "auto",
        **steps,
    )
    print(f"vqkit: samples written to {out}")
    return 0


def _recipe_command(recipe, name: str, run_dir: str):
    """The recipe's function for a command, or a clear error when its modality has none."""
    fn = getattr(recipe, name, None)
    if fn is None:
        modality = read_run_config(run_dir)["modality"]
        raise InputError(f"`vqkit {name}` does not apply to {modality} runs such as {run_dir}")
    return fn


def _reconstruct(args: argparse.Namespace) -> int:
    path, recipe, cfg = _finished_run(args.run_dir)
    check_output_file(args.out)
    _recipe_command(recipe, "reconstruct", args.run_dir)
    missing = [p for p in args.inputs if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"input file(s) not found: {', '.join(map(str, missing))}")
    out, scores = recipe.reconstruct(
        cfg, path, args.inputs, out=args.out, device=args.device or "auto"
    )
    size = cfg.data.image_size
    print(
        f"vqkit: every image is resized (shorter side to {size} px) and centre-cropped to "
        f"{size}x{size}, the size the run was trained at; PSNR is measured at {size}x{size}"
    )
    for name, score in zip(args.inputs, scores):
        print(f"{name}: PSNR {score:.2f} dB")
    print(f"vqkit: originals above reconstructions written to {out}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    path, recipe, cfg = _finished_run(args.run_dir)
    if args.out is not None:  # checked before any work
        check_output_file(args.out)
        audio_format(args.out)  # .wav, .flac or .ogg
    if args.out_dir is not None:
        check_output_dir(args.out_dir, "--out-dir")
    fn = _recipe_command(recipe, "convert", args.run_dir)
    if args.list_speakers:
        print("\n".join(json.loads((path / "speakers.json").read_text())))
        return 0
    if not args.source or not args.speaker:
        raise InputError("vqkit convert needs --source FILE|DIR ... and --speaker NAME ...")
    if not args.chunk_seconds > 0:
        raise InputError(f"--chunk-seconds must be > 0, got {args.chunk_seconds}")
    if (args.out is None) == (args.out_dir is None):
        raise InputError("give --out FILE (one source, one speaker) or --out-dir DIR")
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    written = fn(
        cfg,
        path,
        sources=args.source,
        speakers=args.speaker,
        out=args.out,
        out_dir=args.out_dir,
        temperature=args.temperature,
        seed=args.seed,
        device=args.device or "auto",
        chunk_seconds=args.chunk_seconds,
        progress=not args.no_progress,
        strict=args.strict,
    )
    where = args.out if args.out is not None else args.out_dir
    print(f"vqkit: {len(written)} conversion(s) written to {where}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    path, recipe, cfg = _finished_run(args.run_dir)
    check_output_file(args.out)
    if not args.context.is_file():
        raise FileNotFoundError(f"context video not found: {args.context}")
    out = _recipe_command(recipe, "predict", args.run_dir)(
        cfg,
        path,
        context=args.context,
        actions=args.actions,
        label=args.label,
        out=args.out,
        temperature=args.temperature,
        seed=args.seed,
        device=args.device or "auto",
    )
    print(f"vqkit: context and predicted frames written to {out}")
    return 0


UNIT_ROWS = ("accuracy", "chance", "purity", "cluster_purity", "pnmi", "abx_within", "abx_across")


def _unit_columns(metrics: dict) -> list[tuple[str, str]]:
    """``(heading, key prefix)`` of the codes and of each k-means baseline in ``metrics``."""
    names = sorted({k.split("_")[2] for k in metrics if k.startswith("unit_baseline_")})
    return [("codes", "unit_")] + [(f"k-means {n}", f"unit_baseline_{n}_") for n in names]


def _unit_value(metrics: dict, prefix: str, row: str):
    return metrics.get(("unit_" if row == "chance" else prefix) + row)


def _unit_table(metrics: dict, cells) -> str:
    """One line per metric, one column per code source; ``cells(prefix, row)`` gives a cell."""
    cols = _unit_columns(metrics)
    rows = [r for r in UNIT_ROWS if _unit_value(metrics, "unit_", r) is not None]
    table = {(r, p): cells(p, r) for r in rows for _, p in cols}
    width = max(16, *(len(h) + 2 for h, _ in cols), *(len(c) + 2 for c in table.values()))
    lines = ["  " + " " * 16 + "".join(f"{h:<{width}}" for h, _ in cols)]
    for row in rows:
        lines.append(f"  {row:<16}" + "".join(f"{table[row, p]:<{width}}" for _, p in cols))
    return "\n".join(lines)


def _units(args: argparse.Namespace) -> int:
    runs = []
    for run_dir in args.run_dir:
        path, recipe, cfg = _finished_run(run_dir)
        runs.append(
            _recipe_command(recipe, "units", run_dir)(
                cfg,
                path,
                data=args.data,
                max_utterances=args.max_utterances,
                device=args.device or "auto",
                baselines=not args.no_baselines,
            )
        )
    for run_dir, metrics in zip(args.run_dir, runs):
        skipped = metrics["skipped_files"]
        note = f" ({skipped} unusable files skipped)" if skipped else ""
        print(
            f"{run_dir}: K = {metrics['num_codes']} codes at {metrics['code_rate_hz']:g} Hz, "
            f"{metrics['utterances']} held-out utterances, {metrics.get('unit_labels')} "
            f"labels{note}"
        )

        def cell(prefix, row, metrics=metrics):
            value = _unit_value(metrics, prefix, row)
            return f"{value:.4f}" if isinstance(value, float) else str(value)

        print(_unit_table(metrics, cell))
        ranges = [
            f"{heading.removeprefix('k-means ')} {metrics[prefix + 'accuracy_min']:.4f}-"
            f"{metrics[prefix + 'accuracy_max']:.4f}"
            for heading, prefix in _unit_columns(metrics)[1:]
            if prefix + "accuracy_min" in metrics
        ]
        if ranges:
            print(
                f"  k-means: the mean of {metrics['unit_kmeans_seeds']} seeds; accuracy range "
                + ", ".join(ranges)
            )
    for name, text in runs[0].get("unit_baselines", {}).items():
        print(f"  k-means {name}: k-means (same K, fit on the training split) on {text}")
    if len(runs) > 1:
        rates = sorted({f"K = {m['num_codes']} at {m['code_rate_hz']:g} Hz" for m in runs})
        print(f"mean +- standard deviation [min, max] over {len(runs)} runs ({'; '.join(rates)})")

        def spread(prefix, row):
            values = [_unit_value(m, prefix, row) for m in runs]
            if not all(isinstance(v, float) for v in values):
                return "n/a"
            sd = statistics.stdev(values)
            return (
                f"{statistics.fmean(values):.4f} +- {sd:.4f} [{min(values):.4f}, {max(values):.4f}]"
            )

        print(_unit_table(runs[0], spread))
    return 0


def _data_speech(args: argparse.Namespace) -> int:
    # Here, not at the top: vqkit.datasets imports torchvision, seconds on every `vqkit --help`.
    # (Allowed by tests/test_layers.py: nothing imports the CLI, so this hides no cycle.)
    from vqkit.datasets.speech_corpus import FestivalNotFoundError, main_build

    try:
        main_build(str(args.out), num_sentences=args.num_sentences)
    except FestivalNotFoundError as e:
        raise FileNotFoundError(str(e)) from None
    return 0


def _report(args: argparse.Namespace) -> int:
    print(f"vqkit: report written to {build_report(args.run_dir)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    check_output_dir(Path(args.out).parent, "the bundle's folder")
    out = export_bundle(args.run_dir, args.out)
    stages = read_bundle_metadata(out)["stages"]
    listing = ", ".join(f"{k} ({v['builder']}, step {v['step']})" for k, v in stages.items())
    print(f"vqkit: bundle written to {out}: {listing}")
    return 0


KEY_METRICS = ("test_psnr", "test_mse_over_variance", "bits_per_dim", "test_perplexity")


def _run_row(run: Path) -> tuple:
    """``(run, modality, data, metrics, steps, status)`` of one run directory."""
    config = read_run_config(run)
    data = config.get("data") or {}
    metrics_file = run / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    steps = []
    for stage in sorted(p for p in run.iterdir() if (p / "ckpt" / "latest").is_file()):
        step = int(latest_checkpoint(stage / "ckpt").name.split("_")[1].split("-")[0])
        target = (config.get(f"{stage.name}_train") or {}).get("steps")
        steps.append(f"{stage.name} {step}" + (f"/{target}" if target else ""))
    status = "finished" if metrics else "unfinished"
    return run, config.get("modality", "?"), data, metrics, steps, status


def _runs(args: argparse.Namespace) -> int:
    """A table of the run directories under DIR (or DIR itself) with their key metrics; a
    damaged run is listed as such, with a warning saying why."""
    root = Path(args.dir)
    if not root.exists() and args.dir == "runs":
        raise InputError(
            "no runs folder here (./runs); `vqkit run MODALITY` makes one, or give the folder "
            "holding your runs: vqkit runs DIR"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; give the folder holding your runs")
    runs = (
        [root]
        if (root / "config.yaml").is_file()
        else sorted(p for p in root.iterdir() if (p / "config.yaml").is_file())
    )
    rows, metric_keys = [], list(args.metric or [])
    for run in runs:
        try:
            row = _run_row(run)
        except (InputError, CheckpointError, ValueError, OSError) as e:  # one damaged run
            print(f"vqkit: warning: {run} is damaged: {e}", file=sys.stderr)
            rows.append((run, "?", {}, {}, [], "damaged"))
            continue
        if not args.metric:
            metric_keys += [k for k in KEY_METRICS if k in row[3] and k not in metric_keys]
        rows.append(row)
    if not rows:
        print(f"vqkit: no runs in {root} (folders with a config.yaml, made by `vqkit run`)")
        return 0
    header = ["run", "modality", "data", "status", "steps", *metric_keys]
    table = [header]
    for run, modality, data, metrics, steps, status in rows:
        source = data.get("kind", "?") + (f":{Path(data['root']).name}" if data.get("root") else "")
        values = [metrics.get(k) for k in metric_keys]
        table.append([
            run.name, modality, source, status,
            ", ".join(steps) or "-",
            *("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in values),
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="vqkit",
        description="VQ-VAE toolkit: recipes for images, audio and video, and tools on their runs.",
        epilog="Also `python -m vqkit`. On several GPUs or machines: "
        "torchrun --nproc_per_node=N -m vqkit run ... (see docs/distributed.md).",
        formatter_class=fmt,
    )
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, help="what to do")

    run = sub.add_parser("run", help="run a modality's recipe end to end", formatter_class=fmt)
    run.add_argument("modality", choices=MODALITIES, help="which recipe to run")
    run.add_argument(
        "--preset",
        default=None,
        help="preset under recipes/<modality>/ (image: builtin, cifar10, folder; audio: builtin, "
        "fsdd, vctk, folder, units; video: builtin, folder); None: builtin",
    )
    run.add_argument(
        "--data", default=None, help="data folder (sets data.root); None: the preset's"
    )
    run.add_argument(
        "--out", default=None, help="run directory; None: runs/<modality>-<preset>-<time>"
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. vqvae_train.steps=500 (repeatable)",
    )
    run.add_argument(
        "--device",
        default=None,
        help="auto, cpu, cuda or cuda:N for every training stage; None: as configured (auto)",
    )
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoints"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)

    sample = sub.add_parser(
        "sample", help="draw prior samples from a finished run", formatter_class=fmt
    )
    sample.add_argument("run_dir", help="a run directory made by `vqkit run`")
    sample.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file; None: RUN_DIR/samples_new.png (audio: .wav)",
    )
    sample.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature; None: the run's sample.temperature",
    )
    sample.add_argument("--seed", type=int, default=None, help="random seed; None: the run's")
    sample.add_argument(
        "--steps",
        type=int,
        default=None,
        help="MaskGIT priors: sampling passes; None: the run's sample.steps, else maskgit.steps "
        "(a Gated PixelCNN draws one code at a time and refuses it)",
    )
    sample.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="image priors: classifier-free guidance scale (1: plain conditional, 0: "
        "unconditional, > 1: follows the class more; other than 1 needs a prior trained with "
        "class_dropout > 0); None: the run's sample.guidance",
    )
    sample.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    sample.set_defaults(func=_sample)

    rec = sub.add_parser(
        "reconstruct", help="encode and decode files with a finished run", formatter_class=fmt
    )
    rec.add_argument("run_dir", help="a run directory made by `vqkit run`")
    rec.add_argument("inputs", nargs="+", type=Path, help="image files")
    rec.add_argument(
        "--out", type=Path, default=None, help="output grid; None: RUN_DIR/reconstruct.png"
    )
    rec.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    rec.set_defaults(func=_reconstruct)

    conv = sub.add_parser(
        "convert", help="voice conversion with a finished audio run", formatter_class=fmt
    )
    conv.add_argument("run_dir", help="a run directory made by `vqkit run`")
    conv.add_argument(
        "--source", type=Path, nargs="+", default=[], help="audio files or folders of them"
    )
    conv.add_argument(
        "--speaker",
        action="append",
        default=[],
        help="target speaker, as named in the data (repeatable; --list-speakers lists them)",
    )
    conv.add_argument("--out", type=Path, default=None, help="output file: one source, one speaker")
    conv.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="output folder: OUT_DIR/<source stem>_to_<speaker>.wav for every pair",
    )
    conv.add_argument(
        "--list-speakers", action="store_true", help="print the run's speakers and stop"
    )
    conv.add_argument(
        "--chunk-seconds",
        type=float,
        default=10.0,
        help="long inputs are converted in chunks of this many seconds (bounded memory)",
    )
    conv.add_argument(
        "--strict",
        action="store_true",
        help="an unusable source (unreadable, NaN, too short, float samples above 1) is an "
        "error, not skipped with a warning",
    )
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")
    conv.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature; None: the run's"
    )
    conv.add_argument("--seed", type=int, default=None, help="random seed; None: the run's")
    conv.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    conv.set_defaults(func=_convert)

    pred = sub.add_parser(
        "predict",
        help="continue a video's first frames with a finished video run",
        formatter_class=fmt,
    )
    pred.add_argument("run_dir", help="a run directory made by `vqkit run video`")
    pred.add_argument(
        "--context",
        type=Path,
        required=True,
        help="video file (mp4, webm, avi, gif); its first data.context_frames frames are used",
    )
    pred.add_argument(
        "--actions",
        default=None,
        help="builtin runs: actions for the generated frames, one or one per frame, e.g. "
        "up,up,left (none, up, down, left, right); None: none",
    )
    pred.add_argument(
        "--label", type=int, default=None, help="class-conditional runs: the class id; None: 0"
    )
    pred.add_argument(
        "--out", type=Path, default=None, help=".gif, .mp4 or .webm; None: RUN_DIR/predict.gif"
    )
    pred.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature; None: the run's"
    )
    pred.add_argument("--seed", type=int, default=None, help="random seed; None: the run's")
    pred.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    pred.set_defaults(func=_predict)

    units = sub.add_parser(
        "units", help="phone/word discovery metrics of an audio run's codes", formatter_class=fmt
    )
    units.add_argument(
        "run_dir",
        nargs="+",
        help="run directories made by `vqkit run` (several: e.g. seeds, with mean and spread)",
    )
    units.add_argument(
        "--data",
        type=Path,
        required=True,
        help="labelled speech: a festival corpus (vqkit data speech) or FSDD; its test split",
    )
    units.add_argument(
        "--max-utterances",
        type=int,
        default=None,
        help="evaluate at most this many utterances; None: all",
    )
    units.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the k-means baselines (same K, fit on the training split of --data)",
    )
    units.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    units.set_defaults(func=_units)

    data = sub.add_parser("data", help="build data sets", formatter_class=fmt)
    data_sub = data.add_subparsers(dest="dataset", required=True, help="which data set")
    speech = data_sub.add_parser(
        "speech",
        help="synthesize the phone-labelled festival speech corpus (cached)",
        formatter_class=fmt,
    )
    speech.add_argument(
        "--out", type=Path, default=Path("data/generated/speech"), help="output folder"
    )
    speech.add_argument("--num-sentences", type=int, default=300, help="sentences per speaker")
    speech.set_defaults(func=_data_speech)

    export = sub.add_parser(
        "export",
        help="write a portable bundle of a run's models (safetensors + config + metadata)",
        formatter_class=fmt,
    )
    export.add_argument("run_dir", help="the run directory")
    export.add_argument("out", help="the bundle to create: a folder, or a file ending in .zip")
    export.set_defaults(func=_export)

    runs = sub.add_parser(
        "runs", help="list run directories with their key metrics", formatter_class=fmt
    )
    runs.add_argument("dir", nargs="?", default="runs", help="folder holding run directories")
    runs.add_argument(
        "--metric",
        action="append",
        default=None,
        metavar="KEY",
        help="a metrics.json key to show (repeatable); None: " + ", ".join(KEY_METRICS),
    )
    runs.set_defaults(func=_runs)

    report = sub.add_parser("report", help="rebuild RUN_DIR/report.html", formatter_class=fmt)
    report.add_argument("run_dir", help="a run directory made by `vqkit run`")
    report.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    args.preset_given = getattr(args, "preset", None) is not None
    if getattr(args, "preset", "unset") is None:
        args.preset = DEFAULT_PRESET[args.modality]
    try:
        return args.func(args)
    except (InputError, FileNotFoundError, FileExistsError) as e:  # the user's to fix
        print(f"vqkit: error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, DivergenceError) as e:  # a broken checkpoint, full disk, NaN loss
        print(f"vqkit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Only a training run has checkpoints to continue from; convert, sample... have none.
        hint = "; continue with --resume (checkpoints are kept)" if args.command == "run" else ""
        print(f"vqkit: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        cleanup()  # leave the process group of a torchrun launch (no-op otherwise)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
