"""An installed wheel (not the checkout) runs every recipe: the recipes ship inside the package.

The wheel is built offline with uv and installed without its dependencies into a fresh virtual
environment, which borrows torch and the rest from this environment's site-packages (a path
line in a ``.pth`` file: directories added that way are not scanned for ``.pth`` files, so the
checkout's editable install stays out). The runs start in an empty folder, so nothing of the
checkout is on the path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VQKIT_SHARED_DATA", REPO.parent / "shared/data"))
UV = shutil.which("uv")

TINY = {
    "image": [
        "data.train_size=32", "data.test_size=8", "data.image_size=8", "vqvae.hidden=8",
        "vqvae.res_hidden=4", "vqvae.num_res_blocks=1", "vqvae.num_codes=8", "vqvae.code_dim=4",
        "vqvae_train.steps=2", "vqvae_train.batch_size=8", "prior.channels=8",
        "prior.num_layers=2", "prior_train.steps=2", "prior_train.batch_size=8",
        "sample.per_class=1", "eval_batch_size=8",
    ],
    "video": [
        "data.num_frames=4", "data.context_frames=2", "data.frame_size=16", "data.train_size=8",
        "data.test_size=2", "vqvae.hidden=8", "vqvae.res_hidden=4", "vqvae.num_res_blocks=1",
        "vqvae.num_codes=8", "vqvae.code_dim=4", "vqvae.strides=[[2,2,2]]",
        "vqvae_train.steps=2", "vqvae_train.batch_size=4", "prior.dim=8", "prior.num_layers=1",
        "prior.num_heads=2", "prior_train.steps=2", "prior_train.batch_size=4",
        "predict.rollouts=2", "predict.gif_clips=1", "predict.upscale=1", "eval_batch_size=4",
    ],
    "audio": [
        "threads=1", "data.max_files=8", "vqvae.hidden=8", "vqvae.res_hidden=4",
        "vqvae.num_res_blocks=1", "vqvae.num_codes=8", "vqvae.code_dim=4",
        "vqvae.residual_channels=4", "vqvae.skip_channels=4", "vqvae.layers_per_stack=2",
        "vqvae.crop=512", "vqvae_train.steps=2", "vqvae_train.batch_size=4",
        "vqvae_train.lr_schedule=constant", "prior.residual_channels=4",
        "prior.layers_per_stack=1", "prior.stacks=1", "prior.crop=4", "prior_train.steps=2",
        "prior_train.batch_size=4", "convert.sources=1", "convert.max_targets=2",
        "convert.seconds=0.05", "eval.classifier_steps=1", "eval.abx_triples=10",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The python of a fresh environment holding the vqkit wheel."""
    if UV is None:
        pytest.skip("uv is not on PATH (the README installs with it)")
    tmp = tmp_path_factory.mktemp("install")
    subprocess.run(
        [UV, "build", "--wheel", "--offline", "-q", "-o", str(tmp / "dist"), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp / "dist").glob("vqkit-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [UV, "pip", "install", "--offline", "--no-deps", "-q", "--python", str(python), str(wheel)],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VQKIT_RECIPES", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_wheel_is_the_vqkit_that_runs(installed, tmp_path):
    proc = _run(installed, tmp_path, "-c", "import vqkit.runs as r; print(r.recipes_dir())")
    assert proc.returncode == 0, proc.stderr
    recipes = Path(proc.stdout.strip())
    assert recipes.name == "recipes" and recipes.parent.name == "vqkit"
    assert REPO not in recipes.parents  # the installed package's copy, not the checkout's
    assert (recipes / "image" / "builtin.yaml").is_file()


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_an_installed_vqkit_runs_every_recipe(installed, tmp_path, modality):
    args = ["-m", "vqkit", "run", modality, "--out", "run", "--device", "cpu", "--no-progress"]
    if modality == "audio":
        if not (SHARED / "fsdd").is_dir():
            pytest.skip(f"FSDD not found at {SHARED / 'fsdd'} (set VQKIT_SHARED_DATA)")
        args += ["--preset", "fsdd", "--data", str(SHARED / "fsdd")]
    for s in TINY[modality]:
        args += ["--set", s]
    proc = _run(installed, tmp_path, *args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["vqvae_steps"] == 2 and metrics["prior_steps"] == 2
