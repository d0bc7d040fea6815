"""Reliability of the CLI (issue 21): a run directory is claimed, not shared; a failed command
changes nothing of a run; a damaged file is named in one line; resume falls back to an intact
checkpoint; export refuses a broken run. Tiny image runs on the CPU (seconds)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
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
    return error_of(capsys.readouterr().err)


def error_of(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    return lines[0]


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
    assert not out.exists()  # checked before anything of the run is written


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


@pytest.mark.parametrize(
    ("modality", "override", "message"),
    [
        ("audio", "threads=0", "'threads' must be >= 1"),
        ("audio", "vqvae.crop=0", "'vqvae.crop' must be >= 1"),
        ("audio", "data.sample_rate=0", "'data.sample_rate' must be >= 1"),
        ("audio", "data.min_seconds=-1", "'data.min_seconds' must be >= 0"),
        ("audio", "convert.seconds=0", "'convert.seconds' must be > 0"),
        ("audio", "eval.classifier_crop=0", "'eval.classifier_crop' must be >= 1"),
        ("image", "sample.per_class=0", "'sample.per_class' must be >= 1"),
        ("image", "data.image_size=4", "'data.image_size' must be >= 8"),
        ("video", "eval_batch_size=0", "'eval_batch_size' must be >= 1"),
        ("video", "predict.fps=0", "'predict.fps' must be > 0"),
    ],
)
def test_recipe_values_are_range_checked_as_they_are_read(modality, override, message):
    from vqkit.config import ConfigError, load_config
    from vqkit.runs import load_recipe, preset_path

    cls = load_recipe(modality).CONFIG
    with pytest.raises(ConfigError, match=message):
        load_config(cls, preset_path(modality, "builtin"), [override])
    if modality == "audio":  # an Optional size may still be None
        assert load_config(cls, None, ["eval.classifier_crop=null"]).eval.classifier_crop is None


@pytest.mark.parametrize("override", ["vqvae.code_dim=0", "vqvae.n_mels=0", "vqvae.hidden=0"])
def test_audio_builder_sizes_name_the_key_before_anything_is_written(tmp_path, capsys, override):
    out = tmp_path / "run"
    assert run_audio(out, speech_folder(tmp_path / "speech"), "--set", override) == 2
    key = override.split("=")[0]
    assert f"config key '{key}' must be an int >= 1" in error(capsys)
    assert not out.exists()


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


# --- 1. bad audio files are skipped, named and counted, or refused with data.strict ------------

AUDIO_TINY = [
    "threads=1", "data.sample_rate=8000", "vqvae.strides=[2]", "vqvae.hidden=8",
    "vqvae.res_hidden=4", "vqvae.num_res_blocks=1", "vqvae.num_codes=16", "vqvae.code_dim=4",
    "vqvae.residual_channels=6", "vqvae.layers_per_stack=3", "vqvae.stacks=1", "vqvae.crop=512",
    "vqvae_train.steps=2", "vqvae_train.batch_size=4", "vqvae_train.log_every=1",
    "prior.residual_channels=6", "prior.layers_per_stack=2", "prior.stacks=1", "prior.crop=16",
    "prior_train.steps=2", "prior_train.batch_size=4", "prior_train.log_every=1",
    "convert.sources=1", "convert.max_targets=2", "convert.seconds=0.05",
    "eval.classifier_steps=2", "eval.abx_triples=20",
]  # fmt: skip


def speech_folder(root: Path, *bad: str) -> Path:
    """Two speakers with six 0.3 s tones each (bob5 and carol0 fall in the test split), and the
    bad files named: ``short`` (bob/tiny.wav, 10 samples), ``nan`` (carol/nan.wav), ``loud``
    (carol/loud.wav, a float file peaking at 8)."""
    t = np.arange(2400) / 8000
    for k, speaker in enumerate(("bob", "carol")):
        (root / speaker).mkdir(parents=True)
        for i in range(6):
            tone = 0.3 * np.sin(2 * np.pi * (200 + 50 * i + 300 * k) * t)
            sf.write(root / speaker / f"{speaker}{i}.wav", tone.astype(np.float32), 8000)
    if "short" in bad:
        sf.write(root / "bob" / "tiny.wav", np.full(10, 0.1, np.float32), 8000)
    if "nan" in bad:
        nan = (0.3 * np.sin(np.arange(2400) / 3)).astype(np.float32)
        nan[100] = np.nan
        sf.write(root / "carol" / "nan.wav", nan, 8000, subtype="FLOAT")
    if "loud" in bad:
        loud = (8 * np.sin(np.arange(2400) / 5)).astype(np.float32)
        sf.write(root / "carol" / "loud.wav", loud, 8000, subtype="FLOAT")
    return root


def run_audio(out: Path, data: Path, *extra: str) -> int:
    return main(["run", "audio", "--preset", "folder", "--out", str(out), "--data", str(data),
                 "--no-progress", "--device", "cpu", *sets(AUDIO_TINY), *extra])  # fmt: skip


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("audio")
    data = speech_folder(tmp / "speech", "short", "nan", "loud")
    with pytest.warns(RuntimeWarning) as caught:
        assert run_audio(tmp / "run", data) == 0
    return tmp / "run", data, [str(w.message) for w in caught]


def test_bad_audio_files_are_skipped_named_and_counted_in_metrics(audio_run):
    run, _, warned = audio_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["skipped_files"] == 3 and metrics["train_utterances"] == 10
    reasons = {Path(s["file"]).name: s["reason"] for s in metrics["skipped"]}
    assert set(reasons) == {"tiny.wav", "nan.wav", "loud.wav"}
    assert "too short" in reasons["tiny.wav"] and "data.min_seconds" in reasons["tiny.wav"]
    assert "NaN" in reasons["nan.wav"] and "peaks at 8" in reasons["loud.wav"]
    for name in reasons:  # one warning each, naming the file and the strict setting
        (message,) = [m for m in warned if name in m]
        assert "--set data.strict=true" in message


@pytest.mark.parametrize("bad", ["short", "nan", "loud"])
def test_data_strict_makes_a_bad_audio_file_an_error(tmp_path, capsys, bad):
    data = speech_folder(tmp_path / "speech", bad)
    out = tmp_path / "run"
    assert run_audio(out, data, "--set", "data.strict=true") == 2
    name = {"short": "tiny.wav", "nan": "nan.wav", "loud": "loud.wav"}[bad]
    assert name in error(capsys)
    assert not out.exists()  # refused before anything of the run is written


def test_convert_refuses_one_bad_source_and_skips_bad_ones_of_many(audio_run, tmp_path, capsys):
    run, data, _ = audio_run
    one = ["convert", str(run), "--speaker", "carol", "--out", str(tmp_path / "a.wav")]
    assert main([*one, "--source", str(data / "bob" / "tiny.wav")]) == 2
    msg = error(capsys)
    assert "tiny.wav is too short" in msg and not (tmp_path / "a.wav").exists()
    many = ["convert", str(run), "--source", str(data / "carol"), "--speaker", "bob",
            "--out-dir", str(tmp_path / "many"), "--no-progress"]  # fmt: skip
    with pytest.warns(RuntimeWarning) as caught:
        assert main(many) == 0
    messages = " ".join(str(w.message) for w in caught)
    assert "nan.wav holds NaN" in messages and "loud.wav peaks at 8" in messages
    assert "pass --strict" in messages
    # nan.wav failed part-way through its output: the partial file is removed.
    written = sorted(p.name for p in (tmp_path / "many").iterdir())
    assert written == [f"carol{i}_to_bob.wav" for i in range(6)]
    assert "2 unusable source(s) skipped" in capsys.readouterr().out
    strict = tmp_path / "strict"
    assert main([*many[:-3], "--out-dir", str(strict), "--strict", "--no-progress"]) == 2
    assert "loud.wav" in error(capsys)
    assert not list(strict.iterdir())  # refused before any conversion


def test_audio_outputs_take_the_format_of_their_extension(audio_run, tmp_path, capsys):
    run, data, _ = audio_run
    source = str(data / "bob" / "bob0.wav")
    for suffix, fmt in ((".flac", "FLAC"), (".ogg", "OGG"), (".wav", "WAV")):
        out = tmp_path / f"conv{suffix}"
        argv = ["convert", str(run), "--source", source, "--speaker", "carol", "--out", str(out)]
        assert main([*argv, "--no-progress"]) == 0
        assert sf.info(str(out)).format == fmt
    assert main(["sample", str(run), "--out", str(tmp_path / "s.flac")]) == 0
    assert sf.info(str(tmp_path / "s.flac")).format == "FLAC"
    capsys.readouterr()
    for command in (["sample", str(run)], ["convert", str(run), "--source", source, "--speaker",
                                            "carol"]):  # fmt: skip
        assert main([*command, "--out", str(tmp_path / "x.mp3")]) == 2
        assert "unknown extension '.mp3'; use .wav, .flac, .ogg" in error(capsys)
        assert not (tmp_path / "x.mp3").exists()


# --- 6. reconstruct says what it does to the inputs; long stages show progress ----------------


def test_reconstruct_states_the_resize_and_the_size_psnr_is_measured_at(finished_run, tmp_path,
                                                                        capsys):  # fmt: skip
    from PIL import Image

    photo = tmp_path / "wide.png"
    Image.new("RGB", (96, 48), (200, 30, 30)).save(photo)
    assert main(["reconstruct", str(finished_run), str(photo), "--out", str(tmp_path / "r.png"),
                 "--device", "cpu"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "resized (shorter side to 32 px) and centre-cropped to 32x32" in out
    assert "PSNR is measured at 32x32" in out and "wide.png: PSNR" in out


def test_the_festival_corpus_build_shows_progress_over_utterances(tmp_path, monkeypatch, capsys):
    from vqkit.datasets import speech_corpus

    def fake_batch(exe, spk, jobs, out, tmp, sample_rate):  # no festival needed
        return [{"id": utt, "phone_set": ["a"], "num_samples": 8} for utt, _ in jobs]

    monkeypatch.setattr(speech_corpus, "_festival", lambda: "festival")
    monkeypatch.setattr(speech_corpus, "_festival_version", lambda exe: "test")
    monkeypatch.setattr(speech_corpus, "_run_batch", fake_batch)
    speech_corpus.build_speech_corpus(tmp_path / "speech", num_sentences=2)
    total = 2 * len(speech_corpus.SPEAKERS)
    err = capsys.readouterr().err
    assert "festival corpus" in err and f"{total}/{total}" in err and "utt" in err


def test_audio_encoding_shows_progress(audio_run, capsys):
    from recipes.audio import evaluate as ev
    from vqkit.datasets.utterances import load_utterances
    from vqkit.pipeline import load_stages

    run, data, _ = audio_run
    test = load_utterances("folder", "test", root=data, sample_rate=8000)
    dev, (vqvae,) = load_stages(run, "cpu", "vqvae")
    codes = ev.encode_split(vqvae, test, ["bob", "carol"], dev, progress=True)
    assert len(codes) == len(test.audio)
    err = capsys.readouterr().err
    assert "encode:" in err and f"/{len(test.audio)} [" in err


def test_the_audio_decode_stage_shows_progress_and_decodes_the_same(audio_run, capsys):
    from recipes.audio import evaluate as ev
    from recipes.audio import generate as generation
    from recipes.audio.recipe import AudioRecipeConfig
    from vqkit.config import load_config
    from vqkit.datasets.utterances import load_utterances
    from vqkit.pipeline import load_stages

    run, data, _ = audio_run
    cfg = load_config(AudioRecipeConfig, run / "config.yaml")
    test = load_utterances("folder", "test", root=data, sample_rate=8000)
    dev, (vqvae, prior) = load_stages(run, "cpu", "vqvae", "prior")
    codes = ev.encode_split(vqvae, test, ["bob", "carol"], dev)
    args = (vqvae, None, prior, cfg, test, codes, [0], ["bob", "carol"], dev)
    plain = generation.decode_matrix(*args)
    capsys.readouterr()
    shown = generation.decode_matrix(*args, progress=True)
    assert all(torch.equal(a, b) for a, b in zip(plain["wavs"], shown["wavs"]))
    err = capsys.readouterr().err
    assert "prior samples:" in err and "decode:" in err  # the WaveNet decoder, over samples


def test_no_message_reachable_from_the_cli_names_a_python_argument():
    import re

    root = Path(__file__).resolve().parents[1]
    python_args = re.compile(
        r"pass (strict|download|split|on_error|overwrite)=|device='cpu'|in Python"
    )
    for path in [*(root / "vqkit").rglob("*.py"), *(root / "recipes").rglob("*.py")]:
        for line in path.read_text().splitlines():
            if line.lstrip().startswith(('f"', '"', "f'")) and python_args.search(line):
                # The VCTK class is Python-only (the recipe reads VCTK folders without it).
                assert "VCTK 0.92 not found" in line, f"{path}: {line.strip()}"


def test_bad_images_are_skipped_and_counted_in_metrics(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "images" / split / "a").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(
                tmp_path / "images" / split / "a" / f"{i}.png"
            )
    (tmp_path / "images" / "train" / "a" / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="bad.png"):
        assert run_image(out, "--preset", "folder", "--data", str(tmp_path / "images"),
                         *sets(["vqvae_train.batch_size=4", "prior_train.batch_size=4"])) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_files"] == 1 and metrics["skipped"][0].endswith("bad.png")


def test_the_evaluation_stages_show_progress(tmp_path, capsys):
    from vqkit.metrics.conversion import train_classifier

    waves = [torch.randn(800) * 0.1 for _ in range(4)]
    train_classifier(waves, [0, 1, 0, 1], sample_rate=8000, num_classes=2, steps=3,
                     channels=4, progress="speaker classifier")  # fmt: skip
    assert "speaker classifier:" in capsys.readouterr().err
    argv = ["run", "image", "--out", str(tmp_path / "run"), "--device", "cpu", *sets(TINY)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "encode:" in err and "eval:" in err


def test_resume_may_change_the_model_of_a_stage_not_trained_yet(run_copy, capsys):
    shutil.rmtree(run_copy / "prior")  # as if the run had stopped before its prior trained
    assert run_image(run_copy, "--resume", "--set", "prior.channels=12") == 0
    assert (run_copy / "prior" / "ckpt" / "latest").is_file()
    capsys.readouterr()
    assert run_image(run_copy, "--resume", "--set", "prior.channels=16") == 2  # now it is trained
    assert "prior.channels: 12 -> 16" in error(capsys)


def test_a_prior_size_its_builder_refuses_ends_the_command_before_any_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_image(out, "--set", "prior.channels=0") == 2
    assert "'prior.channels' must be an int >= 1" in error(capsys)
    assert not out.exists()


def test_units_skips_and_counts_bad_files_of_its_data(audio_run, tmp_path, capsys):
    run, _, _ = audio_run
    recordings = tmp_path / "fsdd" / "recordings"  # FSDD's layout: index < 5 is the test split
    recordings.mkdir(parents=True)
    t = np.arange(2400) / 8000
    for digit in range(2):
        for speaker in ("bob", "carol"):
            tone = 0.3 * np.sin(2 * np.pi * (300 + 200 * digit) * t)
            sf.write(recordings / f"{digit}_{speaker}_0.wav", tone.astype(np.float32), 8000)
    sf.write(recordings / "1_bob_1.wav", np.full(10, 0.1, np.float32), 8000)  # too short
    with pytest.warns(RuntimeWarning, match="1_bob_1.wav is too short"):
        assert main(["units", str(run), "--data", str(tmp_path / "fsdd"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "4 held-out utterances, words labels (1 unusable files skipped)" in out
    assert "no k-means baselines: they are fit on the training split" in out  # no train files


def test_the_video_encoding_and_prediction_stages_show_progress(tmp_path, capsys):
    tiny = [
        "data.num_frames=8", "data.context_frames=2", "data.frame_size=16", "data.train_size=8",
        "data.test_size=4", "vqvae.hidden=8", "vqvae.res_hidden=4", "vqvae.num_res_blocks=1",
        "vqvae.num_codes=16", "vqvae.code_dim=4", "vqvae_train.steps=2", "vqvae_train.batch_size=4",
        "prior.dim=16", "prior.num_layers=1", "prior.num_heads=2", "prior_train.steps=2",
        "prior_train.batch_size=4", "predict.rollouts=4", "predict.upscale=1", "eval_batch_size=4",
    ]  # fmt: skip
    argv = ["run", "video", "--out", str(tmp_path / "run"), "--device", "cpu", *sets(tiny)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "encode:" in err and "predict:" in err


# --- 2b. every model's settings are checked before the first stage trains --------------------


@pytest.mark.parametrize(
    "bad, named",
    [
        (["prior.kind=maskgit", "prior.maskgit.patch=3"], "prior.maskgit"),  # 8x8 codes
        # residual VQ builds, but no prior models several codes a position
        (["vqvae.quantizer.kind=residual", "vqvae.quantizer.levels=2"], "vqvae.quantizer.kind"),
    ],
)
def test_a_bad_prior_setting_fails_before_the_vqvae_trains(tmp_path, capsys, bad, named):
    out = tmp_path / "fresh"
    assert run_image(out, *sets(bad)) == 2
    captured = capsys.readouterr()
    assert named in error_of(captured.err)
    assert "stage vqvae" not in captured.out  # refused before the first stage began
    assert not out.exists()


@pytest.mark.parametrize("recipe", ["audio", "video"])
def test_audio_and_video_check_the_prior_before_the_vqvae_trains(tmp_path, capsys, recipe):
    out, bad = tmp_path / "fresh", ["vqvae.quantizer.kind=residual", "vqvae.quantizer.levels=2"]
    if recipe == "audio":
        code = run_audio(out, speech_folder(tmp_path / "speech"), *sets(bad))
    else:
        tiny = ["data.num_frames=8", "data.context_frames=2", "data.frame_size=16",
                "data.train_size=8", "data.test_size=4", "vqvae.hidden=8", "vqvae.res_hidden=4"]  # fmt: skip
        argv = ["run", "video", "--out", str(out), "--device", "cpu", "--no-progress"]
        code = main([*argv, *sets(tiny + bad)])
    assert code == 2
    captured = capsys.readouterr()
    assert "vqvae.quantizer.kind" in error_of(captured.err)
    assert "stage vqvae" not in captured.out and not out.exists()


def test_a_nested_builder_section_refusal_names_the_section(tmp_path, capsys):
    out = tmp_path / "fresh"
    assert run_image(out, "--set", "vqvae.quantizer.kind=residual") == 2  # no levels given
    msg = error(capsys)
    assert msg.startswith("vqkit: error: vqvae.quantizer: kind 'residual' needs levels=")
    assert "--set vqvae.quantizer.<key>=<value>" in msg and not out.exists()
