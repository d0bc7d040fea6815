"""Distributed training on 2 CPU processes (gloo): the codebook stays in sync, and 2 ranks
train exactly what 1 process trains on the same global batches.

The workers run once per session (spawning processes costs seconds) and save what they saw;
each test then checks one property against a single-process reference computed here.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from vqkit.models import vqvae_nd
from vqkit.quantize import VectorQuantizer
from vqkit.train import EpochBatchSampler, TrainConfig, fit, load_weights
from vqkit.train.checkpoint import latest_checkpoint

WORLD = 2
TORCHRUN = Path(sys.executable).parent / "torchrun"
VQ_STEPS = 6
VQ_OPTS = dict(ema=True, decay=0.8, kmeans_init=True, kmeans_iters=4, restart_after=2, seed=3)
FIT_CFG = TrainConfig(
    steps=4, lr=3e-3, batch_size=8, device="cpu", amp=False, ckpt_every=2, log_every=1
)
FIT = dict(name="vq", progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vq_batch(step: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s ``(2, 4, 5)`` input at ``step``: different on every rank."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(2, 4, 5, generator=gen) * (1.0 + rank)


def _fit_data() -> TensorDataset:
    gen = torch.Generator().manual_seed(7)
    return TensorDataset(torch.rand(16, 2, 8, generator=gen) - 0.5)


def _fit_model(seed: int):
    torch.manual_seed(seed)
    return vqvae_nd(
        dims=1,
        in_channels=2,
        strides=[2],
        hidden=8,
        res_hidden=4,
        num_res_blocks=1,
        num_codes=8,
        code_dim=4,
        quantizer=dict(ema=True, kmeans_init=True, restart_after=2),
    )


def _fit_step(model, batch):
    (x,) = batch
    out = model(x)
    return out.loss, {"usage": out.quant.usage}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    from vqkit.distributed import cleanup, init_distributed

    # A short timeout: ranks that fell out of step fail the test instead of hanging it.
    assert init_distributed(timeout=datetime.timedelta(seconds=60))
    try:
        out_dir = Path(out)
        # 1. The quantizer alone, fed different batches on each rank.
        vq = VectorQuantizer(8, 4, **VQ_OPTS).train()
        codes = [vq(_vq_batch(step, rank)).codes for step in range(VQ_STEPS)]
        torch.save({"state": vq.state_dict(), "codes": codes}, out_dir / f"vq{rank}.pt")

        # 2. fit with DDP, ranks building their models from different seeds (rank 0's wins);
        #    rank 1 gets its own run_dir to show that it writes nothing there.
        model = _fit_model(seed=100 + rank)
        run = out_dir / f"fresh{rank}"
        result = fit(model, _fit_step, _fit_data(), cfg=FIT_CFG, run_dir=run, **FIT)
        saved = {"state": model.state_dict(), "history": result.history, "step": result.step}
        torch.save(saved, out_dir / f"fit{rank}.pt")

        # 3. Half the steps, then resume to the end (shared run_dir, as a cluster's shared FS).
        half = TrainConfig(**{**vars(FIT_CFG), "steps": FIT_CFG.steps // 2})
        shared = out_dir / "shared"
        fit(_fit_model(seed=100 + rank), _fit_step, _fit_data(), cfg=half, run_dir=shared, **FIT)
        resumed = _fit_model(seed=6)  # its weights come from the checkpoint
        fit(resumed, _fit_step, _fit_data(), cfg=FIT_CFG, run_dir=shared, **FIT, resume=True)
        torch.save(resumed.state_dict(), out_dir / f"resumed{rank}.pt")
    finally:
        cleanup()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    """Run the 2-process workers once; their results lie in the returned folder."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def _load(path: Path):
    return torch.load(path, weights_only=True)


