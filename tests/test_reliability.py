"""Reliability of the CLI (issue 21): a run directory is claimed, not shared; a failed command
changes nothing of a run; a damaged file is named in one line; resume falls back to an intact
checkpoint; export refuses a broken run. Tiny image runs on the CPU (seconds)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from vqkit.cli import main

TINY = [
    "vqvae.hidden=16", "vqvae.res_hidden=8", "vqvae.num_codes=16", "vqvae.code_dim=8",
    "vqvae_train.steps=4", "vqvae_train.ckpt_every=2", "vqvae_train.batch_size=8",
    "vqvae_train.log_every=2", "prior.channels=8", "prior.num_layers=2",
    "prior_train.steps=2", "prior_train.batch_size=8", "prior_train.log_every=2",
    "sample.per_class=1", "eval_batch_size=64", "data.train_size=32", "data.test_size=8",
    "eval.classifier_steps=2", "eval.classifier_channels=4", "eval.samples=10",
]  # fmt: skip


def sets(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def run_image(out: Path | str, *extra: str) -> int:
    return main(["run", "image", "--out", str(out), "--no-progress", "--device", "cpu",
                 *sets(TINY), *extra])  # fmt: skip


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert run_image(out) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    return copy


def error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


# --- 1. a run directory is claimed, not shared ------------------------------------------------


def test_out_into_a_foreign_non_empty_folder_is_refused(tmp_path, capsys):
    (tmp_path / "report.html").write_text("mine")
    assert run_image(tmp_path) == 2
    msg = error(capsys)
    assert str(tmp_path) in msg and "another --out" in msg and "--resume" in msg
    assert run_image(tmp_path, "--resume") == 2  # not "no run yet; starting it"
    assert "no vqkit run" in error(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert (tmp_path / "report.html").read_text() == "mine"


def test_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_image("") == 2
    assert "--out is empty" in error(capsys)
    assert not list(tmp_path.iterdir())


def test_out_into_an_empty_folder_is_fine(finished_run):
    assert (finished_run / "config.yaml").is_file()  # the fixture's run went into a new folder


# --- 2. a failed command changes nothing of a run ----------------------------------------------


def test_failed_resume_leaves_the_run_byte_identical(run_copy, capsys):
    before = tree_hashes(run_copy)
    assert run_image(run_copy, "--resume", "--set", "vqvae.num_codes=512") == 2
    msg = error(capsys)
    assert "vqvae.num_codes: 16 -> 512" in msg and "keeps its model" in msg
    assert tree_hashes(run_copy) == before
    args = ["run", "image", "--out", str(run_copy), "--resume", "--no-progress"]
    assert main([*args, "--device", "bogus"]) == 2
    assert "bogus" in error(capsys)
    assert main([*args, "--set", "prior_train.device=bogus"]) == 2
    assert "bogus" in error(capsys)
    assert main([*args, "--preset", "cifar10"]) == 2
    assert "--preset" in error(capsys)
    assert tree_hashes(run_copy) == before
    assert main([*args, "--device", "cpu"]) == 0  # the run still resumes


def test_bad_device_on_a_fresh_run_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "fresh"
    assert run_image(out, "--device", "bogus") == 2
    assert "bogus" in error(capsys)
    assert not out.exists()


# --- 6. output paths are checked before work starts --------------------------------------------


def test_out_below_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert run_image(tmp_path / "afile" / "sub") == 2
    assert "afile" in error(capsys)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_folder_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert run_image(locked / "run") == 2
        assert "permission" in error(capsys)
    finally:
        locked.chmod(0o700)


def test_sample_out_below_a_file_or_onto_a_folder_is_refused(finished_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "x.png", tmp_path):
        assert main(["sample", str(finished_run), "--out", str(out), "--device", "cpu"]) == 2
        assert str(out) in error(capsys)


def test_damaged_config_yaml_is_named_in_one_line(run_copy, tmp_path, capsys):
    (run_copy / "config.yaml").write_text("modality: image\ndata: [unclosed\n  vqvae: {\n")
    for argv in (["sample", str(run_copy)], ["report", str(run_copy)],
                 ["export", str(run_copy), str(tmp_path / "b")],
                 ["run", "image", "--out", str(run_copy), "--resume"]):  # fmt: skip
        assert main(argv) == 2, argv
        msg = error(capsys)
        assert str(run_copy / "config.yaml") in msg and "damaged" in msg, argv


def test_runs_lists_the_others_and_reports_a_damaged_run(finished_run, tmp_path, capsys):
    parent = tmp_path / "runs"
    parent.mkdir()
    shutil.copytree(finished_run, parent / "good")
    shutil.copytree(finished_run, parent / "bad")
    (parent / "bad" / "config.yaml").write_bytes(b"modality: [\n")
    assert main(["runs", str(parent)]) == 0
    out = capsys.readouterr()
    lines = {line.split()[0]: line for line in out.out.splitlines()[1:]}
    assert "finished" in lines["good"] and "damaged" in lines["bad"]


def test_runs_without_a_runs_folder_says_how_to_make_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["runs"]) == 2
    msg = error(capsys)
    assert "no runs folder" in msg and "vqkit run" in msg


# --- 5. every config value is range-checked, naming its key -----------------------------------


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("eval_batch_size=0", "eval_batch_size"),
        ("vqvae.quantizer.beta=-1", "vqvae.quantizer.beta"),
        ("vqvae_train.steps=0", "'vqvae_train.steps' must be >= 1"),
        ("prior_train.batch_size=0", "'prior_train.batch_size'"),
        ("vqvae_train.lr=0", "lr"),
        ("vqvae.hidden=0", "'vqvae.hidden' must be an int >= 1"),
        ("vqvae.code_dim=0", "code_dim"),
        ("vqvae.res_hidden=0", "res_hidden"),
        ("vqvae.num_codes=0", "num_codes"),
    ],
)
def test_out_of_range_values_name_the_key(tmp_path, capsys, override, named):
    out = tmp_path / "run"
    assert run_image(out, "--set", override) == 2
    msg = error(capsys)
    assert named in msg and "must be" in msg, msg
    if "vqvae." not in override or "quantizer" in override:  # checked before config.yaml
        assert not out.exists()


def test_a_run_that_failed_before_training_starts_again_without_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_image(out, "--set", "vqvae.hidden=0") == 2  # fails building the model
    assert "hidden" in error(capsys)
    assert run_image(out) == 0  # not "already holds a run": nothing was trained


# --- 3. resume falls back to the newest checkpoint that loads ----------------------------------


def test_resume_falls_back_past_a_truncated_latest_checkpoint(run_copy, caplog, capsys):
    ckpt = run_copy / "vqvae" / "ckpt"
    latest = ckpt / (ckpt / "latest").read_text().strip()
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (run_copy / "prior" / "ckpt" / "latest").unlink()  # the prior trains again on the codes
    with caplog.at_level("INFO", logger="vqkit.train"):
        assert main(["run", "image", "--out", str(run_copy), "--resume", "--no-progress"]) == 0
    (used,) = [
        r.getMessage() for r in caplog.records if "newest checkpoint that loads" in r.message
    ]
    assert "step_00000002" in used and "truncated" in used and str(weights) in used


def test_resume_with_no_loadable_checkpoint_says_why_for_each(run_copy, capsys):
    ckpt = run_copy / "vqvae" / "ckpt"
    for step in ckpt.glob("step_*"):
        (step / "trainer.pt").write_bytes(b"")
    assert main(["run", "image", "--out", str(run_copy), "--resume", "--no-progress"]) == 1
    msg = error(capsys)
    assert "no checkpoint in" in msg and msg.count("empty file (0 bytes)") == 2, msg


# --- 4. export verifies what it packages; a pin covers a bundle folder -------------------------


@pytest.mark.parametrize("damage", ["empty", "truncated", "model.json"])
def test_export_refuses_a_broken_checkpoint(run_copy, tmp_path, capsys, damage):
    ckpt = run_copy / "prior" / "ckpt"
    latest = ckpt / (ckpt / "latest").read_text().strip()
    weights = latest / "model.safetensors"
    if damage == "empty":
        weights.write_bytes(b"")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    else:  # a config that no longer fits the weights
        (latest / "model.json").write_text((latest / "model.json").read_text().replace(
            '"channels": 8', '"channels": 12'))  # fmt: skip
    out = tmp_path / "bundle.zip"
    assert main(["export", str(run_copy), str(out)]) == 1
    msg = error(capsys)
    assert "cannot export" in msg and str(latest) in msg, msg
    assert not out.exists()


def test_a_sha256_pin_covers_a_bundle_folder(finished_run, tmp_path):
    from vqkit.bundle import BundleError, load_bundle

    out = tmp_path / "bundle"
    assert main(["export", str(finished_run), str(out)]) == 0
    digest = hashlib.sha256((out / "metadata.json").read_bytes()).hexdigest()
    assert set(load_bundle(f"{out}#sha256={digest}")) == {"prior", "vqvae"}
    with pytest.raises(BundleError, match="metadata.json"):
        load_bundle(f"{out}#sha256={'0' * 64}")


def test_threads_below_one_names_the_key():
    from vqkit.config import ConfigError, load_config
    from vqkit.pipeline import check_run_config
    from vqkit.runs import load_recipe, preset_path

    cfg = load_config(load_recipe("audio").CONFIG, preset_path("audio", "builtin"), ["threads=0"])
    with pytest.raises(ConfigError, match="'threads' must be >= 1"):
        check_run_config(cfg)


# --- 7. messages name what a CLI user can change -----------------------------------------------


@pytest.mark.parametrize("command", ["sample", "convert"])
def test_interrupt_outside_a_run_does_not_suggest_resume(finished_run, capsys, monkeypatch,
                                                        command):  # fmt: skip
    import vqkit.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(vqkit.cli, f"_{command}", interrupted)
    argv = {"sample": ["sample", str(finished_run)],
            "convert": ["convert", str(finished_run), "--source", "a.wav", "--speaker", "x",
                        "--out", "b.wav"]}[command]  # fmt: skip
    assert main(argv) == 130
    msg = error(capsys)
    assert msg == "vqkit: interrupted" and "--resume" not in msg


def test_hints_name_the_cli_settings(tmp_path, monkeypatch):
    import torchvision
    from PIL import Image

    from vqkit.datasets import ImageFolder, build_image_dataset
    from vqkit.datasets.images import CIFAR10
    from vqkit.datasets.video import VideoError, VideoFolder
    from vqkit.errors import InputError
    from vqkit.train.device import resolve_device

    with pytest.raises(FileNotFoundError, match="--set data.download=true"):
        CIFAR10(tmp_path, split="train")

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(InputError, match="could not download CIFAR-10.*check the network"):
        CIFAR10(tmp_path, split="train", download=True)

    images = tmp_path / "images" / "train" / "a"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "good.png")
    (images / "bad.png").write_bytes(b"not a png")
    with pytest.warns(RuntimeWarning, match="--set data.strict=true"):
        [item for item in ImageFolder(images.parent)]  # noqa: C416 - reads every item
    strict = build_image_dataset("folder", root=images.parents[1], strict=True)
    with pytest.raises(Exception, match="bad.png"):
        [item for item in strict]  # noqa: C416

    videos = tmp_path / "videos" / "a"
    videos.mkdir(parents=True)
    (videos / "broken.webm").write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError, match="--set data.skip_bad_videos=true"):
        VideoFolder(videos.parent, clip_length=4, size=16)

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device cpu"):
            resolve_device("cuda")


def test_convert_and_export_outputs_are_checked_first(finished_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    source = tmp_path / "in.wav"
    source.write_bytes(b"")
    assert main(["convert", str(finished_run), "--source", str(source), "--speaker", "x",
                 "--out", str(tmp_path)]) == 2  # fmt: skip
    assert "is a folder" in error(capsys)
    assert main(["export", str(finished_run), str(tmp_path / "afile" / "b.zip")]) == 2
    assert "afile" in error(capsys)
