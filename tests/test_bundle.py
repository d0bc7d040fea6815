"""Bundles: export a finished run, load it elsewhere (no run dir, no GPU, no unpickling)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vqkit.bundle import BundleError, export_bundle, load_bundle, load_model
from vqkit.cli import main
from vqkit.config import load_config
from vqkit.models import gated_pixelcnn, vqvae_image, wavenet_prior
from vqkit.runs import load_recipe, preset_path

TINY_IMAGE_RUN = [
    "data.train_size=32", "data.test_size=8", "data.image_size=8", "vqvae.hidden=8",
    "vqvae.res_hidden=4", "vqvae.num_res_blocks=1", "vqvae.num_codes=8", "vqvae.code_dim=4",
    "vqvae_train.steps=3", "vqvae_train.batch_size=8", "vqvae_train.log_every=1",
    "vqvae_train.device=cpu", "prior.channels=8", "prior.num_layers=2", "prior_train.steps=2",
    "prior_train.batch_size=8", "prior_train.device=cpu", "sample.per_class=1",
    "eval_batch_size=8",
    "eval.classifier_steps=2", "eval.classifier_channels=4", "eval.samples=10",
]  # fmt: skip


def outputs(models: dict) -> dict:
    """What the models compute, so two loads can be compared (the subprocess runs this too)."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8) - 0.5
    codes = models["vqvae"].encode(x)
    return {
        "codes": codes,
        "decoded": models["vqvae"].decode(codes),
        "logits": models["prior"](codes, torch.tensor([0, 1])),
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    recipe = load_recipe("image")
    run = tmp_path_factory.mktemp("bundle") / "run"
    cfg = load_config(recipe.CONFIG, preset_path("image", "builtin"), TINY_IMAGE_RUN)
    recipe.run(cfg, run, progress=False)
    return run


def _from_run(run: Path) -> dict:
    return {s: load_model(run / s).eval() for s in ("vqvae", "prior")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_writes_weights_config_and_metadata(run_dir, tmp_path):
    out = export_bundle(run_dir, tmp_path / "b")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["format"] == "vqkit-bundle" and meta["modality"] == "image"
    assert meta["finished"] and meta["metrics"] == json.loads(
        (run_dir / "metrics.json").read_text()
    )
    assert meta["data"]["kind"] == "builtin" and meta["data"]["train_size"] == 32
    assert meta["vqkit_version"] and meta["torch_version"] == torch.__version__
    stages = meta["stages"]
    assert {s: (v["builder"], v["step"]) for s, v in stages.items()} == {
        "vqvae": ("vqvae_image", 3),
        "prior": ("gated_pixelcnn", 2),
    }
    for stage, info in stages.items():
        for name, entry in info["files"].items():
            assert entry["sha256"] == _sha(out / stage / name)
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "prior", "vqvae"]
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(run_dir, out)


def test_bundle_loads_in_a_fresh_process_without_run_dir_or_gpu(run_dir, tmp_path):
    expected = {k: v.contiguous() for k, v in outputs(_from_run(run_dir)).items()}
    save_file(expected, tmp_path / "expected.safetensors")
    copy = tmp_path / "copy"  # the run dir goes away: export from a copy, then delete it
    shutil.copytree(run_dir, copy)
    bundle = export_bundle(copy, tmp_path / "model.zip")
    shutil.rmtree(copy)
    script = inspect.getsource(outputs) + textwrap.dedent(f"""
        assert not torch.cuda.is_available()
        from safetensors.torch import save_file
        from vqkit.bundle import load_bundle
        models = load_bundle({str(bundle)!r})
        got = {{k: v.contiguous() for k, v in outputs(models).items()}}
        save_file(got, {str(tmp_path / "got.safetensors")!r})
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "import torch\n" + script],
        cwd=tmp_path,  # not the run's folder: nothing but the bundle to go on
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(tmp_path / "got.safetensors")
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_builders_take_weights_from_a_bundle_a_file_or_a_url(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    reference = _from_run(run_dir)
    bundle = export_bundle(run_dir, tmp_path / "b.zip")
    kwargs = reference["vqvae"].config["kwargs"]
    digest = _sha(bundle)
    uses = {
        "bundle zip": bundle,
        "bundle folder": export_bundle(run_dir, tmp_path / "folder"),
        "safetensors file": tmp_path / "folder" / "vqvae" / "model.safetensors",
        "file:// URL with sha256": f"{bundle.as_uri()}#sha256={digest}",
    }
    for label, weights in uses.items():
        model = vqvae_image(**kwargs, weights=weights)
        for k, v in reference["vqvae"].state_dict().items():
            assert torch.equal(model.state_dict()[k], v), (label, k)
    cached = list((tmp_path / "torch-home" / "hub" / "checkpoints" / "vqkit").iterdir())
    assert len(cached) == 1 and _sha(cached[0]) == digest  # downloaded once, into hub's cache
    prior = gated_pixelcnn(**reference["prior"].config["kwargs"], weights=bundle)  # its stage
    for k, v in reference["prior"].state_dict().items():
        assert torch.equal(prior.state_dict()[k], v), k


def test_clear_errors_for_wrong_weights(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    bundle = export_bundle(run_dir, tmp_path / "b.zip")
    kwargs = load_bundle(bundle)["vqvae"].config["kwargs"]
    with pytest.raises(BundleError, match=r"hidden=16 \(weights: 8\)"):
        vqvae_image(**{**kwargs, "hidden": 16}, weights=bundle)
    with pytest.raises(BundleError, match="none of its stages was built by 'wavenet_prior'"):
        wavenet_prior(num_codes=8, residual_channels=4, layers_per_stack=1, weights=bundle)
    wrong = "0" * 64
    with pytest.raises(BundleError, match="checksum mismatch"):
        vqvae_image(**kwargs, weights=f"{bundle.as_uri()}#sha256={wrong}")
    cache = tmp_path / "torch-home" / "hub" / "checkpoints" / "vqkit"
    assert not list(cache.iterdir())  # the bad download was not kept
    with pytest.raises(ValueError, match="sha256=<64 hex digits>"):
        vqvae_image(**kwargs, weights=f"{bundle}#md5=abc")
    with pytest.raises(FileNotFoundError, match="not found"):
        vqvae_image(**kwargs, weights=tmp_path / "nope.safetensors")
    with pytest.raises(BundleError, match="not a vqkit bundle"):
        load_bundle(run_dir)  # a run directory is not a bundle


def test_tampered_weights_fail_their_checksum_naming_the_file(run_dir, tmp_path):
    folder = export_bundle(run_dir, tmp_path / "b")
    weights = folder / "prior" / "model.safetensors"
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] + 1e-3  # a still valid safetensors file, other numbers
    save_file(state, weights)
    with pytest.raises(BundleError, match=r"checksum mismatch for prior/model\.safetensors"):
        load_bundle(folder)
    # The same inside a zip.
    archive = tmp_path / "t.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in folder.rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(folder).as_posix())
    with pytest.raises(BundleError, match=r"prior/model\.safetensors"):
        load_bundle(archive)


class _Evil:
    """Unpickling this creates the marker file: proof that something ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_refused_and_never_run(run_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil_pt = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil(marker)}, evil_pt)
    kwargs = load_model(run_dir / "vqvae").config["kwargs"]
    with pytest.raises(BundleError, match="not a vqkit bundle"):
        load_bundle(evil_pt)  # torch.save writes a zip: it has no metadata.json
    with pytest.raises(BundleError, match="pickles and are never loaded"):
        vqvae_image(**kwargs, weights=evil_pt)
    # A pickle in place of model.safetensors, its checksum updated to match: still refused.
    folder = export_bundle(run_dir, tmp_path / "b")
    weights = folder / "vqvae" / "model.safetensors"
    torch.save({"w": _Evil(marker)}, weights)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["stages"]["vqvae"]["files"]["model.safetensors"]["sha256"] = _sha(weights)
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(folder)
    named = tmp_path / "w.safetensors"
    shutil.copyfile(weights, named)
    with pytest.raises(BundleError, match="pickle"):
        vqvae_image(**kwargs, weights=named)
    assert not marker.exists()


def test_cli_export(run_dir, tmp_path, capsys):
    out = tmp_path / "cli.zip"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert "vqvae (vqvae_image, step 3)" in capsys.readouterr().out
    assert set(load_bundle(out)) == {"vqvae", "prior"}
    assert main(["export", str(run_dir), str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path), str(tmp_path / "x")]) == 2  # not a run directory
    assert "not a vqkit run directory" in capsys.readouterr().err


def test_the_exported_run_logged_scalars_and_reconstructions_to_tensorboard(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "vqvae" / "tb"))
    events.Reload()
    assert "vqvae/reconstructions" in events.Tags()["images"]  # the recipe's image_fn
    assert "train/loss" in events.Tags()["scalars"]
    image = events.Images("vqvae/reconstructions")[-1]
    assert image.step == 3 and image.width > 0
