"""FSQ, LFQ and SimVQ on 2 gloo ranks: identical state on both, equal to one process that sees
both batches, and LFQ's codebook-entropy term computed over the global batch in training (and
over the rank's own batch in evaluation, which may run on one rank alone).

The ranks average their gradients by hand (what DDP does) and take SGD steps, so the test covers
the gradients as well as the values. The workers run once per module and save what they saw.
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from vqkit.quantize import build_quantizer

WORLD = 2
STEPS = 3
LR = 0.1
KINDS = {
    "fsq": dict(levels=[5, 5, 3]),
    "lfq": dict(num_codes=16, inv_temperature=2.0),
    "simvq": dict(num_codes=16, rotation=True),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s ``(2, 6, 5)`` input and upstream gradient at ``step``."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    z = torch.randn(2, 6, 5, generator=gen) * (1.0 + rank)
    return z, torch.randn(2, 6, 5, generator=gen)


def _build(kind: str):
    torch.manual_seed(5)  # equal projections on every rank
    return build_quantizer(kind, dim=6, **KINDS[kind]).train()


def _run(kind: str, batches, average=lambda t: t):
    """STEPS SGD steps on ``batches(step)``; returns what each step saw and the final state."""
    q = _build(kind)
    seen = []
    for step in range(STEPS):
        z, g = batches(step)
        z.requires_grad_(True)
        out = q(z)
        # means, so that the average over equal-sized ranks is the global batch's value
        loss = (out.quantized * g).mean() + out.loss
        loss.backward()
        record = {"codes": out.codes, "loss": average(loss.detach().clone())}
        if kind == "lfq":
            rows, _ = q._rows(z.detach())
            per_sample, codebook = (t.detach() for t in q.entropy_terms(rows))
            record["per_sample_entropy"] = average(per_sample.clone())  # a per-rank mean
            record["codebook_entropy"] = codebook  # global already: not averaged
        for name, p in q.named_parameters():
            average(p.grad)
            record[f"grad.{name}"] = p.grad.clone()
        with torch.no_grad():
            for p in q.parameters():
                p -= LR * p.grad
                p.grad = None
        seen.append(record)
    return seen, q.state_dict()


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    from vqkit.distributed import cleanup, init_distributed

    assert init_distributed(timeout=datetime.timedelta(seconds=60))

    def average(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t.div_(WORLD)

    try:
        results = {kind: _run(kind, lambda s: _batch(s, rank), average) for kind in KINDS}
        if rank == 0:  # evaluation on one rank alone (as the pipeline does) must not wait
            lfq = _build("lfq").eval()
            results["eval_entropy"] = lfq(_batch(0, 0)[0]).entropy_loss.detach()
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        cleanup()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("quant_ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _one_process(kind: str):
    def batches(step):
        parts = [_batch(step, r) for r in range(WORLD)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    return _run(kind, batches)


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_identical_on_both_ranks(ranks, kind):
    (_, s0), (_, s1) = ranks[0][kind], ranks[1][kind]
    assert s0.keys() == s1.keys()
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k


@pytest.mark.parametrize("kind", list(KINDS))
def test_ranks_equal_one_process_on_the_concatenated_batches(ranks, kind):
    torch.set_num_threads(1)
    seen, state = _one_process(kind)
    for step in range(STEPS):
        r0, r1 = ranks[0][kind][0][step], ranks[1][kind][0][step]
        assert torch.equal(torch.cat([r0["codes"], r1["codes"]]), seen[step]["codes"])
        for key in seen[step]:
            if key != "codes":  # mean loss over ranks, LFQ's entropy terms, averaged grads
                torch.testing.assert_close(r0[key], seen[step][key], atol=1e-6, rtol=1e-5)
    for k, v in ranks[0][kind][1].items():
        torch.testing.assert_close(v, state[k], atol=1e-6, rtol=1e-5, msg=k)


def test_lfq_in_eval_mode_uses_the_local_batch_and_needs_no_other_rank(ranks):
    lfq = _build("lfq").eval()
    torch.testing.assert_close(ranks[0]["eval_entropy"], lfq(_batch(0, 0)[0]).entropy_loss)


def test_lfq_codebook_entropy_is_over_the_global_batch(ranks):
    # Both ranks report the same codebook entropy, that of the concatenated batch; a per-rank
    # term would differ between the ranks (their inputs have different scales).
    seen, _ = _one_process("lfq")
    for step in range(STEPS):
        h0 = ranks[0]["lfq"][0][step]["codebook_entropy"]
        h1 = ranks[1]["lfq"][0][step]["codebook_entropy"]
        assert torch.equal(h0, h1)
        torch.testing.assert_close(h0, seen[step]["codebook_entropy"])
