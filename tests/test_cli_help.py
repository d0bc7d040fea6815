"""The command line: every option documented with its default, `python -m vqkit`, `vqkit runs`."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from vqkit.cli import KEY_METRICS, build_parser, main
from vqkit.io import write_json
from vqkit.train.checkpoint import save_latest


def _parsers(parser: argparse.ArgumentParser, name: str = "vqkit"):
    """Every (name, parser) pair: the main parser and its subcommands, recursively."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _squash(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", [n for n, _ in _parsers(build_parser())])
def test_every_option_is_listed_with_its_default(name):
    parser = dict(_parsers(build_parser()))[name]
    assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter, name
    text = _squash(parser.format_help())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help, f"{name}: {label} has no help text"
        if not action.option_strings and action.nargs not in ("?", "*"):
            continue  # a required positional has no default
        if action.required or isinstance(action, argparse._SubParsersAction):
            continue
        # The formatter appends the default; a help text repeating one would show two.
        assert "default:" not in action.help.lower(), f"{name}: {label} states its own default"
        assert f"(default: {action.default})" in text, f"{name}: {label} shows no default"


def test_python_m_vqkit_help_lists_every_command():
    proc = subprocess.run(
        [sys.executable, "-m", "vqkit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "sample", "reconstruct", "report", "export", "runs"):
        assert command in proc.stdout
    assert "torchrun --nproc_per_node=N -m vqkit run" in _squash(proc.stdout)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)


def _fake_run(root, name, *, steps, target, metrics=None, kind="builtin"):
    run = root / name
    run.mkdir(parents=True)
    config = {"modality": "image", "data": {"kind": kind, "root": None}}
    config["vqvae_train"] = {"steps": target}
    (run / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    save_latest(run / "vqvae" / "ckpt", _Tiny(), step=steps)
    if metrics is not None:
        write_json(run / "metrics.json", metrics)
    return run


def test_runs_lists_finished_and_unfinished_runs(tmp_path, capsys):
    torch.manual_seed(0)
    metrics = {"test_psnr": 23.456789, "bits_per_dim": 3.25, "test_perplexity": 120.0}
    _fake_run(tmp_path, "image-a", steps=30, target=30, metrics=metrics)
    _fake_run(tmp_path, "image-b", steps=10, target=30)
    (tmp_path / "not-a-run").mkdir()
    assert main(["runs", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # header + two runs
    header = lines[0].split()
    assert header[:5] == ["run", "modality", "data", "status", "steps"]
    assert header[5:] == [k for k in KEY_METRICS if k in metrics]
    a, b = lines[1], lines[2]
    assert a.startswith("image-a") and "finished" in a and "unfinished" not in a
    assert "vqvae 30/30" in a and "23.46" in a and "3.25" in a and "120" in a
    assert b.startswith("image-b") and "unfinished" in b and "vqvae 10/30" in b
    assert "builtin" in a


def test_runs_with_chosen_metric_and_errors(tmp_path, capsys):
    _fake_run(tmp_path, "r", steps=5, target=5, metrics={"test_mse": 0.5, "test_psnr": 20.0})
    assert main(["runs", str(tmp_path / "r"), "--metric", "test_mse"]) == 0  # one run dir
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-1] == "test_mse" and out[1].split()[-1] == "0.5"
    assert main(["runs", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["runs", str(empty)]) == 0
    assert "no runs in" in capsys.readouterr().out
