"""Property-based fuzzing: random and mutated files, config text, overrides and tensor shapes.

The property everywhere: either a well-formed result, or one of the documented errors
(``AudioError``, ``ImageError``, ``ConfigError``, ``ValueError``, ``FileNotFoundError``); never
another exception, never a hang (each example has a deadline). Examples are derandomized so the
suite is reproducible; raise ``max_examples`` locally for a longer hunt.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from vqkit.audio import AudioError, load_audio
from vqkit.config import ConfigError, load_config
from vqkit.datasets import ImageError, ImageFolder, SpeakerAudioFolder, load_rgb
from vqkit.models import vqvae_image
from vqkit.quantize import VectorQuantizer
from vqkit.runs import load_recipe

FUZZ = settings(
    max_examples=40,
    deadline=timedelta(seconds=10),  # generous on a loaded machine; a hang still fails
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------------------- inputs


def _audio_bytes(fmt: str, subtype: str, channels: int = 1) -> bytes:
    x = 0.5 * np.sin(np.arange(400, dtype=np.float32) / 3)
    buf = io.BytesIO()
    sf.write(buf, np.stack([x] * channels, axis=1), 8000, format=fmt, subtype=subtype)
    return buf.getvalue()


def _image_bytes(mode: str, fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


AUDIO_SEEDS = [
    _audio_bytes("WAV", "PCM_16"),
    _audio_bytes("WAV", "PCM_24", channels=2),
    _audio_bytes("WAV", "FLOAT"),
    _audio_bytes("WAV", "PCM_U8"),
    _audio_bytes("FLAC", "PCM_16"),
]
IMAGE_SEEDS = [
    _image_bytes("RGB", "PNG"),
    _image_bytes("L", "PNG"),
    _image_bytes("RGBA", "PNG"),
    _image_bytes("P", "GIF"),
    _image_bytes("RGB", "JPEG"),
    _image_bytes("RGB", "BMP"),
    _image_bytes("RGB", "TIFF"),
]


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, or a valid file with bytes overwritten, then cut at a random length."""

    @st.composite
    def mutate(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data[: draw(st.integers(0, len(data)))])

    return st.one_of(st.binary(max_size=600), mutate())


@pytest.fixture(autouse=True)
def _small_images_and_one_thread(monkeypatch):
    # A mutated header can claim a huge image; keep PIL's bomb guard small so such an example
    # costs megabytes, not gigabytes (it then raises DecompressionBombError -> ImageError).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- audio


@FUZZ
@given(data=mutated(AUDIO_SEEDS), suffix=st.sampled_from([".wav", ".flac"]))
def test_load_audio_on_random_bytes(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(data)
        try:
            wav, sr = load_audio(path)
        except AudioError as e:
            assert str(path) in str(e)
            return
        assert wav.dtype == torch.float32 and wav.dim() == 2 and wav.shape[0] == 1
        assert wav.shape[1] > 0 and sr > 0 and torch.isfinite(wav).all()


@FUZZ
@given(
    files=st.lists(mutated(AUDIO_SEEDS), min_size=1, max_size=4), crop=st.sampled_from([None, 64])
)
def test_speaker_folder_on_random_files(files, crop):
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skips warn; counted in .skipped
        for i, data in enumerate(files):
            (Path(tmp) / f"spk{i % 2}").mkdir(exist_ok=True)
            (Path(tmp) / f"spk{i % 2}" / f"u{i}.wav").write_bytes(data)
        try:
            ds = SpeakerAudioFolder(tmp, sample_rate=None, crop=crop, seed=0)
        except ValueError as e:  # nothing usable: says where and which layouts it expects
            assert tmp in str(e)
            return
        assert len(ds) + len(ds.skipped) == len(files)
        for i in range(len(ds)):
            try:
                wav, sr, speaker, utt = ds[i]
            except ValueError as e:
                assert "could be read" in str(e)
                return
            assert torch.isfinite(wav).all() and (crop is None or wav.shape == (1, crop))


# ----------------------------------------------------------------------------- images


@FUZZ
@given(data=mutated(IMAGE_SEEDS), suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tif"]))
def test_load_rgb_on_random_bytes(data, suffix):
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning and friends
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(data)
        try:
            image = load_rgb(path)
        except ImageError as e:
            assert str(path) in str(e)
            return
        assert image.dtype == torch.float32 and image.dim() == 3 and image.shape[0] == 3
        assert image.numel() > 0 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0


@FUZZ
@given(
    files=st.lists(mutated(IMAGE_SEEDS), min_size=1, max_size=4), size=st.sampled_from([None, 4])
)
def test_image_folder_on_random_files(files, size):
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, data in enumerate(files):
            (Path(tmp) / f"c{i % 2}").mkdir(exist_ok=True)
            (Path(tmp) / f"c{i % 2}" / f"im{i}.png").write_bytes(data)
        ds = ImageFolder(tmp, image_size=size)
        for i in range(len(ds)):
            try:
                image, label = ds[i]
            except ValueError as e:
                assert "could be read" in str(e) and ds.num_skipped == len(files)
                return
            assert image.shape[0] == 3 and torch.isfinite(image).all()
            assert size is None or image.shape == (3, size, size)


# ----------------------------------------------------------------------------- configs

RECIPE = load_recipe("image")
KEYS = [
    "modality", "eval_batch_size", "data", "data.kind", "data.root", "data.image_size",
    "vqvae", "vqvae.hidden", "vqvae.strides", "vqvae.quantizer", "vqvae.quantizer.beta",
    "vqvae.quantizer.restart_after", "vqvae_train.steps", "vqvae_train.lr",
    "vqvae_train.lr_schedule", "vqvae_train.grad_clip", "prior.channels", "sample.temperature",
    "nope", "vqvae.nope",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=12),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(KEYS + ["x"]), inner, max_size=3),
    ),
    max_leaves=8,
)


