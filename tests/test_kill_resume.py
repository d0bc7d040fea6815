"""Kill and resume: `vqkit run image` killed with SIGKILL at random moments, some of them in the
middle of a checkpoint write, then continued with `--resume`, ends with exactly the weights (and
the loss history) of a run that was never interrupted.

Each run is a separate process running the real command line (``vqkit.cli.main``), forked from
the test process after it has imported torch: starting ``python -m vqkit`` afresh for every kill
costs a torch import each time (15 s on a loaded 2-core machine), too slow for a unit test. The
children run single-threaded, so no OpenMP pool is used across the fork.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

TINY = [
    "vqvae.hidden=16", "vqvae.res_hidden=8", "vqvae.num_codes=16", "vqvae.code_dim=8",
    "data.train_size=128", "data.test_size=32",
    "vqvae_train.steps=40", "vqvae_train.ckpt_every=5", "vqvae_train.batch_size=8",
    "vqvae_train.log_every=5",
    "prior.channels=8", "prior.num_layers=2",
    "prior_train.steps=20", "prior_train.ckpt_every=5", "prior_train.batch_size=8",
    "prior_train.log_every=5",
    "sample.per_class=1", "eval_batch_size=64",
    "eval.classifier_steps=2", "eval.classifier_channels=4", "eval.samples=10",
]  # fmt: skip
STAGES = ("vqvae", "prior")

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="needs fork, SIGKILL/SIGSTOP and /proc"
)


def _argv(out: Path, resume: bool) -> list[str]:
    sets = [x for s in TINY for x in ("--set", s)]
    return ["run", "image", "--out", str(out), "--device", "cpu", "--no-progress", *sets] + (
        ["--resume"] if resume else []
    )


def _cli(argv: list[str], log: str) -> None:
    """Child process: the `vqkit` command, output to ``log``, exit with its status."""
    import torch

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    # pytest's capture objects and log handlers came along with the fork: replace them.
    sys.stdout = sys.stderr = open(fd, "w", buffering=1)  # noqa: SIM115 - lives until exit
    logging.root.handlers.clear()
    torch.set_num_threads(1)  # the same arithmetic in every run
    from vqkit.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@pytest.fixture(scope="module")
def ctx():
    # Imported once here; each forked run then starts in milliseconds.
    import torch.utils.tensorboard  # noqa: F401

    import vqkit.cli  # noqa: F401
    from vqkit.runs import load_recipe

    load_recipe("image")
    return multiprocessing.get_context("fork")


def _start(ctx, out: Path, resume: bool, log: Path):
    p = ctx.Process(target=_cli, args=(_argv(out, resume), str(log)))
    p.start()
    return p


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    while _state(pid) not in ("T", "t", "gone", "Z"):
        time.sleep(0.0005)


def _pending_writes(ckpt: Path) -> set[str]:
    """Parts of a checkpoint save in progress: temporary files and directories (the step
    directory and the ``latest`` pointer being built), or a step directory missing a file."""
    try:
        names = os.listdir(ckpt)
    except FileNotFoundError:
        return set()
    parts = ("model.safetensors", "model.json", "trainer.pt")
    return {
        n
        for n in names
        if n.startswith(".")
        or (n.startswith("step_") and not all((ckpt / n / f).is_file() for f in parts))
    }


def _latest_name(out: Path, stage: str) -> str | None:
    """The checkpoint directory ``latest`` names (``step_00000040``, or ``step_00000040-1`` when
    a resumed run saved the same step again: `save_latest` never reuses a directory)."""
    pointer = out / stage / "ckpt" / "latest"
    return pointer.read_text().strip() if pointer.is_file() else None


def _step_of(name: str) -> int:
    return int(name[5:13])  # step_XXXXXXXX[-n]


def _latest_step(out: Path, stage: str) -> int | None:
    name = _latest_name(out, stage)
    return _step_of(name) if name is not None else None


def _kill_during_write(p, out: Path, stage: str, part: str) -> bool:
    """Stop the run whenever a checkpoint part appears; kill it if the write is still going.

    ``part`` is "dir" (the step directory, or a step directory missing files) or "pointer"
    (the ``latest`` file). Returns True when the kill landed in the middle of such a write,
    False when the run ended before one was caught.
    """

    def pending() -> set[str]:
        names = _pending_writes(ckpt)
        return {n for n in names if n.startswith(".latest") == (part == "pointer")}

    ckpt = out / stage / "ckpt"
    leftovers = pending()  # from an earlier kill; the next save removes them
    while p.is_alive():
        new = pending() - leftovers
        if not new:
            continue
        _stop(p.pid)
        if pending() & new:  # still there with the process frozen: mid-write
            os.kill(p.pid, signal.SIGKILL)
            return True
        leftovers |= new
        os.kill(p.pid, signal.SIGCONT)
    return False


def _kill_at_random(p, out: Path, stage: str, rng: random.Random) -> None:
    """Kill at a random moment after this run wrote its own first checkpoint of ``stage``."""
    first = _latest_step(out, stage)
    while p.is_alive() and _latest_step(out, stage) == first:
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.4))
    if p.is_alive():  # a run with nothing left to train can finish first (then exit code 0)
        os.kill(p.pid, signal.SIGKILL)


def _weights(out: Path, stage: str) -> dict:
    ckpt = out / stage / "ckpt"
    return load_file(ckpt / (ckpt / "latest").read_text().strip() / "model.safetensors")


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(ctx, tmp_path):
    ref = tmp_path / "ref"
    p = _start(ctx, ref, False, tmp_path / "ref.log")
    p.join(300)
    assert p.exitcode == 0, (tmp_path / "ref.log").read_text()[-3000:]

    out, rng = tmp_path / "killed", random.Random(7)
    plan = ["start", "vqvae-random", "vqvae-dir", "vqvae-pointer", "prior-random", "prior-dir"]
    mid_write, kills = 0, 0
    checks = []  # (log of a run started after a kill, the latest checkpoints the kill left)
    latest = None
    for i, kind in enumerate(plan):
        log = tmp_path / f"run{i}.log"
        p = _start(ctx, out, i > 0, log)
        if latest is not None:
            checks.append((log, latest))
        if kind == "start":  # anywhere from start-up to the first steps
            time.sleep(rng.uniform(0.0, 1.0))
            os.kill(p.pid, signal.SIGKILL)
        elif kind.endswith("random"):
            _kill_at_random(p, out, kind.split("-")[0], rng)
        else:
            mid_write += _kill_during_write(p, out, *kind.split("-"))
        p.join(60)
        latest = None
        if p.exitcode == 0:  # finished before the kill came: nothing more to interrupt here
            continue
        assert p.exitcode == -signal.SIGKILL, log.read_text()[-3000:]
        kills += 1
        latest = {s: _latest_name(out, s) for s in STAGES}

    log = tmp_path / "final.log"
    p = _start(ctx, out, True, log)
    if latest is not None:
        checks.append((log, latest))
    p.join(300)
    assert p.exitcode == 0, log.read_text()[-3000:]

    assert kills >= 4  # the kills did interrupt the run
    assert mid_write >= 2, "too few kills landed in the middle of a checkpoint write"
    # The run after a kill resumed from the checkpoint the kill had left as latest (runs killed
    # before their own checkpoint of a stage may not have logged it; the random and write kills
    # come only after one).
    for run_log, names in checks:
        text = run_log.read_text() if run_log.is_file() else ""
        for stage, name in names.items():
            if name is not None and f"resumed {stage} from " in text:
                expected = f"{out / stage / 'ckpt'}/{name} at step {_step_of(name)}"
                assert f"resumed {stage} from {expected}" in text
    resumed = [
        log
        for log, steps in checks
        if "resumed vqvae from " in (log.read_text() if log.is_file() else "")
    ]
    assert len(resumed) >= 3, "too few runs resumed from a checkpoint"
    for stage in STAGES:
        got, expected = _weights(out, stage), _weights(ref, stage)
        assert got.keys() == expected.keys()
        for k in expected:
            assert (got[k] == expected[k]).all(), f"{stage} {k} differs from the uninterrupted run"
        history = (out / stage / "history.jsonl").read_text()
        assert history == (ref / stage / "history.jsonl").read_text()
        assert not _pending_writes(out / stage / "ckpt")


def test_config_write_interrupted_keeps_the_old_config(tmp_path, monkeypatch):
    """`--resume` reads config.yaml, so a kill while it is rewritten must not leave half of it."""
    from vqkit.config import load_config, save_config
    from vqkit.runs import load_recipe
    from vqkit.train.checkpoint import CheckpointError

    recipe = load_recipe("image")
    path = tmp_path / "config.yaml"
    save_config(recipe.CONFIG(), path)
    before = path.read_text()
    changed = recipe.CONFIG(eval_batch_size=7)

    def power_cut(fd):  # the new text is in the page cache, not yet on disk
        raise OSError("power cut")

    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(CheckpointError, match="config.yaml"):
        save_config(changed, path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert load_config(recipe.CONFIG, path) == recipe.CONFIG()
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary left
