"""Presets are small: each states only what it changes from the defaults (the builders' for the
model sections, the recipe's for the rest), and every preset loads."""

from __future__ import annotations

import pytest
import yaml

from vqkit.config import config_to_dict, load_config
from vqkit.runs import MODALITIES, load_recipe, recipes_dir

PRESETS = [(m, p.stem) for m in MODALITIES for p in sorted((recipes_dir() / m).glob("*.yaml"))]


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize(("modality", "preset"), PRESETS)
def test_a_preset_states_only_what_it_changes(modality, preset):
    recipe = load_recipe(modality)
    path = recipes_dir() / modality / f"{preset}.yaml"
    defaults = dict(_leaves(config_to_dict(recipe.CONFIG())))
    loaded = dict(_leaves(config_to_dict(load_config(recipe.CONFIG, path))))
    stated = dict(_leaves(yaml.safe_load(path.read_text()) or {}))
    for key in stated:
        assert loaded[key] != defaults[key], f"{path}: {key} repeats the default {defaults[key]!r}"
