"""Run directories: where a recipe's outputs live, and how the CLI finds recipes and runs.

A run directory holds ``config.yaml`` (the resolved recipe config, whose ``modality`` names the
recipe), one folder per trained stage (``vqvae/``, ``prior/``: checkpoints, TensorBoard events,
``history.jsonl``), ``metrics.json``, ``media.json`` with the media files it lists, and
``report.html``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from vqkit.errors import InputError
from vqkit.io import write_json

MODALITIES = ("image", "audio", "video")


def recipes_dir() -> Path:
    """The recipes: ``$VQKIT_RECIPES``, else the copy an installed wheel ships inside the package
    (``vqkit/recipes/``), else the ``recipes/`` folder of a checkout beside the package."""
    env = os.environ.get("VQKIT_RECIPES")
    if env:
        path = Path(env)
    else:
        package = Path(__file__).resolve().parent
        shipped = package / "recipes"
        path = shipped if shipped.is_dir() else package.parent / "recipes"
    if not path.is_dir():
        raise FileNotFoundError(
            f"recipes folder {path} not found: reinstall vqkit (its wheel ships the recipes), "
            "run it from a checkout (uv sync), or set VQKIT_RECIPES=<repo>/recipes"
        )
    return path


def load_recipe(modality: str) -> ModuleType:
    """Import ``recipes/<modality>/recipe.py`` as the module ``vqkit_recipes_<modality>.recipe``.

    The folder is imported as a package, so a recipe's own modules beside it (the audio
    recipe's ``evaluate.py``) are relative imports (``from . import evaluate``).
    """
    if modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; vqkit has recipes for {list(MODALITIES)}")
    folder = recipes_dir() / modality
    package = f"vqkit_recipes_{modality}"
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            package, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        if spec is None or spec.loader is None or not (folder / "recipe.py").is_file():
            raise FileNotFoundError(f"cannot import the {modality} recipe from {folder}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{package}.recipe")


def preset_path(modality: str, preset: str) -> Path:
    """``recipes/<modality>/<preset>.yaml``, with the list of presets when it does not exist."""
    folder = recipes_dir() / modality
    path = folder / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise FileNotFoundError(f"no preset {preset!r} for {modality}; presets: {known}")
    return path


def new_run_dir(modality: str, preset: str, out: str | Path | None) -> Path:
    """``out`` as given, else ``runs/<modality>-<preset>-<YYYYmmdd-HHMMSS>``."""
    if out is not None:
        return Path(out)
    return Path("runs") / f"{modality}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config of a run directory, as a dict.

    Raises:
        FileNotFoundError: no ``config.yaml``.
        InputError: a ``config.yaml`` that cannot be read or parsed, or is not a run config
            (one line naming the file).
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {run_dir} is not a vqkit run directory (made by `vqkit run`)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = " ".join(str(e).split())  # YAML's messages span lines
        raise InputError(
            f"{path} is damaged and cannot be read ({reason}); restore it or remove the run"
        ) from e
    if not isinstance(data, dict) or "modality" not in data:
        raise InputError(f"{path} is not a vqkit run config (no 'modality' key)")
    return data


def _first_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | Path, what: str = "--out") -> None:
    """Refuse, before any work, a folder to write that cannot be made: one below a file, or
    in a folder without write permission (``what`` names the setting in the message)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder; choose another {what}")
    _check_parent(path, path, what)


def check_output_file(path: str | Path | None, what: str = "--out") -> None:
    """Refuse, before any work, a file to write that is an existing folder, or whose folder
    cannot be made or written (``None``: the command's default, always fine)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name, e.g. {path / 'out'}")
    _check_parent(path.parent, path, what)


def _check_parent(folder: Path, path: Path, what: str) -> None:
    base = _first_existing(folder)
    if not base.is_dir():
        raise InputError(
            f"{what} {path} cannot be written: {base} is a file, not a folder; choose another "
            f"{what}"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(
            f"{what} {path} cannot be written: no write permission in {base}; choose another {what}"
        )


def add_media(run_dir: Path, kind: str, path: str, title: str, group: str) -> None:
    """Record a media file (relative to ``run_dir``) in ``media.json`` for the report."""
    file = run_dir / "media.json"
    items = json.loads(file.read_text()) if file.exists() else []
    items = [i for i in items if i["path"] != path]
    items.append({"kind": kind, "path": path, "title": title, "group": group})
    write_json(file, items)
