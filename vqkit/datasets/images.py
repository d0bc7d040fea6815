"""Image data sets: any image folder, CIFAR-10, and the factory the image recipe uses.

Every set returns ``(image, label)`` with ``image`` a float32 tensor ``(3, H, W)`` in ``[0, 1]``
(before the user's ``transform``) and ``label`` an ``int``, like torchvision does after
``ToTensor()``; the conversion to RGB is done here so that grayscale, alpha, palette and 16-bit
files all arrive in the same form.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from vqkit.datasets.synthetic_images import SyntheticShapes
from vqkit.errors import InputError

_SPLITS = ("train", "test")
_LAYOUT = "<root>/<class>/<image>.{jpg,png,...} (one sub-folder per class)"


class ImageError(InputError):
    """An image file that cannot be decoded: truncated, corrupt, or not an image."""


def load_rgb(path: str | Path) -> Tensor:
    """Read an image file as an RGB float tensor.

    Grayscale and 1-bit images are repeated over three channels; images with transparency
    (RGBA, LA, palette with a transparent index) are composited over white, so transparent
    pixels become white rather than whatever colour they happen to store; 16-bit images
    (``I;16`` and ``I``) are scaled by ``1 / 65535`` instead of being clipped at 255 as PIL's
    ``convert("RGB")`` would do; 32-bit float images (``F``) are taken to be in ``[0, 1]``.
    EXIF orientation is applied.

    Returns:
        ``(3, H, W)`` float32 tensor in ``[0, 1]``.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageError: (a ``ValueError``) the file is truncated, corrupt or not an image; the
            message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: PIL reads lazily and a truncated file fails only here
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16") or im.mode == "I":
                gray = np.asarray(im, dtype=np.float32) / 65535.0  # (H, W)
                rgb = np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=-1)
            elif im.mode == "F":
                gray = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
                rgb = np.repeat(gray[..., None], 3, axis=-1)
            elif im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0  # (H, W, 4)
                alpha = rgba[..., 3:]
                rgb = rgba[..., :3] * alpha + (1.0 - alpha)
            else:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    # PIL's decoders fail on broken files with many types (OSError, SyntaxError, struct.error,
    # EOFError, DecompressionBombError, ...): each means the same thing here.
    except Exception as err:
        raise ImageError(f"cannot read image file {path}: {err}") from err
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"image file {path} has no pixels (size {rgb.shape[1]}x{rgb.shape[0]})")
    if not np.isfinite(rgb).all():  # a float (mode F) image can hold NaN
        raise ImageError(f"image file {path} holds NaN or infinite pixel values")
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def resize_center_crop(image: Tensor, size: int) -> Tensor:
    """Resize the shorter side to ``size`` (antialiased bilinear), then centre-crop a square.

    Args:
        image: ``(C, H, W)`` float tensor in ``[0, 1]``.
        size: Output height and width.

    Returns:
        ``(C, size, size)`` float tensor in ``[0, 1]``.
    """
    _, h, w = image.shape
    if min(h, w) != size:
        image = TF.resize(image, [size], antialias=True)
    if image.shape[-2:] != (size, size):
        image = TF.center_crop(image, [size, size])
    return image.clamp_(0.0, 1.0)


def _check_image_size(image_size: int | None) -> None:
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise InputError(f"image_size must be a positive int or None, got {image_size!r}")