def _assert_states_close(a: dict, b: dict, *, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def test_codebook_identical_on_both_ranks(ranks):
    r0, r1 = _load(ranks / "vq0.pt"), _load(ranks / "vq1.pt")
    assert int(r0["state"]["draws"]) >= 2  # k-means ran, and dead codes were restarted
    for k in r0["state"]:  # codebook, cluster_size, embed_sum, unused_steps, draws, ...
        assert torch.equal(r0["state"][k], r1["state"][k]), k


def test_codebook_equals_one_process_on_the_concatenated_batches(ranks):
    torch.set_num_threads(1)
    vq = VectorQuantizer(8, 4, **VQ_OPTS).train()
    codes = []
    for step in range(VQ_STEPS):
        batch = torch.cat([_vq_batch(step, r) for r in range(WORLD)])  # rank order = gather order
        codes.append(vq(batch).codes)
    # k-means ran once and dead codes were restarted: both draw from the gathered rows.
    assert int(vq.draws) >= 2, "the test data should make the quantizer restart dead codes"
    r0, r1 = _load(ranks / "vq0.pt"), _load(ranks / "vq1.pt")
    _assert_states_close(r0["state"], vq.state_dict())
    for step in range(VQ_STEPS):
        assert torch.equal(torch.cat([r0["codes"][step], r1["codes"][step]]), codes[step])


def test_ddp_fit_equals_one_process_with_the_same_global_batch(ranks, tmp_path):
    torch.set_num_threads(1)
    model = _fit_model(seed=100)  # rank 0's initial weights
    result = fit(model, _fit_step, _fit_data(), cfg=FIT_CFG, run_dir=tmp_path, **FIT)
    r0, r1 = _load(ranks / "fit0.pt"), _load(ranks / "fit1.pt")
    for k in r0["state"]:  # every parameter and codebook buffer equal on both ranks
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    _assert_states_close(r0["state"], model.state_dict(), atol=1e-5)
    assert r0["step"] == r1["step"] == FIT_CFG.steps
    # Logged scalars are averaged over ranks: the 2-rank history is the 1-process history.
    assert r0["history"] == r1["history"]
    assert [e["step"] for e in r0["history"]] == [e["step"] for e in result.history]
    for mine, ref in zip(r0["history"], result.history):
        assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-7)


def test_only_rank_0_writes_and_its_checkpoint_holds_the_final_weights(ranks):
    assert not (ranks / "fresh1").exists()
    run = ranks / "fresh0" / "vq"
    assert (run / "history.jsonl").read_text().count("\n") == FIT_CFG.steps
    assert latest_checkpoint(run / "ckpt").name == f"step_{FIT_CFG.steps:08d}"
    model = load_weights(run, _fit_model(seed=0))
    _assert_states_close(model.state_dict(), _load(ranks / "fit0.pt")["state"], atol=0)


def test_ddp_resume_equals_the_uninterrupted_run(ranks):
    uninterrupted = _load(ranks / "fit0.pt")["state"]
    for r in range(WORLD):
        _assert_states_close(_load(ranks / f"resumed{r}.pt"), uninterrupted, atol=0)


def test_sampler_shards_are_disjoint_slices_of_the_global_batch():
    whole = iter(EpochBatchSampler(20, 8, seed=3))
    shards = [iter(EpochBatchSampler(20, 8, seed=3, shard=(r, 2))) for r in range(2)]
    for _ in range(5):  # across an epoch boundary
        assert next(shards[0]) + next(shards[1]) == next(whole)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        EpochBatchSampler(20, 7, seed=0, shard=(0, 2))


