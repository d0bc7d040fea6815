"""The ``vqkit`` command: run recipes and use finished runs.

Examples::

    vqkit run image                                   # built-in data, default preset
    vqkit run image --preset cifar10 --data ../shared/data/cifar10-jpg
    vqkit run image --set vqvae_train.steps=500 --out runs/quick
    vqkit run image --out runs/quick --resume         # continue a killed run
    vqkit sample runs/quick --temperature 0.8
    vqkit reconstruct runs/quick photo1.png photo2.jpg
    vqkit report runs/quick
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vqkit.config import ConfigError, load_config
from vqkit.runs import MODALITIES, load_recipe, new_run_dir, preset_path, read_run_config

DEFAULT_PRESET = {"image": "builtin"}


def _run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.modality)
    run_dir = new_run_dir(args.modality, args.preset, args.out)
    overrides = list(args.set)
    if args.data is not None:
        overrides.append(f"data.root={args.data}")
    if args.device is not None:
        overrides += [f"{stage}.device={args.device}" for stage in recipe.TRAIN_STAGES]
    existing = run_dir / "config.yaml"
    if args.resume:
        if not existing.is_file():
            raise FileNotFoundError(f"--resume: {existing} not found; start the run without it")
        cfg = load_config(recipe.CONFIG, existing, overrides)
    else:
        if existing.exists():
            raise FileExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        cfg = load_config(recipe.CONFIG, preset_path(args.modality, args.preset), overrides)
    print(f"vqkit: {args.modality} run in {run_dir}", flush=True)
    metrics = recipe.run(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
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
    out = recipe.sample(
        cfg,
        path,
        out=args.out,
        temperature=args.temperature,
        seed=args.seed,
        device=args.device or "auto",
    )
    print(f"vqkit: samples written to {out}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    path, recipe, cfg = _finished_run(args.run_dir)
    missing = [p for p in args.inputs if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"input file(s) not found: {', '.join(map(str, missing))}")
    out, scores = recipe.reconstruct(
        cfg, path, args.inputs, out=args.out, device=args.device or "auto"
    )
    for name, score in zip(args.inputs, scores):
        print(f"{name}: PSNR {score:.2f} dB")
    print(f"vqkit: originals above reconstructions written to {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from vqkit.report import build_report

    print(f"vqkit: report written to {build_report(args.run_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="vqkit",
        description="VQ-VAE toolkit: recipes for images, and tools on their runs.",
        formatter_class=fmt,
    )
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a modality's recipe end to end", formatter_class=fmt)
    run.add_argument("modality", choices=MODALITIES)
    run.add_argument(
        "--preset",
        default=None,
        help="preset under recipes/<modality>/ (image: builtin, cifar10, folder); default: builtin",
    )
    run.add_argument("--data", default=None, help="data folder (sets data.root)")
    run.add_argument(
        "--out", default=None, help="run directory (default runs/<modality>-<preset>-<time>)"
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. vqvae_train.steps=500 (repeatable)",
    )
    run.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoints"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)

    sample = sub.add_parser(
        "sample", help="draw prior samples from a finished run", formatter_class=fmt
    )
    sample.add_argument("run_dir")
    sample.add_argument(
        "--out", type=Path, default=None, help="output file (default RUN_DIR/samples_new.png)"
    )
    sample.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (default: the run's sample.temperature)",
    )
    sample.add_argument("--seed", type=int, default=None, help="random seed (default: the run's)")
    sample.add_argument("--device", default=None, help="auto, cpu, cuda (default: auto)")
    sample.set_defaults(func=_sample)

    rec = sub.add_parser(
        "reconstruct", help="encode and decode files with a finished run", formatter_class=fmt
    )
    rec.add_argument("run_dir")
    rec.add_argument("inputs", nargs="+", type=Path, help="image files")
    rec.add_argument(
        "--out", type=Path, default=None, help="output grid (default RUN_DIR/reconstruct.png)"
    )
    rec.add_argument("--device", default=None, help="auto, cpu, cuda (default: auto)")
    rec.set_defaults(func=_reconstruct)

    report = sub.add_parser("report", help="rebuild RUN_DIR/report.html", formatter_class=fmt)
    report.add_argument("run_dir")
    report.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "preset", "unset") is None:
        args.preset = DEFAULT_PRESET[args.modality]
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"vqkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqkit: interrupted; continue with --resume (checkpoints are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