def _nested(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
        node[last] = value
    return out


def _check_config(preset, overrides=()) -> None:
    try:
        cfg = load_config(RECIPE.CONFIG, preset, overrides)
    except ConfigError as e:
        assert str(e)
        return
    assert isinstance(cfg, RECIPE.CONFIG)


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
    )
)
def test_config_file_of_random_text(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "preset.yaml"
        path.write_text(text, encoding="utf-8")
        _check_config(path)


@FUZZ
@given(flat=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5))
def test_config_file_of_random_structure(flat):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "preset.yaml"
        path.write_text(yaml.safe_dump(_nested(flat)))
        _check_config(path)


@FUZZ
@given(
    items=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.tuples(st.sampled_from(KEYS), st.text(max_size=20)).map("=".join),
            st.tuples(st.sampled_from(KEYS), VALUES).map(
                lambda kv: f"{kv[0]}={yaml.safe_dump(kv[1])}"
            ),
        ),
        max_size=4,
    )
)
def test_random_overrides(items):
    _check_config(None, items)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    # "Billion laughs": nine levels of aliases, 10^9 strings if expanded.
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\nvqvae: *a8\n")
    with pytest.raises(ConfigError, match="unknown config key 'a0'"):
        load_config(RECIPE.CONFIG, tmp_path / "bomb.yaml")


# ----------------------------------------------------------------------------- tensor shapes

SHAPES = st.lists(st.integers(0, 5), min_size=0, max_size=6).map(tuple)


@FUZZ
@given(shape=SHAPES, training=st.booleans(), kmeans=st.booleans())
@example(shape=(0, 4, 3), training=True, kmeans=True)  # empty batch: k-means has no data
@example(shape=(1, 4, 0), training=True, kmeans=True)
@example(shape=(4,), training=False, kmeans=False)  # no channel axis
def test_vector_quantizer_on_random_shapes(shape, training, kmeans):
    vq = VectorQuantizer(8, 4, kmeans_init=kmeans, ema=kmeans).train(training)
    z = torch.randn(shape)
    try:
        out = vq(z)  # in training mode this may also move the codebook (EMA, k-means)
    except ValueError:
        return
    codes = vq.encode(z)
    assert out.quantized.shape == z.shape and codes.shape == shape[:1] + shape[2:]
    assert torch.equal(vq.decode(codes), vq.eval()(z).quantized)


MODEL = vqvae_image(hidden=8, res_hidden=4, num_codes=8, code_dim=4, strides=[2, 2])


@FUZZ
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=5).map(tuple))
def test_vqvae_encode_on_random_shapes(shape):
    try:
        codes = MODEL.encode(torch.rand(shape) - 0.5)
    except ValueError:
        return
    assert codes.shape == (shape[0], shape[2] // 4, shape[3] // 4)
