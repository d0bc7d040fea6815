"""A weights spec resolved, verified and loaded into a model you already built.

What every registered builder's ``weights=`` does (:func:`load_weights_into`): a bundle folder
or zip (the stage built by the same builder), a ``.safetensors`` file, a checkpoint directory, or
an ``http(s)://`` / ``file://`` URL of a bundle zip or safetensors file, with an optional
``#sha256=<hex>`` (on a bundle folder it pins ``metadata.json``, which holds the sha256 of
every other file; on a checkpoint folder, ``model.safetensors``). Loading never unpickles anything: JSON and safetensors only, each bundle file
checked against its sha256 in ``metadata.json`` before it is read.

This module sits below :mod:`vqkit.models` (it builds no model and imports :mod:`vqkit.io`
only); writing bundles and rebuilding models by name is :mod:`vqkit.bundle`, above them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqkit.errors import InputError
from vqkit.io import CONFIG, WEIGHTS, CheckpointError, atomic_write_bytes, load_weights

METADATA = "metadata.json"
FORMAT = "vqkit-bundle"
FORMAT_VERSION = 1
_STAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # no separators, no "..": safe to unzip
_URL = re.compile(r"^(https?|file)://", re.IGNORECASE)


class BundleError(CheckpointError):
    """A bundle that cannot be written or read, or whose files fail their checksum."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- reading a bundle ------------------------------------------------------------------------


def _refuse_pickle(data: bytes, where: str) -> None:
    """A clear refusal for torch.save / pickle files posing as safetensors."""
    if data[:1] == b"\x80" or data[:2] == b"PK":  # pickle protocol 2+, torch.save's zip
        raise BundleError(
            f"{where} is a pickle (torch.save) file, not safetensors; vqkit never unpickles "
            f"weights, since unpickling can run arbitrary code. Re-export it with vqkit export."
        )


@contextmanager
def _opened(path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(folder, metadata)`` of a bundle folder, or of a zip extracted to a temporary folder
    (only the names a bundle may hold are extracted)."""
    if path.is_dir():
        yield path, _metadata(path / METADATA, path)
        return
    if not path.is_file():
        raise FileNotFoundError(f"bundle {path} not found")
    if not zipfile.is_zipfile(path):
        raise BundleError(
            f"{path} is neither a bundle folder nor a bundle zip; make one with "
            f"`vqkit export RUN_DIR OUT`"
        )
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
        names = set(archive.namelist())
        if METADATA not in names:
            raise BundleError(
                f"{path} is a zip file without {METADATA}, not a vqkit bundle (a torch.save "
                f".pt file is a zip too; it is never unpickled here)"
            )
        (Path(tmp) / METADATA).write_bytes(archive.read(METADATA))
        metadata = _metadata(Path(tmp) / METADATA, path)
        for stage in metadata["stages"]:
            for name in (WEIGHTS, CONFIG):
                member = f"{stage}/{name}"
                if member not in names:
                    raise BundleError(f"{path} lacks {member}, listed in its {METADATA}")
                atomic_write_bytes(Path(tmp) / stage / name, archive.read(member))
        yield Path(tmp), metadata


def _metadata(file: Path, bundle: Path) -> dict[str, Any]:
    if not file.is_file():
        raise BundleError(
            f"{bundle} is not a vqkit bundle (no {METADATA}); make one with "
            f"`vqkit export RUN_DIR OUT`"
        )
    try:
        metadata = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{bundle}: {METADATA} is not valid JSON: {e}") from e
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise BundleError(f"{bundle}: {METADATA} does not describe a {FORMAT}")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(
            f"{bundle} has bundle format {metadata['format_version']}; this vqkit reads up to "
            f"{FORMAT_VERSION}: upgrade vqkit"
        )
    stages = metadata.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise BundleError(f"{bundle}: {METADATA} lists no stages")
    for stage in stages:
        if not _STAGE.match(stage):
            raise BundleError(f"{bundle}: stage name {stage!r} is not a plain folder name")
    return metadata


def _verify_stage(folder: Path, stage: str, info: dict[str, Any], bundle: Path) -> None:
    """Each file of a stage against its recorded sha256; pickles are refused by content."""
    for name in (WEIGHTS, CONFIG):
        file = folder / stage / name
        if not file.is_file():
            raise BundleError(f"{bundle}: {stage}/{name} is missing")
        data = file.read_bytes()
        expected = info.get("files", {}).get(name, {}).get("sha256")
        actual = _sha256(data)
        if expected != actual:
            raise BundleError(
                f"checksum mismatch for {stage}/{name} in {bundle}: expected sha256 {expected}, "
                f"got {actual}. The file was modified or corrupted after export (or the "
                f"download was cut short); download or export the bundle again."
            )
        if name == WEIGHTS:
            _refuse_pickle(data, f"{bundle}: {stage}/{name}")


def read_bundle_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata.json`` of a bundle (folder, zip, or URL of a zip)."""
    with _opened(_local(path, progress=False)) as (_, metadata):
        return metadata


# --- weights= for builders -------------------------------------------------------------------


def _split_hash(spec: str) -> tuple[str, str | None]:
    """``"x#sha256=<hex>"`` -> ``("x", "<hex>")``."""
    base, sep, fragment = spec.partition("#")
    if not sep:
        return spec, None
    match = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    if match is None:
        raise InputError(f"{spec!r}: the part after '#' must be sha256=<64 hex digits>")
    return base, match.group(1).lower()


def _local(weights: str | Path, *, progress: bool, check_hash: bool = True) -> Path:
    """A local path for ``weights``: URLs are downloaded once into torch.hub's cache."""
    spec, expected = _split_hash(str(weights))
    if _URL.match(spec):
        name = Path(spec.split("?")[0]).name or "weights"
        folder = Path(torch.hub.get_dir()) / "checkpoints" / "vqkit"
        target = folder / f"{_sha256(spec.encode())[:8]}-{name}"
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(spec, str(target), progress=progress)
        path = target
    else:
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"weights {path} not found")
    if expected is not None and check_hash:
        pinned = _pinned_file(path)
        actual = _sha256(pinned.read_bytes())
        if actual != expected:
            if path.parent.name == "vqkit" and _URL.match(spec):
                path.unlink()  # a bad download must not stay in the cache
            raise BundleError(
                f"checksum mismatch for {weights}"
                + (f" ({pinned.name})" if pinned != path else "")
                + f": expected sha256 {expected}, got {actual}; "
                f"the file changed since the hash was published, or the download was cut short"
            )
    return path


