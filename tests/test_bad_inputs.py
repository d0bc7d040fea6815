"""Bad inputs get a clear error naming the file and the fix, or are skipped and counted with a
warning (``strict=True`` turns skips into errors); never a crash deep inside torch.

Cases already proven elsewhere (not repeated here): truncated, header-only, junk and empty WAV,
zero-length and NaN/inf WAV, 8/16/24/32-bit and float WAV, stereo, other sample rates
(tests/datasets/test_audio.py); grayscale, RGBA, palette with transparency, 16-bit and truncated
images in an ImageFolder, strict mode, empty image folders (tests/datasets/test_images.py);
unknown speaker names, empty speaker folders, clips shorter than the crop (pad or skip)
(tests/datasets/test_audio.py); an unknown config key via the CLI
(tests/recipes/test_image_recipe.py); a checkpoint of a differently sized toy model
(tests/train/test_checkpoint.py).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vqkit.audio import AudioError, load_audio
from vqkit.cli import main
from vqkit.config import builder_kwargs, load_config, save_config
from vqkit.datasets import ImageError, ImageFolder, SpeakerAudioFolder, load_rgb
from vqkit.models import vqvae_image, vqvae_nd
from vqkit.runs import load_recipe, preset_path
from vqkit.train.checkpoint import CheckpointError, load_weights, save_checkpoint, save_latest


def _tone(n: int = 4000, sr: int = 8000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(n) / sr)).astype(np.float32)


# ----------------------------------------------------------------------------- audio files


def _flac_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, _tone(), 8000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


FLAC = _flac_bytes()
HALF = len(FLAC) // 2
BAD_FLACS = {
    "truncated.flac": FLAC[:HALF],
    "header_only.flac": FLAC[:60],
    "flipped.flac": FLAC[:HALF] + bytes(b ^ 0xFF for b in FLAC[HALF : HALF + 200]) + FLAC[HALF + 200 :],
    "magic_only.flac": b"fLaC" + bytes(100),
    "empty.flac": b"",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_FLACS))
def test_broken_flac_raises_audio_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FLACS[name])
    with pytest.raises(AudioError, match=name):
        load_audio(path)


def test_corrupt_wav_format_chunk(tmp_path):
    path = tmp_path / "bad_fmt.wav"
    sf.write(path, _tone(), 8000, subtype="PCM_24")
    raw = path.read_bytes()
    path.write_bytes(raw[:20] + b"\xff\xff" + raw[22:])  # an unknown sample format tag
    with pytest.raises(AudioError, match="bad_fmt.wav"):
        load_audio(path)


@pytest.fixture
def speaker_folder(tmp_path) -> Path:
    """Two good files and every kind of bad one, in one speaker's folder."""
    bob = tmp_path / "bob"
    bob.mkdir()
    sf.write(bob / "a_good.wav", _tone(), 8000, subtype="PCM_16")
    sf.write(bob / "b_good.flac", _tone(), 8000, subtype="PCM_24")
    nan, inf = _tone(), _tone()
    nan[10], inf[10] = np.nan, np.inf
    sf.write(bob / "c_nan.wav", nan, 8000, subtype="FLOAT")
    sf.write(bob / "d_inf.wav", inf, 8000, subtype="DOUBLE")
    (bob / "e_truncated.flac").write_bytes(FLAC[:HALF])  # header fine, data cut short
    sf.write(bob / "f_zero.wav", np.zeros(0, np.float32), 8000, subtype="PCM_16")
    (bob / "g_junk.wav").write_bytes(b"RIFF not really a wave file")
    return tmp_path


