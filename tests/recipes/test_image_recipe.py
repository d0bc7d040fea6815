"""The image recipe end to end through the CLI, on tiny models (seconds)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqkit.cli import main

SHARED = Path(os.environ.get("VQKIT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared/data"))
CIFAR = SHARED / "cifar10-jpg"

TINY = [
    "vqvae.hidden=16", "vqvae.res_hidden=8", "vqvae.num_codes=16", "vqvae.code_dim=8",
    "vqvae_train.steps=6", "vqvae_train.ckpt_every=3", "vqvae_train.batch_size=8",
    "vqvae_train.log_every=2", "prior.channels=8", "prior.num_layers=2",
    "prior_train.steps=4", "prior_train.batch_size=8", "prior_train.log_every=2",
    "sample.per_class=2", "eval_batch_size=64", "eval.classifier_steps=3",
    "eval.classifier_channels=4", "eval.samples=20",
    "prior.class_dropout=0", "sample.guidance=1",  # unguided here; GUIDED_TINY tests guidance
]
BUILTIN_TINY = [*TINY, "data.train_size=64", "data.test_size=16"]


def run_cli(*args: str) -> int:
    return main(list(args))


def sets(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def finished_run(out: Path, values: list[str]) -> Path:
    """A finished tiny run in ``out`` with the ``--set`` values."""
    torch.set_num_threads(1)
    assert run_cli("run", "image", "--out", str(out), "--device", "cpu", "--no-progress",
                   *sets(values)) == 0
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.mktemp("runs") / "tiny", BUILTIN_TINY)


def test_run_writes_every_output(tiny_run):
    for name in ("config.yaml", "metrics.json", "reconstructions.png", "samples.png",
                 "report.html", "media.json", "code_usage.json"):
        assert (tiny_run / name).is_file(), name
    assert (tiny_run / "vqvae" / "ckpt" / "latest").is_file()
    assert (tiny_run / "prior" / "ckpt" / "latest").is_file()
    assert list((tiny_run / "vqvae" / "tb").glob("events.out.tfevents.*"))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("test_mse", "test_psnr", "test_mse_over_variance", "bits_per_dim",
                "test_perplexity", "test_usage", "prior_bits_per_code", "log2_num_codes",
                "unigram_bits_per_code", "vqvae_steps", "prior_steps", "wall_time_s"):
        assert key in metrics and metrics[key] is not None, key
    assert metrics["vqvae_steps"] == 6 and metrics["prior_steps"] == 4
    assert metrics["log2_num_codes"] == 4.0
    assert 0 < metrics["test_usage"] <= 1 and 1 <= metrics["test_perplexity"] <= 16
    assert metrics["test_mse_over_variance"] == pytest.approx(
        metrics["test_mse"] / metrics["data_variance"])
    assert metrics["test_psnr"] == pytest.approx(-10 * math.log10(metrics["test_mse"]), abs=3.0)
    # bits/dim = reconstruction bits/dim + prior bits of the 8x8 codes spread over 3x32x32 dims.
    assert metrics["bits_per_dim"] == pytest.approx(
        metrics["recon_bits_per_dim"] + metrics["prior_bits_per_code"] * 64 / 3072)


def test_sample_quality_is_in_metrics_and_beside_the_sample_grid(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("classifier_real_accuracy", "classifier_recon_accuracy",
                "classifier_sample_accuracy"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["classifier_scored_samples"] == 20  # eval.samples, 2 per class
    if metrics["classifier_recon_accuracy"] > 0:
        assert metrics["sample_over_recon_accuracy"] == pytest.approx(
            metrics["classifier_sample_accuracy"] / metrics["classifier_recon_accuracy"])
    assert metrics["classifier_frechet"] > 0 and metrics["classifier_frechet_recon"] >= 0
    assert metrics["sample_16_s"] > 0 and metrics["sample_grid_count"] == 20
    assert metrics["time_classifier_s"] > 0
    media = json.loads((tiny_run / "media.json").read_text())
    caption = next(m["title"] for m in media if m["path"] == "samples.png")
    assert f"{metrics['classifier_sample_accuracy']:.1%} of 20 samples" in caption
    assert "not Inception FID" in caption


def test_unconditional_prior_reports_the_frechet_distance_alone(tmp_path):
    out = finished_run(tmp_path / "uncond",
                       [*BUILTIN_TINY, "prior.class_conditional=false", "sample.count=4"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classifier_sample_accuracy"].startswith("n/a: unconditional")
    assert metrics["classifier_frechet"] > 0 and metrics["classifier_scored_samples"] == 20
    page = (out / "report.html").read_text()
    assert "not defined for an unconditional prior" in page


MASKGIT_TINY = [*BUILTIN_TINY, "prior.kind=maskgit", "prior.maskgit.dim=16",
                "prior.maskgit.layers=1", "prior.maskgit.heads=2", "prior.maskgit.steps=3"]


@pytest.fixture(scope="module")
def maskgit_run(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.mktemp("runs") / "maskgit", MASKGIT_TINY)


def test_maskgit_prior_reports_no_likelihood_and_its_sampling(maskgit_run):
    from vqkit.bundle import load_model

    metrics = json.loads((maskgit_run / "metrics.json").read_text())
    assert metrics["prior_kind"] == "maskgit" and metrics["sample_steps"] == 3
    for key in ("prior_bits_per_code", "bits_per_dim"):
        assert metrics[key] == "n/a: MaskGIT has no exact likelihood"
    assert 0 <= metrics["classifier_sample_accuracy"] <= 1 and metrics["classifier_frechet"] > 0
    assert metrics["sample_16_s"] > 0 and "unigram_bits_per_code" in metrics
    prior = load_model(maskgit_run / "prior" / "ckpt")
    assert prior.config["builder"] == "maskgit" and prior.grid == (8, 8)
    assert prior.num_classes == 10 and prior.steps == 3
    history = (maskgit_run / "prior" / "history.jsonl").read_text()
    assert "masked_bits" in history and "nll_bits" not in history


def test_resume_refuses_a_change_of_the_trained_priors_kind_or_nested_settings(
        maskgit_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(maskgit_run, run)
    config = (run / "config.yaml").read_bytes()
    for change, shown in (("prior.maskgit.dim=32", "prior.maskgit.dim: 16 -> 32"),
                          ("prior.kind=pixelcnn", "prior.kind: 'maskgit' -> 'pixelcnn'")):
        assert run_cli("run", "image", "--out", str(run), "--resume", "--device", "cpu",
                       "--no-progress", "--set", change) == 2
        err = capsys.readouterr().err
        assert shown in err and "keeps its model" in err, err
        assert (run / "config.yaml").read_bytes() == config


def test_a_maskgit_setting_refused_by_its_builder_names_its_key(tmp_path, capsys):
    assert run_cli("run", "image", "--out", str(tmp_path / "x"), "--device", "cpu", "--no-progress",
                   *sets([*MASKGIT_TINY, "prior.maskgit.heads=3"])) == 2
    err = capsys.readouterr().err
    assert "prior.maskgit" in err and "heads" in err and len(err.strip().splitlines()) == 1


def test_sample_steps_set_maskgit_passes_and_are_refused_for_pixelcnn(maskgit_run, tiny_run,
                                                                       tmp_path, capsys):
    grids = {}
    for steps in ("1", "4"):
        out = tmp_path / f"steps{steps}.png"
        assert run_cli("sample", str(maskgit_run), "--out", str(out), "--steps", steps,
                       "--device", "cpu") == 0
        grids[steps] = np.asarray(Image.open(out))
    assert grids["1"].shape == grids["4"].shape and not np.array_equal(grids["1"], grids["4"])
    capsys.readouterr()
    out = tmp_path / "refused.png"
    assert run_cli("sample", str(tiny_run), "--out", str(out), "--steps", "4",
                   "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "--steps" in err and "PixelCNN" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    # The run's own sample.steps is refused for a PixelCNN before anything is written.
    assert run_cli("run", "image", "--out", str(tmp_path / "x"), "--set", "sample.steps=4") == 2
    assert "prior.kind" in capsys.readouterr().err and not (tmp_path / "x").exists()


GUIDED_TINY = [*BUILTIN_TINY, "prior.class_dropout=0.3", "sample.guidance=2.5"]


def test_classifier_free_guidance_from_the_config_and_the_sample_command(tiny_run, tmp_path,
                                                                         capsys):
    from vqkit.bundle import load_model

    out = finished_run(tmp_path / "guided", GUIDED_TINY)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sample_guidance"] == 2.5 and 0 <= metrics["classifier_sample_accuracy"] <= 1
    prior = load_model(out / "prior" / "ckpt")
    assert prior.class_dropout == 0.3 and prior.layers[0].class_bias.num_embeddings == 11
    grids = {}
    for scale in ("1", "2.5", "0"):
        png = tmp_path / f"g{scale}.png"
        assert run_cli("sample", str(out), "--out", str(png), "--guidance", scale,
                       "--device", "cpu") == 0
        grids[scale] = np.asarray(Image.open(png))
    assert not np.array_equal(grids["1"], grids["2.5"]) and not np.array_equal(grids["1"], grids["0"])
    # Without --guidance the run's sample.guidance applies: the grid of --guidance 2.5.
    png = tmp_path / "default.png"
    assert run_cli("sample", str(out), "--out", str(png), "--device", "cpu") == 0
    assert np.array_equal(np.asarray(Image.open(png)), grids["2.5"])
    capsys.readouterr()
    # A prior trained without class_dropout has no null class: one-line refusals.
    assert run_cli("sample", str(tiny_run), "--out", str(tmp_path / "no.png"), "--guidance", "2",
                   "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "--guidance" in err and "class_dropout > 0" in err and len(err.strip().splitlines()) == 1
    assert run_cli("sample", str(out), "--out", str(tmp_path / "no.png"), "--guidance", "-1") == 2
    assert "--guidance must be a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()
    # benchmarks/guidance.py rescores the run's own samples: its row at the run's scale repeats
    # metrics.json (same samples, the classifier retrained with the same seed).
    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "guidance.py"
    done = subprocess.run([sys.executable, str(bench), str(out), "--guidance", "1", "2.5",
                           "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout[done.stdout.index("\n["):])
    assert [r["guidance"] for r in rows] == [1.0, 2.5]
    for key in ("classifier_sample_accuracy", "classifier_frechet", "classifier_recon_accuracy"):
        assert rows[1][key] == pytest.approx(metrics[key], abs=1e-6), key


@pytest.mark.parametrize("values, shown", [
    (["prior.class_dropout=0", "sample.guidance=2"], "sample.guidance"),  # no null class
    (["prior.class_dropout=1.5"], "'prior.class_dropout' must be a number in [0, 1)"),
    (["prior.class_dropout=0.1", "prior.class_conditional=false"], "unconditional"),
    (["prior.kind=maskgit", "prior.maskgit.class_dropout=0", "sample.guidance=2"],
     "prior.maskgit.class_dropout"),
    (["prior.kind=maskgit", "prior.maskgit.class_dropout=-0.5", "sample.guidance=1"],
     "'prior.maskgit.class_dropout' must be a number"),
    (["prior.class_dropout=0.1", "sample.guidance=-1"], "sample.guidance"),
])
def test_guidance_settings_are_checked_before_any_stage(values, shown, tmp_path, capsys):
    assert run_cli("run", "image", "--out", str(tmp_path / "x"), *sets(values)) == 2
    err = capsys.readouterr().err
    assert shown in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_sample_grid_has_one_row_per_class(tiny_run):
    # 10 classes x 2 samples, 32x32 upscaled x3 with 2-pixel padding.
    width, height = Image.open(tiny_run / "samples.png").size
    assert (width, height) == (2 + 2 * (96 + 2), 2 + 10 * (96 + 2))
    # Originals above reconstructions: 16 test images, 8 a row -> 4 rows.
    width, height = Image.open(tiny_run / "reconstructions.png").size
    assert (width, height) == (2 + 8 * 98, 2 + 4 * 98)


def test_report_embeds_media_and_shows_metrics(tiny_run):
    page = (tiny_run / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 2
    assert "<svg" in page  # loss curves and the usage histogram
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    shown = dict(re.findall(r'data-key="([^"]+)">([^<]*)<', page))
    assert float(shown["test_mse"]) == pytest.approx(metrics["test_mse"], rel=1e-3)
    assert int(shown["vqvae_steps"]) == metrics["vqvae_steps"]
    # Rebuilding gives the same page.
    assert run_cli("report", str(tiny_run)) == 0
    assert (tiny_run / "report.html").read_text() == page


def test_sample_and_reconstruct_commands(tiny_run, tmp_path, capsys):
    out = tmp_path / "new.png"
    assert run_cli("sample", str(tiny_run), "--out", str(out), "--temperature", "0.5",
                   "--device", "cpu") == 0
    assert Image.open(out).size == Image.open(tiny_run / "samples.png").size
    src = tmp_path / "in.png"
    Image.new("RGB", (40, 48), (200, 30, 30)).save(src)  # resized and centre-cropped to 32
    grid = tmp_path / "rec.png"
    assert run_cli("reconstruct", str(tiny_run), str(src), "--out", str(grid),
                   "--device", "cpu") == 0
    assert "PSNR" in capsys.readouterr().out
    assert Image.open(grid).size == (2 + 1 * 98, 2 + 2 * 98)


def test_resume_of_a_finished_run_keeps_its_weights(tiny_run):
    weights = (tiny_run / "vqvae" / "ckpt" / "latest").read_text()
    assert run_cli("run", "image", "--out", str(tiny_run), "--resume", "--device", "cpu",
                   "--no-progress") == 0
    assert (tiny_run / "vqvae" / "ckpt" / "latest").read_text() == weights


def test_seed_alone_decides_the_initial_weights(seed_decides_initial_weights):
    seed_decides_initial_weights(lambda out: ["run", "image", "--out", str(out), "--device", "cpu",
                                              "--no-progress", *sets(BUILTIN_TINY)])


def test_existing_run_dir_is_never_overwritten(tiny_run, capsys):
    before = (tiny_run / "metrics.json").read_text()
    assert run_cli("run", "image", "--out", str(tiny_run), "--no-progress") == 2
    assert "--resume" in capsys.readouterr().err
    assert (tiny_run / "metrics.json").read_text() == before


def test_unknown_key_names_the_keys_that_exist(tmp_path, capsys):
    assert run_cli("run", "image", "--out", str(tmp_path / "x"), "--set", "vqvae.nope=1") == 2
    err = capsys.readouterr().err
    assert "nope" in err and "num_codes" in err
    assert not (tmp_path / "x").exists()


def test_unknown_preset_lists_presets(tmp_path, capsys):
    assert run_cli("run", "image", "--preset", "nope", "--out", str(tmp_path / "x")) == 2
    assert "builtin" in capsys.readouterr().err


@pytest.mark.skipif(not CIFAR.is_dir(), reason=f"real CIFAR-10 folders not found at {CIFAR}")
def test_cifar10_preset_reads_the_jpeg_folders(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "cifar"
    assert run_cli("run", "image", "--preset", "cifar10", "--data", str(CIFAR), "--out", str(out),
                   "--device", "cpu", "--no-progress", *sets(TINY)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["latent_shape"] == [8, 8]
    assert "test_mse_over_variance" in metrics and "test_perplexity" in metrics
    # Real photographs: the variance of CIFAR-10 pixels in [0, 1] is about 0.06.
    assert 0.04 < metrics["data_variance"] < 0.08


def test_the_saved_vqvae_reports_the_bits_per_dim_of_metrics_json(tiny_run):
    """The Gaussian decoder's sigma, fitted after training, is saved with the weights: the model
    reloaded from the run (or its export) gives the run's reconstruction bits/dim."""
    from vqkit.bundle import load_model
    from vqkit.config import load_config
    from vqkit.models import to_model
    from vqkit.runs import load_recipe, read_run_config

    recipe = load_recipe("image")
    cfg = load_config(recipe.CONFIG, read_run_config(tiny_run))
    vqvae = load_model(tiny_run / "vqvae", device="cpu").eval()
    assert vqvae.likelihood.sigma != 0.05  # not the default: the fitted value
    _, test = recipe.datasets(cfg)
    bits, count = 0.0, 0
    with torch.no_grad():
        for x, _ in recipe.loader(test, cfg.eval_batch_size):
            x = to_model(x)
            bits += vqvae.likelihood.nll_bits_per_dim(vqvae.decode_params(vqvae.encode(x)), x).sum()
            count += len(x)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert float(bits) / count == pytest.approx(metrics["recon_bits_per_dim"], rel=1e-6)


def test_builders_hold_the_recipe_defaults():
    """The recipe config's model sections are the builders' arguments: with no preset, the
    recipe builds exactly the models ``vqvae_image()`` and ``gated_pixelcnn()`` give."""
    from vqkit.config import builder_kwargs
    from vqkit.models import gated_pixelcnn, maskgit, vqvae_image
    from vqkit.runs import load_recipe

    cfg = load_recipe("image").CONFIG()
    for builder, section, data in (
        (vqvae_image, cfg.vqvae, {}),
        (gated_pixelcnn, cfg.prior, {"num_codes": 512, "num_classes": 10}),
        (maskgit, cfg.prior.maskgit, {"num_codes": 512, "grid": [8, 8], "num_classes": 10}),
    ):
        torch.manual_seed(0)
        mine = builder(**data, **builder_kwargs(section))
        torch.manual_seed(0)
        plain = builder(**data)
        assert repr(mine) == repr(plain)
        a, b = mine.state_dict(), plain.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    q = vqvae_image().quantizer
    assert (q.ema, q.kmeans_init, q.restart_after) == (True, True, 100)
