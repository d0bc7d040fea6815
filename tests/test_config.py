from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from vqkit.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from vqkit.train.loop import TrainConfig


@dataclass
class Quant:
    num_codes: int = 512
    beta: float = 0.25
    kmeans_init: bool = False
    restart_after: int | None = None


@dataclass
class Net:
    channels: int = 64
    strides: tuple[int, ...] = (2, 2)
    kernel: tuple[int, int] = (3, 3)
    mode: Literal["a", "b"] = "a"
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Recipe:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, batch_size=16))
    quantizer: Quant = field(default_factory=Quant)
    net: Net = field(default_factory=Net)
    name: str = "run"
    data_root: Path = Path("data")
    tag: str | None = None
    opt_quant: Quant | None = None


def test_defaults_and_nested_default_factory_kept():
    cfg = load_config(Recipe, None, [])
    assert cfg == Recipe()
    # A partial nested section keeps the parent's non-class defaults (steps=1000, batch 16).
    cfg = load_config(Recipe, {"train": {"lr": 0.1}}, [])
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr) == (1000, 16, 0.1)


def test_overrides_coerce_to_annotated_types():
    cfg = load_config(
        Recipe,
        None,
        [
            "quantizer.num_codes=256",
            "train.steps=100",
            "quantizer.kmeans_init=true",
            "quantizer.beta=1e-3",  # YAML 1.1 reads 1e-3 as a string
            "train.grad_clip=1",  # int for a float | None field
            "net.strides=[4,2,2]",
            "net.kernel=[5, 1]",
            "net.mode=b",
            "net.extra={w: 2}",
            "name=2024",  # str field: the text as written
            "data_root=/tmp/x",
            "quantizer.restart_after=50",
        ],
    )
    assert cfg.quantizer.num_codes == 256 and type(cfg.quantizer.num_codes) is int
    assert cfg.train.steps == 100
    assert cfg.quantizer.kmeans_init is True
    assert cfg.quantizer.beta == pytest.approx(1e-3) and type(cfg.quantizer.beta) is float
    assert cfg.train.grad_clip == 1.0 and type(cfg.train.grad_clip) is float
    assert cfg.net.strides == (4, 2, 2)
    assert cfg.net.kernel == (5, 1)
    assert cfg.net.mode == "b"
    assert cfg.net.extra == {"w": 2.0}
    assert cfg.name == "2024"
    assert cfg.data_root == Path("/tmp/x")
    assert cfg.quantizer.restart_after == 50
    assert cfg.train.batch_size == 16  # untouched neighbours keep their defaults


@pytest.mark.parametrize(
    "text, expected",
    [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("no", False)],
)
def test_bool_spellings(text, expected):
    assert load_config(Recipe, None, [f"train.amp={text}"]).train.amp is expected


def test_null_for_optional_fields():
    cfg = load_config(Recipe, {"tag": "x", "train": {"grad_clip": 2.0}}, ["tag=null"])
    assert cfg.tag is None
    assert load_config(Recipe, None, ["train.grad_clip=none"]).train.grad_clip is None
    # Setting a key inside an Optional section that defaults to None builds the section.
    cfg = load_config(Recipe, None, ["opt_quant.num_codes=8"])
    assert cfg.opt_quant == Quant(num_codes=8)


def test_override_wins_over_preset_file(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  steps: 10\n  lr: 0.01\nquantizer:\n  num_codes: 32\n")
    cfg = load_config(Recipe, preset, ["train.steps=20"])
    assert (cfg.train.steps, cfg.train.lr, cfg.quantizer.num_codes) == (20, 0.01, 32)


def test_unknown_override_key_lists_keys_and_suggests():
    with pytest.raises(ConfigError) as e:
        load_config(Recipe, None, ["quantizer.num_code=3"])
    msg = str(e.value)
    assert "'quantizer.num_code'" in msg
    assert "did you mean 'quantizer.num_codes'" in msg
    for key in ("num_codes", "beta", "kmeans_init", "restart_after"):
        assert key in msg


def test_unknown_key_in_yaml(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  stepz: 10\n")
    with pytest.raises(ConfigError, match=r"'train.stepz'.*did you mean 'train.steps'") as e:
        load_config(Recipe, preset, [])
    assert "batch_size" in str(e.value) and "lr_schedule" in str(e.value)
    with pytest.raises(ConfigError, match=r"unknown config key 'nett'.*top level.*quantizer"):
        load_config(Recipe, {"nett": {}}, [])


def test_unknown_top_level_override_is_an_error():
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        load_config(Recipe, None, ["bogus=1"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(Recipe, None, ["name.sub=1"])


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train.steps=abc", "train.steps", "int"),
        ("train.steps=1.5", "train.steps", "int"),
        ("train.lr=fast", "train.lr", "float"),
        ("train.amp=maybe", "train.amp", "bool"),
        ("net.strides=3", "net.strides", "tuple"),
        ("net.strides=[2,x]", "net.strides[1]", "int"),
        ("quantizer.num_codes=true", "quantizer.num_codes", "int"),
        ("train.batch_size=null", "train.batch_size", "int"),
    ],
)
def test_wrong_type_names_key_value_and_type(override, key, expected):
    with pytest.raises(ConfigError) as e:
        load_config(Recipe, None, [override])
    msg = str(e.value)
    assert repr(key) in msg and expected in msg


def test_wrong_type_in_yaml_and_literal_choice():
    with pytest.raises(ConfigError, match=r"'name' expects str, got 5"):
        load_config(Recipe, {"name": 5}, [])
    with pytest.raises(ConfigError, match=r"'net.kernel' expects 2 values"):
        load_config(Recipe, None, ["net.kernel=[1,2,3]"])
    with pytest.raises(
        ConfigError, match=r"'train.lr_schedule' must be one of 'constant', 'cosine'"
    ):
        load_config(Recipe, None, ["train.lr_schedule=linear"])


def test_post_init_validation_becomes_config_error():
    with pytest.raises(ConfigError, match="config key 'train.batch_size' must be >= 1"):
        load_config(Recipe, None, ["train.batch_size=0"])


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"missing required config key 'steps'"):
        load_config(TrainConfig, None, [])
    assert load_config(TrainConfig, None, ["steps=5"]).steps == 5


def test_malformed_overrides():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Recipe, None, ["train.steps"])
    with pytest.raises(ConfigError, match="malformed"):
        load_config(Recipe, None, ["train..steps=1"])


def test_bad_preset_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Recipe, tmp_path / "nope.yaml", [])
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Recipe, bad, [])


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(
        Recipe, None, ["net.strides=[4,2]", "tag=x", "opt_quant.beta=0.5", "net.extra={a: 1.5}"]
    )
    path = tmp_path / "cfg" / "config.yaml"
    save_config(cfg, path)
    text = path.read_text()
    assert "!!python" not in text  # plain YAML, readable by safe_load
    assert yaml.safe_load(text)["net"]["strides"] == [4, 2]
    assert load_config(Recipe, path, []) == cfg
    assert config_from_dict(Recipe, config_to_dict(cfg)) == cfg


def test_config_to_dict_is_plain():
    d = config_to_dict(Recipe())
    assert d["net"]["strides"] == [2, 2]
    assert d["data_root"] == "data"
    assert d["train"]["steps"] == 1000