def test_speaker_folder_skips_and_counts_every_bad_file(speaker_folder):
    with pytest.warns(RuntimeWarning) as caught:  # bad headers: at build time, one each
        ds = SpeakerAudioFolder(speaker_folder, sample_rate=None, crop=1000, seed=0)
    assert [("f_zero.wav" in str(w.message), "g_junk.wav" in str(w.message)) for w in caught] == [
        (True, False),
        (False, True),
    ]
    assert sorted(p.name for p, _ in ds.skipped) == ["f_zero.wav", "g_junk.wav"]
    names = [it.path.name for it in ds.items]
    assert names == ["a_good.wav", "b_good.flac", "c_nan.wav", "d_inf.wav", "e_truncated.flac"]
    # Bad data behind a good header: found when read, skipped with a warning naming the file,
    # and the next readable item stands in (an epoch never stops on a bad file). Item 2 meets
    # all three bad files in a row before it wraps round to the first good one.
    with pytest.warns(RuntimeWarning) as caught:
        wav, sr, speaker, utt = ds[2]
    assert utt == "a_good" and wav.shape == (1, 1000) and torch.isfinite(wav).all()
    messages = [str(w.message) for w in caught]
    for bad, why in (("c_nan.wav", "NaN"), ("d_inf.wav", "infinite"), ("e_truncated", "")):
        (message,) = [m for m in messages if bad in m]
        assert why in message and "--set data.strict=true" in message
    assert len(ds.skipped) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each bad file warns once
        assert [ds[i][3] for i in (3, 4)] == ["a_good", "a_good"]
        batches = list(DataLoader(ds, batch_size=5))
    assert len(batches) == 1 and batches[0][0].shape == (5, 1, 1000)


def test_speaker_folder_strict_raises_naming_the_file(speaker_folder):
    with pytest.raises(AudioError, match="f_zero.wav"):
        SpeakerAudioFolder(speaker_folder, sample_rate=None, strict=True)
    for name in ("f_zero.wav", "g_junk.wav"):
        (speaker_folder / "bob" / name).unlink()
    ds = SpeakerAudioFolder(speaker_folder, sample_rate=None, strict=True)
    with pytest.raises(AudioError, match="c_nan.wav.*NaN"):
        ds[2]
    with pytest.raises(AudioError, match="e_truncated.flac"):
        ds[4]


def test_speaker_folder_with_no_readable_file(tmp_path):
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "x.flac").write_bytes(FLAC[:HALF])
    ds = SpeakerAudioFolder(tmp_path, sample_rate=None)
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="none of the 1 audio"):
        ds[0]


@pytest.mark.parametrize("length", [0, 2, 6])
def test_audio_shorter_than_or_not_a_multiple_of_the_encoder_factor(length):
    model = vqvae_nd(dims=1, in_channels=1, strides=[2, 2], hidden=8, res_hidden=4,
                     num_res_blocks=1, num_codes=8, code_dim=4)  # fmt: skip
    with pytest.raises(ValueError, match=r"factor \(4,\)"):
        model.encode(torch.zeros(1, 1, length))
    assert model.encode(torch.zeros(1, 1, 8)).shape == (1, 2)


# ----------------------------------------------------------------------------- image files


def _png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
BAD_IMAGES = {
    "truncated.png": _png_bytes(NOISE)[:200],
    "truncated.jpg": _png_bytes(NOISE, "JPEG")[:300],
    "empty.png": b"",
    "text.png": b"hello, not a png",
    "header_only.png": _png_bytes(NOISE)[:33],
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_broken_image_raises_image_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_IMAGES[name])
    with pytest.raises(ImageError, match=name):
        load_rgb(path)
    assert issubclass(ImageError, ValueError)


def test_missing_image_and_nan_float_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        load_rgb(tmp_path / "nowhere.png")
    Image.fromarray(np.full((4, 5), np.nan, np.float32), "F").save(tmp_path / "nan.tiff")
    with pytest.raises(ImageError, match="nan.tiff.*NaN"):
        load_rgb(tmp_path / "nan.tiff")


@pytest.mark.parametrize(
    "name,image,pixel",
    [
        ("cmyk.jpg", Image.new("CMYK", (5, 4), (0, 255, 0, 0)), (1.0, 0.0, 1.0)),
        ("bilevel.png", Image.new("1", (5, 4), 1), (1.0, 1.0, 1.0)),
        ("gray_alpha.png", Image.new("LA", (5, 4), (100, 0)), (1.0, 1.0, 1.0)),  # transparent
        ("float.tiff", Image.fromarray(np.full((4, 5), 0.25, np.float32), "F"), (0.25,) * 3),
        ("int32.tiff", Image.fromarray(np.full((4, 5), 13107, np.int32), "I"), (0.2,) * 3),
        ("palette.gif", Image.new("P", (5, 4), 0), (0.0, 0.0, 0.0)),
    ],
)
def test_other_image_modes_become_rgb_in_unit_range(tmp_path, name, image, pixel):
    image.save(tmp_path / name)
    rgb = load_rgb(tmp_path / name)
    assert rgb.shape == (3, 4, 5) and rgb.dtype == torch.float32
    torch.testing.assert_close(rgb[:, 0, 0], torch.tensor(pixel), atol=0.01, rtol=0)


