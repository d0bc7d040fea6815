"""Bundles: a finished run's models in a form anyone can load, with no run directory and no GPU.

A bundle is a folder, or the same folder as one ``.zip`` file (handy for a URL)::

    metadata.json            format, vqkit and torch versions, the run's config, data set,
                             metrics, and per stage: builder, step, sha256 and size of each file
    <stage>/model.safetensors    weights (tensors only: loading runs no code)
    <stage>/model.json           {"builder": ..., "kwargs": ...}, which rebuilds the model

``vqkit export RUN_DIR OUT`` writes one (``OUT`` ending in ``.zip`` gives the archive);
:func:`load_bundle` reads it back into models; every registered builder takes
``weights=`` (a bundle, a ``.safetensors`` file, a checkpoint directory, or a URL of a zip bundle
or safetensors file), torchvision style::

    >>> models = load_bundle("cifar10-bundle.zip")  # doctest: +SKIP
    >>> vqvae = vqvae_image(num_codes=512, weights="cifar10-bundle.zip")  # doctest: +SKIP

Loading never unpickles anything: JSON and safetensors only, each file checked against its
sha256 in ``metadata.json`` before it is read. A URL may carry ``#sha256=<hex>`` to pin the
download itself.

This module sits above :mod:`vqkit.models` and :mod:`vqkit.train`: it builds models by name
(:func:`load_bundle`, :func:`load_model`). Resolving and verifying a weights spec for a model
already built is :mod:`vqkit.weights`, below the models, so that builders can take ``weights=``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqkit.io import (
    CONFIG,
    WEIGHTS,
    CheckpointError,
    atomic_write,
    atomic_write_bytes,
    latest_checkpoint,
    load_weights,
    resolve_checkpoint,
)
from vqkit.models import build_model
from vqkit.runs import read_run_config
from vqkit.weights import (
    FORMAT,
    FORMAT_VERSION,
    METADATA,
    BundleError,
    _local,
    _opened,
    _sha256,
    _verify_stage,
    load_weights_into,
    read_bundle_metadata,
)

__all__ = [
    "BundleError",
    "export_bundle",
    "load_bundle",
    "load_model",
    "load_weights_into",
    "read_bundle_metadata",
]


# --- export ----------------------------------------------------------------------------------


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def export_bundle(run_dir: str | Path, out: str | Path) -> Path:
    """Write the latest weights of every trained stage of ``run_dir`` as a bundle at ``out``.

    Args:
        run_dir: a run directory (``config.yaml`` plus stage folders with ``ckpt/latest``).
        out: the bundle to create: a folder, or a zip file when it ends in ``.zip``. It must
            not exist yet.

    Returns:
        ``out`` as a Path.

    Raises:
        BundleError: no trained stage, a checkpoint without ``model.json`` or one that does not
            load (every file is read and its model rebuilt first), or ``out`` exists.
        FileNotFoundError: ``run_dir`` is not a run directory.
    """
    run_dir, out = Path(run_dir), Path(out)
    config = read_run_config(run_dir)
    if out.exists():
        raise BundleError(f"{out} already exists; choose another path or delete it first")
    files: dict[str, bytes] = {}
    stages: dict[str, Any] = {}
    for stage_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        ckpt = latest_checkpoint(stage_dir / "ckpt")
        if ckpt is None:
            continue
        if not (ckpt / CONFIG).is_file():
            raise BundleError(f"{ckpt} has no {CONFIG}, so its model cannot be rebuilt by name")
        _verify_checkpoint(ckpt)
        entry: dict[str, Any] = {"files": {}}
        for name in (WEIGHTS, CONFIG):
            data = (ckpt / name).read_bytes()
            files[f"{stage_dir.name}/{name}"] = data
            entry["files"][name] = {"sha256": _sha256(data), "bytes": len(data)}
        entry["builder"] = json.loads(files[f"{stage_dir.name}/{CONFIG}"])["builder"]
        entry["step"] = int(ckpt.name.split("_")[1].split("-")[0])  # step_00001000[-n]
        stages[stage_dir.name] = entry
    if not stages:
        raise BundleError(f"{run_dir} has no trained stage (no <stage>/ckpt/latest) to export")
    metrics_file = run_dir / "metrics.json"
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vqkit_version": _version("vqkit"),
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": run_dir.resolve().name,
        "modality": config.get("modality"),
        "data": config.get("data"),
        "finished": metrics_file.is_file(),
        "metrics": json.loads(metrics_file.read_text()) if metrics_file.is_file() else {},
        "stages": stages,
        "config": config,
    }
    files[METADATA] = (json.dumps(metadata, indent=2, default=str) + "\n").encode()
    _write(out, files)
    return out


def _verify_checkpoint(ckpt: Path) -> None:
    """Refuse to package a checkpoint that would not load: its weights are read and its
    ``model.json`` must rebuild a model they fit."""
    try:
        load_model(ckpt)
    except (CheckpointError, ValueError, TypeError, KeyError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise BundleError(f"cannot export: the checkpoint {ckpt} does not load: {reason}") from e


def _write(out: Path, files: dict[str, bytes]) -> None:
    """The bundle's files at ``out`` (folder or zip), all or nothing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".zip":

        def write_zip(f) -> None:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for name, data in files.items():
                    archive.writestr(name, data)

        atomic_write(out, write_zip)
        return
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- reading: models rebuilt by name ---------------------------------------------------------


def load_model(path: Path | str, *, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model from ``model.json`` with ``vqkit.models.build_model``, then its weights.

    Args:
        path: a checkpoint directory, a ``ckpt/`` folder or a run directory.
        device: where to put the model.
    """
    directory = resolve_checkpoint(path)
    file = directory / CONFIG
    if not file.is_file():
        raise CheckpointError(
            f"{directory} has no {CONFIG} (the model that wrote it had no `config` dict); "
            f"build the model yourself and call load_weights({str(directory)!r}, model)"
        )
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e
    model = build_model(config)
    load_weights(directory, model)
    return model.to(device)


def _build(folder: Path, stage: str) -> nn.Module:
    config = json.loads((folder / stage / CONFIG).read_text())
    return load_weights(folder / stage, build_model(config))


def load_bundle(
    path: str | Path, *, map_location: torch.device | str = "cpu", progress: bool = True
) -> dict[str, nn.Module]:
    """Every stage of a bundle as a model in eval mode, keyed by stage name.

    Args:
        path: a bundle folder, a bundle zip, or the URL of a bundle zip (``#sha256=`` optional).
        map_location: the device for the models.
        progress: show a progress bar while downloading.

    Raises:
        BundleError: not a bundle, a checksum mismatch (names the file), or a pickle in place
            of a safetensors file.
    """
    bundle = _local(path, progress=progress)
    models = {}
    with _opened(bundle) as (folder, metadata):
        for stage, info in metadata["stages"].items():
            _verify_stage(folder, stage, info, bundle)
            models[stage] = _build(folder, stage).to(map_location).eval()
    return models