def _pinned_file(path: Path) -> Path:
    """The file a ``#sha256=`` pin covers: a file itself; for a bundle folder its
    ``metadata.json`` (which holds the sha256 of every other file, each checked on load); for a
    checkpoint folder its ``model.safetensors``."""
    if not path.is_dir():
        return path
    for name in (METADATA, WEIGHTS):
        if (path / name).is_file():
            return path / name
    raise BundleError(
        f"{path}: a #sha256= pin on a folder covers its {METADATA} (a bundle) or {WEIGHTS} (a "
        f"checkpoint), and it holds neither"
    )


def _pick_stage(metadata: dict[str, Any], builder: str | None, bundle: Path) -> str:
    stages = metadata["stages"]
    found = [s for s, info in stages.items() if info.get("builder") == builder]
    if len(found) == 1:
        return found[0]
    listing = ", ".join(f"{s} ({info.get('builder')})" for s, info in stages.items())
    reason = "none of its stages was" if not found else "more than one stage was"
    raise BundleError(
        f"{bundle}: {reason} built by {builder!r}; stages: {listing}. Use "
        f"load_bundle({str(bundle)!r})[stage] to pick one."
    )


def _check_config(model: nn.Module, stage_config: dict, where: str) -> None:
    """Name the builder arguments that differ, before the weights fail to fit."""
    mine = getattr(model, "config", {}).get("kwargs", {})
    theirs = stage_config.get("kwargs", {})
    diff = [
        f"{k}={mine.get(k)!r} (weights: {theirs.get(k)!r})"
        for k in sorted(mine.keys() | theirs.keys())
        if mine.get(k) != theirs.get(k)
    ]
    if diff:
        raise BundleError(
            f"the weights in {where} were trained with other builder arguments: "
            f"{'; '.join(diff)}. Build the model with the weights' arguments, or use "
            f"load_bundle(), which does."
        )


def load_weights_into(
    model: nn.Module, weights: str | Path, *, progress: bool = True, check_hash: bool = True
) -> nn.Module:
    """Load ``weights`` into ``model`` (what a builder's ``weights=`` does).

    Args:
        model: a model made by a registered builder (its ``config`` names the builder).
        weights: a bundle folder or zip (the stage built by the same builder is used), a
            ``.safetensors`` file, a checkpoint or stage directory, or an ``http(s)://`` or
            ``file://`` URL of a bundle zip or safetensors file. ``#sha256=<hex>`` at the end
            pins the file's hash.
        progress: show a progress bar while downloading.
        check_hash: verify sha256 sums (the bundle's, and any ``#sha256=``).

    Raises:
        BundleError: checksum mismatch, no matching stage, other builder arguments, or a
            pickle file (``.pt``/``.pth``), which is never loaded.
    """
    path = _local(weights, progress=progress, check_hash=check_hash)
    if path.is_file() and path.suffix.lower() in (".pt", ".pth", ".pkl", ".ckpt", ".bin"):
        raise BundleError(
            f"{path}: {path.suffix} files are pickles and are never loaded (unpickling can run "
            f"arbitrary code); give a .safetensors file or a vqkit bundle"
        )
    if path.is_dir() and not (path / METADATA).is_file():
        return load_weights(path, model)  # a checkpoint (or stage) directory
    if path.is_file() and path.suffix.lower() == ".safetensors":
        _refuse_pickle(path.read_bytes()[:2], str(path))
        with tempfile.TemporaryDirectory() as tmp:  # load_weights reads <dir>/model.safetensors
            shutil.copyfile(path, Path(tmp) / WEIGHTS)
            return load_weights(tmp, model)
    with _opened(path) as (folder, metadata):
        stage = _pick_stage(metadata, getattr(model, "config", {}).get("builder"), path)
        if check_hash:
            _verify_stage(folder, stage, metadata["stages"][stage], path)
        _check_config(model, json.loads((folder / stage / CONFIG).read_text()), f"{path} ({stage})")
        return load_weights(folder / stage, model)