def test_image_folder_skips_empty_and_text_files_and_fails_when_none_is_readable(tmp_path):
    cls = tmp_path / "cls"
    cls.mkdir()
    (cls / "a_empty.png").write_bytes(b"")
    (cls / "b_text.jpg").write_bytes(b"hello")
    NOISE.save(cls / "c_good.png")
    ds = ImageFolder(tmp_path)
    with pytest.warns(RuntimeWarning, match="a_empty.png"):
        with pytest.warns(RuntimeWarning, match="b_text.jpg"):
            image, _ = ds[0]
    assert image.shape == (3, 16, 16) and ds.num_skipped == 2
    (cls / "c_good.png").write_bytes(b"")
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="none of the 3 image"):
        ImageFolder(tmp_path)[0]


# ----------------------------------------------------------------------------- through the CLI

TINY = [
    "vqvae.hidden=16", "vqvae.res_hidden=8", "vqvae.num_codes=16", "vqvae.code_dim=8",
    "data.train_size=32", "data.test_size=8", "vqvae_train.steps=2", "vqvae_train.batch_size=8",
    "prior.channels=8", "prior.num_layers=2", "prior_train.steps=2", "prior_train.batch_size=8",
    "eval.classifier_steps=2", "eval.classifier_channels=4", "eval.samples=10",
]  # fmt: skip