SHARED = Path(
    os.environ.get("VQKIT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared/data")
)
TORCHRUN_SETS = {
    "image": [
        "data.train_size=32", "data.test_size=8", "data.image_size=8",
        "vqvae.hidden=8", "vqvae.res_hidden=4", "vqvae.num_res_blocks=1", "vqvae.num_codes=8",
        "vqvae.code_dim=4", "vqvae_train.steps=2", "vqvae_train.batch_size=8",
        "vqvae_train.log_every=1", "prior.channels=8", "prior.num_layers=2",
        "prior_train.steps=2", "prior_train.batch_size=8", "prior_train.log_every=1",
        "sample.per_class=1", "eval_batch_size=8",
    ],
    "audio": [
        "threads=1", "data.max_files=8", "vqvae.hidden=8", "vqvae.res_hidden=4",
        "vqvae.num_res_blocks=1", "vqvae.num_codes=8", "vqvae.code_dim=4",
        "vqvae.residual_channels=4", "vqvae.skip_channels=4", "vqvae.layers_per_stack=2",
        "vqvae.crop=512", "vqvae_train.steps=2", "vqvae_train.batch_size=4",
        "vqvae_train.log_every=1", "vqvae_train.ckpt_every=2", "vqvae_train.lr_schedule=constant",
        "prior.residual_channels=4",
        "prior.layers_per_stack=1", "prior.stacks=1", "prior.crop=4", "prior_train.steps=2",
        "prior_train.batch_size=4", "prior_train.log_every=1", "prior_train.ckpt_every=2",
        "convert.sources=1", "convert.max_targets=2", "convert.seconds=0.05",
        "eval.classifier_steps=1", "eval.abx_triples=10",
    ],
    "video": [
        "data.num_frames=4", "data.context_frames=2", "data.frame_size=16", "data.train_size=16",
        "data.test_size=4", "vqvae.hidden=8", "vqvae.res_hidden=4", "vqvae.num_res_blocks=1",
        "vqvae.num_codes=8", "vqvae.code_dim=4", "vqvae.strides=[[2,2,2]]",
        "vqvae_train.steps=2", "vqvae_train.batch_size=4", "vqvae_train.log_every=1",
        "prior.dim=8", "prior.num_layers=1", "prior.num_heads=2", "prior_train.steps=2",
        "prior_train.batch_size=4", "prior_train.log_every=1", "predict.rollouts=2",
        "predict.gif_clips=1", "predict.upscale=1", "eval_batch_size=4",
    ],
}  # fmt: skip


@pytest.mark.skipif(not TORCHRUN.exists(), reason=f"{TORCHRUN} not found (it comes with torch)")
@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_torchrun_recipe_smoke(tmp_path, modality):
    """``torchrun --nproc_per_node=2 -m vqkit run <modality>``: finishes; only rank 0 writes."""
    out = tmp_path / "run"
    cmd = [str(TORCHRUN), "--nproc_per_node=2", f"--master_port={_free_port()}"]
    cmd += ["-m", "vqkit", "run", modality, "--out", str(out), "--device", "cpu", "--no-progress"]
    if modality == "audio":
        if not (SHARED / "fsdd").is_dir():
            pytest.skip(f"FSDD not found at {SHARED / 'fsdd'} (set VQKIT_SHARED_DATA)")
        cmd += ["--preset", "fsdd", "--data", str(SHARED / "fsdd")]
    for s in TORCHRUN_SETS[modality]:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("config.yaml", "metrics.json", "report.html", "vqvae/history.jsonl"):
        assert (out / name).is_file(), name
    assert proc.stdout.count("vqkit: report at") == 1  # rank 0 alone prints the summary
    # Both ranks train; rank 0 alone evaluates.
    for r in (0, 1):
        assert f"vqkit: rank {r}: stage vqvae done" in proc.stdout
        assert f"vqkit: rank {r}: stage prior done" in proc.stdout
    assert "vqkit: rank 0: stage eval done" in proc.stdout
    assert "vqkit: rank 1: stage eval" not in proc.stdout
    # One writer: no line logged twice, one TensorBoard file, one checkpoint per save.
    for stage in ("vqvae", "prior"):
        assert len((out / stage / "history.jsonl").read_text().splitlines()) == 2
        assert len(list((out / stage / "tb").glob("events.out.tfevents.*"))) == 1
        assert sorted(p.name for p in (out / stage / "ckpt").iterdir()) == [
            "latest",
            "step_00000002",
        ]
    media = json.loads((out / "media.json").read_text())
    assert len({m["path"] for m in media}) == len(media)  # each medium recorded once
