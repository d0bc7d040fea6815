"""Every quantizer is a preset choice in every recipe (``--set vqvae.quantizer.kind=...``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from vqkit.bundle import load_model
from vqkit.cli import main
from vqkit.quantize import FSQ, LFQ, SimVQ, VectorQuantizer

SHARED = Path(
    os.environ.get("VQKIT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared/data")
)
IMAGE = [
    "data.train_size=32", "data.test_size=8", "vqvae.hidden=8", "vqvae.res_hidden=4",
    "vqvae.num_res_blocks=1", "vqvae.num_codes=16", "vqvae.code_dim=4", "vqvae_train.steps=2",
    "vqvae_train.batch_size=8", "prior.channels=8", "prior.num_layers=2", "prior_train.steps=2",
    "prior_train.batch_size=8", "sample.per_class=1", "eval_batch_size=8",
]  # fmt: skip
KINDS = {
    "vq": (["vqvae.quantizer.rotation=true"], VectorQuantizer, 16),
    "fsq": (["vqvae.quantizer.levels=[3,3,3]"], FSQ, 27),
    "lfq": (["vqvae.quantizer.entropy_weight=0.2"], LFQ, 16),
    "simvq": ([], SimVQ, 16),
}


def _sets(values):
    return [x for v in values for x in ("--set", v)]


def _run(modality, out, values, *extra):
    torch.set_num_threads(1)
    return main(["run", modality, "--out", str(out), "--device", "cpu", "--no-progress",
                 *extra, *_sets(values)])  # fmt: skip


@pytest.mark.parametrize("kind", list(KINDS))
def test_image_recipe_with_each_quantizer(tmp_path, kind):
    options, cls, num_codes = KINDS[kind]
    out = tmp_path / kind
    assert _run("image", out, [*IMAGE, f"vqvae.quantizer.kind={kind}", *options]) == 0
    vqvae = load_model(out / "vqvae")
    assert isinstance(vqvae.quantizer, cls) and vqvae.quantizer.num_codes == num_codes
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_codes"] == num_codes
    prior = load_model(out / "prior")
    assert prior.num_codes == num_codes  # the prior predicts the quantizer's codes
    assert yaml.safe_load((out / "config.yaml").read_text())["vqvae"]["quantizer"]["kind"] == kind


def test_an_option_of_another_kind_is_refused(tmp_path, capsys):
    code = _run("image", tmp_path / "r", [*IMAGE, "vqvae.quantizer.kind=fsq",
                                           "vqvae.quantizer.levels=[3,3]", "vqvae.quantizer.ema=false"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "quantizer.ema=False does not apply to quantizer.kind='fsq'" in err
    assert "--set vqvae.quantizer.ema=true)" in err  # how to set it back


def test_an_unknown_kind_is_refused(tmp_path, capsys):
    assert _run("image", tmp_path / "r", [*IMAGE, "vqvae.quantizer.kind=pq"]) == 2
    assert (
        "'vqvae.quantizer.kind' must be one of vq, fsq, lfq, simvq, residual"
        in capsys.readouterr().err
    )


def test_residual_codes_have_no_prior_yet(tmp_path, capsys):
    values = [*IMAGE, "vqvae.quantizer.kind=residual", "vqvae.quantizer.levels=2"]
    assert _run("image", tmp_path / "r", values) == 2
    assert "the priors model one code per position" in capsys.readouterr().err


def test_video_recipe_with_fsq(tmp_path):
    values = [
        "data.num_frames=4", "data.context_frames=2", "data.frame_size=16",
        "data.train_size=8", "data.test_size=2", "vqvae.hidden=8", "vqvae.res_hidden=4",
        "vqvae.num_res_blocks=1", "vqvae.code_dim=4", "vqvae.strides=[[2,2,2]]",
        "vqvae.quantizer.kind=fsq", "vqvae.quantizer.levels=[5,3]", "vqvae_train.steps=2",
        "vqvae_train.batch_size=4", "prior.dim=8", "prior.num_layers=1", "prior.num_heads=2",
        "prior_train.steps=2", "prior_train.batch_size=4", "predict.rollouts=2",
        "predict.gif_clips=1", "predict.upscale=1", "eval_batch_size=4",
    ]  # fmt: skip
    assert _run("video", tmp_path / "v", values) == 0
    assert isinstance(load_model(tmp_path / "v" / "vqvae").quantizer, FSQ)
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["num_codes"] == 15


def test_audio_recipe_with_lfq(tmp_path):
    if not (SHARED / "fsdd").is_dir():
        pytest.skip(f"FSDD not found at {SHARED / 'fsdd'} (set VQKIT_SHARED_DATA)")
    values = [
        "threads=1", "data.max_files=8", "vqvae.hidden=8", "vqvae.res_hidden=4",
        "vqvae.num_res_blocks=1", "vqvae.num_codes=16", "vqvae.code_dim=4",
        "vqvae.quantizer.kind=lfq", "vqvae.residual_channels=4", "vqvae.skip_channels=4",
        "vqvae.layers_per_stack=2", "vqvae.crop=512", "vqvae_train.steps=2",
        "vqvae_train.batch_size=4", "vqvae_train.lr_schedule=constant",
        "prior.residual_channels=4", "prior.layers_per_stack=1",
        "prior.stacks=1", "prior.crop=4", "prior_train.steps=2", "prior_train.batch_size=4",
        "convert.sources=1", "convert.max_targets=2", "convert.seconds=0.05",
        "eval.classifier_steps=1", "eval.abx_triples=10",
    ]  # fmt: skip
    out = tmp_path / "a"
    assert _run("audio", out, values, "--preset", "fsdd", "--data", str(SHARED / "fsdd")) == 0
    assert isinstance(load_model(out / "vqvae").quantizer, LFQ)