class ImageFolder(Dataset):
    """Images in class sub-folders, as RGB tensors; a thin wrapper of torchvision's ImageFolder.

    Unreadable files are found lazily: ``__getitem__`` decodes the file, and when that fails
    (truncated, corrupt, not an image) it warns once naming the file, remembers it, and returns
    the next readable item instead (with that item's label). A header check at construction
    was not chosen because it misses truncated JPEGs and would open every file up front.
    ``skipped`` lists the files found bad so far; with DataLoader workers each worker keeps its
    own list. With ``strict=True`` a bad file raises :class:`ImageError` naming it instead.

    Args:
        root: Folder laid out as ``root/<class>/<image>``, or ``root/<split>/<class>/<image>``
            when ``split`` is given.
        split: Optional sub-folder of ``root`` to read, e.g. ``"train"`` or ``"test"``.
        image_size: When given, the shorter side is resized to it and the centre square kept.
        transform: Optional callable applied to the ``(3, H, W)`` tensor.
        strict: Raise on an unreadable file instead of skipping it.

    Raises:
        FileNotFoundError: the folder is missing or holds no image in any class sub-folder.

    Examples:
        >>> ds = ImageFolder("../shared/data/cifar10-jpg", split="test")  # doctest: +SKIP
        >>> image, label = ds[0]  # doctest: +SKIP
        >>> image.shape, ds.classes[label]  # doctest: +SKIP
        (torch.Size([3, 32, 32]), 'airplane')
    """

    def __init__(
        self,
        root: str | Path,
        *,
        split: str | None = None,
        image_size: int | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        strict: bool = False,
    ) -> None:
        _check_image_size(image_size)
        folder = Path(root) / split if split is not None else Path(root)
        _check_folder(folder, split)
        # Decoding is ours (load_rgb); torchvision only lists the files and classes.
        self._folder = torchvision.datasets.ImageFolder(str(folder), allow_empty=True)
        if not self._folder.samples:
            raise FileNotFoundError(
                f"no image files (extensions {', '.join(torchvision.datasets.folder.IMG_EXTENSIONS)}) "
                f"in the class sub-folders of {folder}; expected {_LAYOUT}"
            )
        empty = sorted(set(self._folder.classes) - {self._folder.classes[t] for t in self.targets})
        if empty:
            warnings.warn(
                f"class folders without images in {folder}: {empty}; their labels stay reserved",
                RuntimeWarning,
                stacklevel=2,
            )
        self.root = folder
        self.image_size = image_size
        self.transform = transform
        self.strict = strict
        self._bad: set[str] = set()

    @property
    def classes(self) -> list[str]:
        return self._folder.classes

    @property
    def class_to_idx(self) -> dict[str, int]:
        return self._folder.class_to_idx

    @property
    def samples(self) -> list[tuple[str, int]]:
        return self._folder.samples

    @property
    def targets(self) -> list[int]:
        return self._folder.targets

    @property
    def skipped(self) -> list[str]:
        """Files found unreadable so far (in this process)."""
        return sorted(self._bad)

    @property
    def num_skipped(self) -> int:
        return len(self._bad)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images in {self.root}")
        for offset in range(n):
            path, label = self.samples[(index + offset) % n]
            if path in self._bad:
                continue
            try:
                image = load_rgb(path)
            except (ImageError, FileNotFoundError) as err:
                if self.strict:
                    raise
                self._bad.add(path)
                warnings.warn(
                    f"skipping an unreadable image ({err}); {len(self._bad)} skipped so far "
                    f"in {self.root}; --set data.strict=true to make it an error",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            if self.image_size is not None:
                image = resize_center_crop(image, self.image_size)
            if self.transform is not None:
                image = self.transform(image)
            return image, label
        raise InputError(f"none of the {n} image files in {self.root} could be read")


def _check_folder(folder: Path, split: str | None) -> None:
    if not folder.is_dir():
        hint = (
            f" (split {split!r} reads <root>/{split}: vqkit run wants --data with train/ and "
            f"test/ folders)"
            if split is not None
            else ""
        )
        raise FileNotFoundError(f"image folder {folder} does not exist{hint}; expected {_LAYOUT}")
    if not any(entry.is_dir() for entry in folder.iterdir()):
        loose = any(
            entry.suffix.lower() in torchvision.datasets.folder.IMG_EXTENSIONS
            for entry in folder.iterdir()
        )
        hint = (
            f"; the images lie directly in it, move them into a sub-folder such as {folder}/all"
            if loose
            else ""
        )
        raise FileNotFoundError(f"no class sub-folders in {folder}{hint}; expected {_LAYOUT}")


class CIFAR10(Dataset):
    """CIFAR-10 through torchvision, returning ``(image (3, 32, 32) in [0, 1], label)``.

    Args:
        root: Folder holding (or to receive) ``cifar-10-batches-py``.
        split: ``"train"`` (50000 images) or ``"test"`` (10000).
        download: Fetch the archive (about 170 MB) into ``root`` when it is missing.
        transform: Optional callable applied to the image tensor.
        image_size: When given and not 32, resize (antialiased bilinear) to this size.

    Raises:
        FileNotFoundError: the data is not in ``root`` and ``download`` is False.
    """

    classes: tuple[str, ...] = (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "train",
        download: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
        image_size: int | None = None,
    ) -> None:
        if split not in _SPLITS:
            raise InputError(f"split must be one of {_SPLITS}, got {split!r}")
        _check_image_size(image_size)
        try:
            dataset = torchvision.datasets.CIFAR10(
                str(root), train=split == "train", download=download
            )
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            raise FileNotFoundError(
                f"CIFAR-10 not found (or corrupted) in {Path(root) / 'cifar-10-batches-py'}; "
                f"fetch it with --set data.download=true, or use an "
                f"image folder instead (--preset folder --data DIR)"
            ) from err
        except OSError as err:  # a download without network: URLError, socket errors
            raise InputError(
                f"could not download CIFAR-10 into {root}: {err}; check the network, or copy "
                f"cifar-10-batches-py there by hand and drop --set data.download=true"
            ) from err
        self._images = dataset.data  # (N, 32, 32, 3) uint8
        self._labels = [int(t) for t in dataset.targets]
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.image_size = image_size

    @property
    def targets(self) -> list[int]:
        return self._labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = torch.from_numpy(self._images[index]).permute(2, 0, 1).float() / 255.0
        if self.image_size is not None and self.image_size != image.shape[-1]:
            image = resize_center_crop(image, self.image_size)
        if self.transform is not None:
            image = self.transform(image)
        return image, self._labels[index]


class WithMirrors(Dataset):
    """A set of images followed by their left-right mirror images: twice as many items.

    Item ``i < N`` is ``dataset[i]``; item ``N + i`` is the same image flipped horizontally,
    with the same label. The augmentation is a fixed doubling of the data, not a random
    draw, so the training order (and an exact resume, and every DDP rank) needs no extra
    random state.

    Example:
        >>> ds = WithMirrors(SyntheticShapes(size=4))
        >>> len(ds), torch.equal(ds[4][0], ds[0][0].flip(-1))
        (8, True)
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return 2 * len(self.dataset)

    def __getitem__(self, index: int):
        n = len(self.dataset)
        if not -2 * n <= index < 2 * n:
            raise IndexError(f"index {index} out of range for {2 * n} items")
        image, label = self.dataset[index % n]
        return (image.flip(-1) if index % (2 * n) >= n else image), label


def build_image_dataset(
    kind: str,
    *,
    root: str | Path | None = None,
    split: str | None = "train",
    image_size: int | None = None,
    seed: int = 0,
    size: int | None = None,
    download: bool = False,
    transform: Callable[[Tensor], Tensor] | None = None,
    strict: bool = False,
) -> Dataset:
    """Build the image set a recipe names.

    Args:
        kind: ``"builtin"`` (:class:`SyntheticShapes`, no files needed), ``"cifar10"``
            (torchvision's archive in ``root``, or ``root/<split>/<class>/*`` folders) or
            ``"folder"`` (:class:`ImageFolder`).
        root: Data folder; required for ``"cifar10"`` and ``"folder"``, ignored for builtin.
        split: ``"train"`` or ``"test"``; for a folder, the sub-folder to read (None: root).
        image_size: Output size; builtin defaults to 32, the others keep their native size.
        seed: Seed of the builtin set (the others are fixed files).
        size: Number of items of the builtin set (default: 20000 train / 2000 test).
        download: Let ``"cifar10"`` fetch its data.
        transform: Optional callable applied to each image tensor.
        strict: Image folders: an unreadable file raises instead of being skipped.

    Returns:
        A map-style data set of ``(image (3, H, W) in [0, 1], label)``.
    """
    if kind == "builtin":
        return SyntheticShapes(
            root,
            split=split if split is not None else "train",
            size=size,
            image_size=image_size if image_size is not None else 32,
            seed=seed,
            transform=transform,
        )
    if kind in ("cifar10", "folder") and root is None:
        raise InputError(f"kind={kind!r} needs root=<data folder>; kind='builtin' needs none")
    if kind == "cifar10":
        split_name = split if split is not None else "train"
        if (Path(root) / split_name).is_dir():
            # A copy laid out as image folders (root/train/<class>/*.jpg), e.g. the JPEG copy
            # in ../shared/data/cifar10-jpg: read the folders instead of torchvision's archive.
            return ImageFolder(
                root, split=split_name, image_size=image_size, transform=transform, strict=strict
            )
        return CIFAR10(
            root,
            split=split if split is not None else "train",
            download=download,
            transform=transform,
            image_size=image_size,
        )
    if kind == "folder":
        return ImageFolder(
            root, split=split, image_size=image_size, transform=transform, strict=strict
        )
    raise InputError(f"kind must be 'builtin', 'cifar10' or 'folder', got {kind!r}")