def _sets(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def _run_dir(tmp_path: Path, *, hidden: int = 16) -> Path:
    """A run directory as `vqkit run` leaves it after its first VQ-VAE checkpoint; the model
    in the checkpoint has ``hidden`` channels (the config says 16)."""
    recipe = load_recipe("image")
    cfg = load_config(recipe.CONFIG, preset_path("image", "builtin"), TINY)
    run = tmp_path / "run"
    save_config(cfg, run / "config.yaml")
    cfg.vqvae.hidden = hidden
    model = vqvae_image(**builder_kwargs(cfg.vqvae))
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_latest(run / "vqvae" / "ckpt", model, optimizer=opt, scheduler=sched, step=1,
                extra={"data": {"epoch": 0, "batch": 1}})  # fmt: skip
    return run


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _resume(run: Path, *extra: str) -> int:
    return main(["run", "image", "--out", str(run), "--resume", "--device", "cpu",
                 "--no-progress", *extra])  # fmt: skip


def test_cli_empty_data_folder_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["run", "image", "--preset", "folder", "--data", str(empty), "--out",
                 str(tmp_path / "a"), "--device", "cpu", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "vqkit: error:" in err and str(empty / "train") in err
    assert "<class>" in err  # the layout it expects
    for split in ("train", "test"):
        (empty / split / "cat").mkdir(parents=True)
    code = main(["run", "image", "--preset", "folder", "--data", str(empty), "--out",
                 str(tmp_path / "b"), "--device", "cpu", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "no image files" in err and str(empty / "train") in err


def test_cli_nested_unknown_key_and_bad_value(tmp_path, capsys):
    assert (
        main(["run", "image", "--out", str(tmp_path / "x"), "--set", "vqvae.quantizer.bta=1"]) == 2
    )
    err = capsys.readouterr().err
    assert "vqvae.quantizer.bta" in err and "did you mean 'vqvae.quantizer.beta'" in err
    assert "restart_after" in err  # the keys that exist there
    assert (
        main(["run", "image", "--out", str(tmp_path / "x"), "--set", "vqvae_train.steps=many"]) == 2
    )
    assert "vqvae_train.steps" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_checkpoint_that_does_not_match_the_model(tmp_path):
    small = vqvae_image(hidden=8, res_hidden=4, num_codes=16, code_dim=8)
    save_checkpoint(tmp_path, small, step=1)
    with pytest.raises(CheckpointError) as e:
        load_weights(tmp_path, vqvae_image(hidden=16, res_hidden=4, num_codes=16, code_dim=8))
    message = str(e.value)
    assert "does not match the config of this VQVAE" in message
    assert "checkpoint (4, 3, 4, 4) vs model (8, 3, 4, 4)" in message
    assert "load_model" in message  # the fix
    with pytest.raises(CheckpointError, match=r"codebook: checkpoint \(16, 8\) vs model \(32, 8\)"):
        load_weights(tmp_path, vqvae_image(hidden=8, res_hidden=4, num_codes=32, code_dim=8))


def test_cli_resume_with_a_checkpoint_from_another_config(tmp_path, capsys, one_thread):
    run = _run_dir(tmp_path, hidden=32)
    assert _resume(run) == 1
    err = capsys.readouterr().err
    assert "vqkit: error:" in err and "does not match the config" in err
    assert "step_00000001" in err


class Evil:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cli_resume_refuses_a_crafted_pickle(tmp_path, capsys, one_thread):
    run = _run_dir(tmp_path)
    marker = tmp_path / "pwned"
    trainer = run / "vqvae" / "ckpt" / "step_00000001" / "trainer.pt"
    torch.save({"step": 1, "optimizer": Evil(marker), "extra": {}}, trainer)
    assert _resume(run) == 1
    err = capsys.readouterr().err
    assert "refusing to load" in err and "trainer.pt" in err and "Traceback" not in err
    assert not marker.exists()


def test_cli_reconstruct_a_broken_image(tmp_path, capsys):
    run = _run_dir(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(BAD_IMAGES["truncated.png"])
    assert main(["reconstruct", str(run), str(broken), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "vqkit: error: cannot read image file" in err and "broken.png" in err


def test_cli_shows_the_traceback_of_a_bug(tmp_path, monkeypatch, capsys):
    """Only the user's errors become one-line messages with exit status 2: a ValueError from
    a bug inside the code reaches the user with its traceback."""
    recipe = load_recipe("image")

    def broken(*args, **kwargs):
        raise ValueError("a bug deep inside")

    monkeypatch.setattr(recipe, "run", broken)
    with pytest.raises(ValueError, match="a bug deep inside"):
        main(["run", "image", "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert "vqkit: error" not in capsys.readouterr().err


def test_cli_a_builder_refusing_a_config_value_names_the_section(tmp_path, capsys):
    code = main(["run", "image", "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--no-progress", *_sets([*TINY, "vqvae.num_codes=1"])])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "vqkit: error: config key 'vqvae.num_codes' must be >= 2" in err
    assert "--set vqvae.num_codes=" in err


@pytest.mark.parametrize(
    ("value", "low", "ok"),
    [(1, 1, True), (0, 0, True), (8, 8, True), (0, 1, False), (7, 8, False), (True, 0, False),
     (2.0, 1, False), ("3", 1, False), (None, 0, False)],
)
def test_check_int_accepts_only_ints_at_or_above_low_and_names_the_argument(value, low, ok):
    from vqkit.errors import InputError, check_int

    if ok:
        check_int("frames", value, low)
        return
    with pytest.raises(ValueError, match=rf"^frames must be an int >= {low}, got {value!r}$"):
        check_int("frames", value, low)
    with pytest.raises(InputError):
        check_int("frames", value, low, InputError)


def test_dataset_and_layer_sizes_are_refused_through_the_one_check():
    from vqkit.datasets.synthetic_images import SyntheticShapes
    from vqkit.errors import InputError
    from vqkit.models.wavenet import WaveNet
    from vqkit.nn.causal import CausalConv1d

    with pytest.raises(InputError, match="image_size must be an int >= 8, got 4"):
        SyntheticShapes(split="train", size=4, image_size=4)
    with pytest.raises(InputError, match="seed must be an int >= 0, got -1"):
        SyntheticShapes(split="train", size=4, seed=-1)
    with pytest.raises(ValueError, match="dilation must be an int >= 1, got 0"):
        CausalConv1d(2, 2, 2, dilation=0)
    with pytest.raises(ValueError, match="must be an int >= 1, got True"):
        WaveNet(residual_channels=True)
