"""Wall time per stage of the default recipes (``vqkit run <modality>``), from their metrics.json.

Either runs the default presets now (``--run image audio video``; each in a temporary directory
unless ``--out`` is given) or reads finished run directories (``RUN_DIR ...``). Prints, per run,
the seconds of each stage the recipe recorded (``time_<stage>_s``) and the total wall time.

Run: ``uv run python benchmarks/recipes.py --run image`` or
``uv run python benchmarks/recipes.py runs/image-...``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def stage_table(run_dir: Path) -> str:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: is {run_dir} a finished `vqkit run` directory?")
    metrics = json.loads(path.read_text())
    stages = {k[5:-2]: v for k, v in metrics.items() if k.startswith("time_") and k.endswith("_s")}
    lines = [
        f"{run_dir} ({metrics.get('device', '?')}, {metrics.get('torch_threads', '?')} thread(s))"
    ]
    for stage, seconds in stages.items():
        lines.append(f"  {stage:<10} {seconds:9.1f} s")
    lines.append(
        f"  {'total':<10} {metrics['wall_time_s']:9.1f} s = {metrics['wall_time_s'] / 60:.1f} min"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, help="finished run directories")
    parser.add_argument("--run", nargs="+", choices=["image", "audio", "video"], default=[])
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    if not args.run_dirs and not args.run:
        parser.error("give run directories or --run MODALITY ...")
    for run_dir in args.run_dirs:
        print(stage_table(run_dir))
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            root = args.out or Path(tmp)
            for modality in args.run:
                out = root / modality
                cmd = [sys.executable, "-m", "vqkit", "run", modality, "--out", str(out)]
                print("$", " ".join(cmd[1:]), flush=True)
                subprocess.run(cmd, check=True)
                print(stage_table(out))


if __name__ == "__main__":
    main()
