"""`vqkit convert` for real use: many sources and speakers in batches, folders, long inputs in
chunks, the speakers listed; on a tiny run of the fsdd preset (the mel decoder, Griffin-Lim)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vqkit.cli import main
from vqkit.runs import load_recipe

SHARED = Path(
    os.environ.get("VQKIT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared/data")
)
FSDD = SHARED / "fsdd"
TINY = [
    "threads=1", "data.max_files=16", "vqvae.hidden=8", "vqvae.res_hidden=4",
    "vqvae.num_res_blocks=1", "vqvae.num_codes=16", "vqvae.code_dim=4", "vqvae.crop=512",
    "vqvae_train.steps=4", "vqvae_train.warmup_steps=2", "vqvae_train.batch_size=4",
    "prior.residual_channels=4", "prior.layers_per_stack=1", "prior.stacks=1", "prior.crop=4",
    "prior_train.steps=2",
    "prior_train.batch_size=4", "convert.sources=1", "convert.max_targets=2",
    "convert.seconds=0.1", "eval.classifier_steps=1", "eval.abx_triples=10",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    if not FSDD.is_dir():
        pytest.skip(f"FSDD not found at {FSDD} (set VQKIT_SHARED_DATA)")
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "fsdd"
    sets = [x for v in TINY for x in ("--set", v)]
    argv = ["run", "audio", "--preset", "fsdd", "--data", str(FSDD), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--no-progress", *sets]) == 0
    return out


def _sources(tmp_path: Path) -> list[Path]:
    files = sorted((FSDD / "recordings").glob("3_*_4.wav"))[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    out = []
    for f in files:
        wav, rate = sf.read(str(f))
        out.append(folder / f.name)
        sf.write(str(out[-1]), wav[: rate // 4], rate)  # 0.25 s each
    return out


def _convert(run: Path, *args: str) -> int:
    return main(["convert", str(run), "--device", "cpu", "--no-progress", *args])


def test_list_speakers(run, capsys):
    assert _convert(run, "--list-speakers") == 0
    assert capsys.readouterr().out.split() == ["george", "jackson", "lucas", "nicolas"]


def test_batch_writes_every_pair_and_equals_one_at_a_time(run, tmp_path):
    sources = _sources(tmp_path)
    out_dir = tmp_path / "out"
    args = ["--source", str(sources[0].parent), "--speaker", "george", "--speaker", "lucas"]
    assert _convert(run, *args, "--out-dir", str(out_dir)) == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted(f"{s.stem}_to_{t}.wav" for s in sources for t in ("george", "lucas"))
    for s in sources:
        for t in ("george", "lucas"):
            single = tmp_path / f"single_{s.stem}_{t}.wav"
            assert _convert(run, "--source", str(s), "--speaker", t, "--out", str(single)) == 0
            a, _ = sf.read(str(out_dir / f"{s.stem}_to_{t}.wav"))
            b, rate = sf.read(str(single))
            assert rate == 8000 and len(a) == len(b) == sf.info(str(s)).frames
            np.testing.assert_array_equal(a, b)


def test_a_long_input_is_converted_in_bounded_chunks(run, tmp_path, monkeypatch):
    wav, rate = sf.read(str(next((FSDD / "recordings").glob("5_jackson_*.wav"))))
    long = np.tile(wav, int(np.ceil(3 * rate / len(wav))))[: 3 * rate]  # 3 s
    source = tmp_path / "long.wav"
    sf.write(str(source), long, rate)
    generation = load_recipe("audio").generation
    seen = []
    real = generation.render

    def spy(vqvae, vocoder, codes, speaker, **kw):
        seen.append(codes.shape[-1] * vqvae.hop)
        return real(vqvae, vocoder, codes, speaker, **kw)

    monkeypatch.setattr(generation, "render", spy)
    out = tmp_path / "long_as_lucas.wav"
    assert _convert(run, "--source", str(source), "--speaker", "lucas", "--out", str(out),
                    "--chunk-seconds", "0.5") == 0  # fmt: skip
    assert len(seen) == 6 and max(seen) <= 0.5 * 8000 + 128  # one chunk (and its tail) a call
    assert sf.info(str(out)).frames == 3 * 8000


def test_out_takes_one_pair(run, tmp_path, capsys):
    sources = _sources(tmp_path)
    code = _convert(run, "--source", *map(str, sources), "--speaker", "george",
                    "--out", str(tmp_path / "x.wav"))  # fmt: skip
    assert code == 2 and "--out takes one source and one speaker" in capsys.readouterr().err


def test_the_report_shows_each_cell_with_its_verdict_and_log_mel(run):
    import json

    from PIL import Image

    media = json.loads((run / "media.json").read_text())
    cells = [m for m in media if m["path"].startswith(("conversions/", "reconstructions/"))]
    audio = [m for m in cells if m["kind"] == "audio"]
    assert audio and all("heard as " in m["title"] and "digit " in m["title"] for m in audio)
    pictures = [m for m in cells if m["kind"] == "image"]
    assert len(pictures) == len(audio)  # convert.sources=1 <= convert.pictures
    width, height = Image.open(run / pictures[0]["path"]).size
    assert height == 128 and width > 3 * 3 * 8  # three panels of 64 bands, upscaled
    assert "source | decoded | real" in pictures[0]["title"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["vocoder_count"] == 1 and 0 <= metrics["vocoder_content_rate"] <= 1
    assert (run / "vocoder").is_dir()  # the source's true log-mel through the vocoder alone


def test_heldout_speakers_are_converted_as_unseen_voices(tmp_path):
    if not FSDD.is_dir():
        pytest.skip(f"FSDD not found at {FSDD} (set VQKIT_SHARED_DATA)")
    import json

    out = tmp_path / "heldout"
    sets = [x for v in [*TINY, "data.heldout_speakers=[nicolas]"] for x in ("--set", v)]
    argv = ["run", "audio", "--preset", "fsdd", "--data", str(FSDD), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--no-progress", *sets]) == 0
    assert json.loads((out / "speakers.json").read_text()) == ["george", "jackson", "lucas"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_speakers"] == 3 and metrics["unseen_count"] == 2  # 1 source x 2 targets
    assert 0 <= metrics["unseen_speaker_rate"] <= 1 and 0 <= metrics["unseen_content_rate"] <= 1
    assert 0 <= metrics["speaker_probe_accuracy"] <= 1 and metrics["speaker_probe_chance"] > 0
    assert any("nicolas" in p.name for p in (out / "conversions").iterdir())


def test_a_crop_off_the_hop_is_refused_before_training(tmp_path, capsys):
    if not FSDD.is_dir():
        pytest.skip(f"FSDD not found at {FSDD} (set VQKIT_SHARED_DATA)")
    sets = [x for v in [*TINY, "vqvae.crop=500"] for x in ("--set", v)]
    argv = ["run", "audio", "--preset", "fsdd", "--data", str(FSDD), "--out", str(tmp_path / "r")]
    assert main([*argv, "--device", "cpu", "--no-progress", *sets]) == 2
    assert "vqvae.crop=500 must be a multiple of the hop 128" in capsys.readouterr().err
    assert not (tmp_path / "r" / "vqvae").exists()  # nothing trained


WAVENET_VOCODER = [
    "vocoder.kind=wavenet", "vocoder.wavenet.residual_channels=4",
    "vocoder.wavenet.layers_per_stack=2", "vocoder.wavenet.crop=256",
    "vocoder_train.steps=2", "vocoder_train.batch_size=4",
]  # fmt: skip


def test_the_wavenet_vocoder_is_trained_once_and_reused(tmp_path, monkeypatch, capsys):
    if not FSDD.is_dir():
        pytest.skip(f"FSDD not found at {FSDD} (set VQKIT_SHARED_DATA)")
    import json

    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "cache"))

    def run_fsdd(out, *extra):
        sets = [x for v in [*TINY, *WAVENET_VOCODER, *extra] for x in ("--set", v)]
        argv = ["run", "audio", "--preset", "fsdd", "--data", str(FSDD), "--out", str(out)]
        assert main([*argv, "--device", "cpu", "--no-progress", *sets]) == 0
        return json.loads((out / "metrics.json").read_text()), capsys.readouterr().out

    first, printed = run_fsdd(tmp_path / "a")
    assert first["vocoder_kind"] == "wavenet" and not first["vocoder_cached"]
    assert first["vocoder_steps"] == 2 and "training it once into" in printed
    second, printed = run_fsdd(tmp_path / "b")
    assert second["vocoder_cached"] and second["vocoder_cache_dir"] == first["vocoder_cache_dir"]
    assert f"reusing the one cached in {first['vocoder_cache_dir']}" in printed
    assert second["vocoder_count"] == first["vocoder_count"] == 1
    # Another mel setting (40 bands) is another vocoder.
    third, _ = run_fsdd(tmp_path / "c", "vqvae.n_mels=40")
    assert not third["vocoder_cached"] and third["vocoder_cache_dir"] != first["vocoder_cache_dir"]
    # The run keeps its own copy: convert works with the cache gone.
    import shutil

    shutil.rmtree(tmp_path / "cache")
    out = tmp_path / "x.wav"
    source = _sources(tmp_path)[0]
    assert _convert(tmp_path / "b", "--source", str(source), "--speaker", "lucas",
                    "--out", str(out)) == 0  # fmt: skip
    assert sf.info(str(out)).frames == sf.info(str(source)).frames
