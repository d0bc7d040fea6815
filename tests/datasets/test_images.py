"""Image data sets: the synthetic shapes, image folders (real and odd files), CIFAR-10, factory."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqkit.datasets import (
    CIFAR10,
    ImageFolder,
    SyntheticShapes,
    WithMirrors,
    build_image_dataset,
    load_rgb,
)
from vqkit.datasets.synthetic_images import CLASSES, _shape_coverage


def _shared_cifar() -> Path:
    base = os.environ.get("VQKIT_SHARED_DATA")
    shared = Path(base) if base else Path(__file__).resolve().parents[2].parent / "shared/data"
    return shared / "cifar10-jpg"


CIFAR_JPG = _shared_cifar()
needs_cifar_jpg = pytest.mark.skipif(
    not (CIFAR_JPG / "test").is_dir(),
    reason=f"shared CIFAR-10 jpg folder not found at {CIFAR_JPG} (set VQKIT_SHARED_DATA)",
)


def _digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------- SyntheticShapes


def test_synthetic_item_is_rgb_float_in_unit_range_with_int_label():
    ds = SyntheticShapes(split="train", size=50)
    for i in range(50):
        image, label = ds[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert isinstance(label, int) and 0 <= label < 10
        assert float(image.std()) > 0.03  # never a blank frame


def test_synthetic_is_deterministic_per_seed_split_index():
    a = SyntheticShapes(split="train", size=100, seed=3)
    b = SyntheticShapes(split="train", size=100, seed=3)
    for i in (0, 1, 57, 99):
        (xa, ya), (xb, yb) = a[i], b[i]
        assert torch.equal(xa, xb) and ya == yb
    # Order of access must not matter (no shared generator state).
    assert torch.equal(a[57][0], SyntheticShapes(split="train", size=100, seed=3)[57][0])
    assert not torch.equal(a[0][0], a[1][0])
    other_seed = SyntheticShapes(split="train", size=100, seed=4)
    assert not torch.equal(a[0][0], other_seed[0][0])


def test_synthetic_train_and_test_streams_are_disjoint():
    train = SyntheticShapes(split="train", size=200)
    test = SyntheticShapes(split="test", size=200)
    train_digests = {_digest(train[i][0]) for i in range(200)}
    test_digests = {_digest(test[i][0]) for i in range(200)}
    assert len(train_digests) == 200 and len(test_digests) == 200
    assert not train_digests & test_digests


def test_synthetic_all_classes_appear_and_are_roughly_balanced():
    ds = SyntheticShapes(split="train", size=500)
    labels = np.array([ds[i][1] for i in range(500)])
    counts = np.bincount(labels, minlength=10)
    assert (counts > 0).all(), counts
    assert counts.min() >= 20, counts  # uniform draw: about 50 each
    assert len(ds.classes) == 10 and ds.classes == CLASSES


def test_synthetic_generation_is_fast():
    ds = SyntheticShapes(split="train", size=500)
    start = time.perf_counter()
    for i in range(500):
        ds[i]
    assert time.perf_counter() - start < 10.0


# Exact areas of the ten shapes for half-size s, from their definitions in synthetic_images.py
# (stripes and checker patches cover half of their 2s x 2s square).
SHAPE_AREAS = {
    "disc": np.pi,
    "square": 4.0,
    "triangle": 1.8,  # base 2s, height 1.8s
    "ring": np.pi * (1.0 - 0.4**2),
    "plus": 2 * (2 * 0.6) - 0.6**2,
    "stripes": 2.0,
    "diamond": 2.0,
    "frame": 4.0 - 1.0,
    "checker": 2.0,
    "saltire": 2 * (2 * 0.6) - 0.6**2,
}


@pytest.mark.parametrize("label", range(10))
def test_shape_masks_cover_their_analytic_area(label):
    n, s = 160, 50.0
    coords = np.arange(n, dtype=np.float32) + 0.5
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    rng = np.random.default_rng(0)
    coverage = _shape_coverage(label, xs - n / 2, ys - n / 2, s, rng)
    assert coverage.min() >= 0.0 and coverage.max() <= 1.0
    expected = SHAPE_AREAS[CLASSES[label]] * s * s
    assert abs(coverage.sum() - expected) / expected < 0.04


def test_shape_masks_are_pairwise_distinct():
    n, s = 64, 20.0
    coords = np.arange(n, dtype=np.float32) + 0.5
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    masks = [
        _shape_coverage(k, xs - n / 2, ys - n / 2, s, np.random.default_rng(0)) for k in range(10)
    ]
    for i in range(10):
        for j in range(i + 1, 10):
            # Smallest true difference: the ring's hole, 0.16 pi s^2 (about 0.5 s^2).
            assert np.abs(masks[i] - masks[j]).sum() > 0.3 * s * s, (CLASSES[i], CLASSES[j])


def test_synthetic_options_and_errors():
    assert len(SyntheticShapes(split="train")) == 20_000
    assert len(SyntheticShapes(split="test")) == 2_000
    big = SyntheticShapes(split="test", size=3, image_size=48, transform=lambda x: x * 2)
    image, _ = big[0]
    assert image.shape == (3, 48, 48)
    assert torch.equal(image, SyntheticShapes(split="test", size=3, image_size=48)[0][0] * 2)
    assert torch.equal(big[-1][0], big[2][0])
    with pytest.raises(IndexError):
        big[3]
    assert len(list(iter(SyntheticShapes(size=4)))) == 4  # sequence protocol stops
    batch = next(iter(torch.utils.data.DataLoader(SyntheticShapes(size=8), batch_size=4)))
    assert batch[0].shape == (4, 3, 32, 32) and batch[1].shape == (4,)
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes(split="val")
    with pytest.raises(ValueError, match="size"):
        SyntheticShapes(size=0)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticShapes(image_size=4)
    with pytest.raises(ValueError, match="seed"):
        SyntheticShapes(seed=-1)


# ---------------------------------------------------------------- ImageFolder on real data


@needs_cifar_jpg
def test_image_folder_on_shared_cifar_jpg():
    ds = ImageFolder(CIFAR_JPG, split="test")
    assert len(ds) == 1000
    assert ds.classes == list(CIFAR10.classes)
    assert sorted(set(ds.targets)) == list(range(10))
    for i in (0, 499, 999):
        image, label = ds[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert label == ds.targets[i]
    assert ds.num_skipped == 0
    small = build_image_dataset("folder", root=CIFAR_JPG, split="test", image_size=16)
    assert small[0][0].shape == (3, 16, 16)


# ---------------------------------------------------------------- ImageFolder on odd files


def _save(path: Path, image: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def _noise_jpeg_bytes(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    root = tmp_path / "odd"
    _save(root / "a_gray" / "g.png", Image.new("L", (8, 6), 100))
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :4, 3] = 255  # left half opaque red, right half fully transparent
    _save(root / "b_rgba" / "r.png", Image.fromarray(rgba, "RGBA"))
    palette = Image.new("P", (8, 6), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    palette.putpixel((0, 0), 0)  # index 0 is the transparent one
    _save(root / "c_palette" / "p.png", palette, transparency=0)
    sixteen = np.full((6, 8), 65535 // 4, dtype=np.uint16)
    sixteen[0, 0] = 65535
    _save(root / "d_16bit" / "s.png", Image.fromarray(sixteen))
    good = _noise_jpeg_bytes()
    (root / "e_broken").mkdir()
    (root / "e_broken" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return root


def test_image_folder_converts_every_mode_to_rgb(odd_folder: Path):
    ds = ImageFolder(odd_folder)
    assert ds.classes == ["a_gray", "b_rgba", "c_palette", "d_16bit", "e_broken"]
    images = {ds.classes[label]: image for image, label in (ds[i] for i in range(4))}
    for image in images.values():
        assert image.shape == (3, 6, 8) and image.dtype == torch.float32
    torch.testing.assert_close(images["a_gray"], torch.full((3, 6, 8), 100 / 255))
    red, clear = images["b_rgba"][:, :, :4], images["b_rgba"][:, :, 4:]
    torch.testing.assert_close(red, torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand_as(red))
    torch.testing.assert_close(clear, torch.ones_like(clear))  # composited over white
    pal = images["c_palette"]
    torch.testing.assert_close(pal[:, 0, 0], torch.ones(3))  # transparent index -> white
    torch.testing.assert_close(pal[:, 3, 3], torch.tensor([10, 200, 30]) / 255.0)
    sixteen = images["d_16bit"]  # scaled by 1/65535, not clipped at 255
    torch.testing.assert_close(sixteen[:, 2, 2], torch.full((3,), (65535 // 4) / 65535))
    torch.testing.assert_close(sixteen[:, 0, 0], torch.ones(3))
    assert load_rgb(odd_folder / "d_16bit" / "s.png").shape == (3, 6, 8)


def test_image_folder_skips_truncated_file_with_one_warning(odd_folder: Path):
    ds = ImageFolder(odd_folder)
    bad = ds.samples[4][0]
    assert bad.endswith("truncated.jpg")
    with pytest.warns(RuntimeWarning, match="truncated.jpg"):
        image, label = ds[4]
    # The next readable item (wrapping round) stands in, with its own label.
    assert label == 0 and torch.equal(image, ds[0][0])
    assert ds.skipped == [bad] and ds.num_skipped == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second visit must not warn again
        assert ds[4][1] == 0


def test_image_folder_strict_raises_naming_the_file(odd_folder: Path):
    ds = ImageFolder(odd_folder, strict=True)
    with pytest.raises(ValueError, match="truncated.jpg"):
        ds[4]
    (odd_folder / "e_broken" / "not_an_image.png").write_bytes(b"hello, not a png")
    with pytest.raises(ValueError, match="not_an_image.png"):
        ImageFolder(odd_folder, strict=True)[4]


def test_image_folder_resize_and_split(tmp_path: Path):
    _save(tmp_path / "train" / "cls" / "wide.png", Image.new("RGB", (40, 20), (255, 0, 0)))
    ds = ImageFolder(tmp_path, split="train", image_size=10, transform=lambda x: 1 - x)
    image, label = ds[0]
    assert image.shape == (3, 10, 10) and label == 0
    torch.testing.assert_close(image[:, 5, 5], torch.tensor([0.0, 1.0, 1.0]))


def test_image_folder_errors_name_the_path_and_layout(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere.*<class>"):
        ImageFolder(missing)
    with pytest.raises(FileNotFoundError, match="train/ and test/ folders"):
        ImageFolder(tmp_path, split="train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders in .*empty"):
        ImageFolder(empty)
    (empty / "cls").mkdir()
    (empty / "cls" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolder(empty)
    loose = tmp_path / "loose"
    _save(loose / "x.png", Image.new("RGB", (4, 4)))
    with pytest.raises(FileNotFoundError, match="sub-folder such as"):
        ImageFolder(loose)
    with pytest.raises(ValueError, match="image_size"):
        ImageFolder(loose, image_size=0)


# ---------------------------------------------------------------- CIFAR-10 and the factory


def test_cifar10_without_data_says_how_to_get_it(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="--set data.download=true"):
        CIFAR10(tmp_path, split="train")
    with pytest.raises(ValueError, match="split"):
        CIFAR10(tmp_path, split="validation")


def test_cifar10_returns_unit_range_tensors(tmp_path: Path, monkeypatch):
    # A tiny stand-in in torchvision's pickle layout; the md5 check is bypassed for it.
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (2, 3 * 32 * 32), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [3, 7]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10.classes)}, f)

    test = CIFAR10(tmp_path, split="test")
    assert len(test) == 2 and test.targets == [3, 7]
    image, label = test[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 7
    expected = torch.from_numpy(data[1].reshape(3, 32, 32).astype(np.float32) / 255)
    torch.testing.assert_close(image, expected)
    assert len(CIFAR10(tmp_path, split="train")) == 10
    resized = build_image_dataset("cifar10", root=tmp_path, split="test", image_size=16)
    assert resized[0][0].shape == (3, 16, 16)


def test_build_image_dataset_builtin_and_errors():
    ds = build_image_dataset("builtin", split="test", image_size=24, seed=5, size=10)
    assert isinstance(ds, SyntheticShapes) and len(ds) == 10
    assert ds[0][0].shape == (3, 24, 24)
    assert torch.equal(
        ds[3][0], SyntheticShapes(split="test", size=10, image_size=24, seed=5)[3][0]
    )
    with pytest.raises(ValueError, match="kind"):
        build_image_dataset("imagenet", root="x")
    with pytest.raises(ValueError, match="root"):
        build_image_dataset("folder")


def test_with_mirrors_appends_each_image_flipped_left_right():
    base = SyntheticShapes(size=3, image_size=8)
    ds = WithMirrors(base)
    assert len(ds) == 6
    for i in range(3):
        image, label = base[i]
        assert torch.equal(ds[i][0], image) and ds[i][1] == label
        flipped, flipped_label = ds[3 + i]
        assert flipped_label == label
        assert torch.equal(flipped[..., 0], image[..., -1])  # first column = last column
        assert torch.equal(flipped.flip(-1), image)
    assert torch.equal(ds[-1][0], ds[5][0])
    with pytest.raises(IndexError, match="out of range for 6 items"):
        ds[6]
