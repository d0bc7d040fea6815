"""SimVQ: the frozen codebook behind one learned linear map; gradient routing, round trip, bf16."""

from __future__ import annotations

import pytest
import torch

from vqkit.quantize import SimVQ

SPATIAL = {1: (12,), 2: (5, 6), 3: (3, 4, 5)}


def make_z(dims: int, dim: int = 8, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, *SPATIAL[dims], generator=gen).requires_grad_(True)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("options", [{}, {"code_dim": 3}, {"rotation": True}])
def test_decode_of_encode_equals_forward(dims, options):
    torch.manual_seed(0)
    simvq = SimVQ(16, 8, **options)
    z = make_z(dims)
    out = simvq(z)
    codes = simvq.encode(z)
    assert codes.shape == (2, *SPATIAL[dims]) and codes.dtype == torch.int64
    assert torch.equal(codes, out.codes)
    assert torch.equal(simvq.decode(codes), out.quantized.detach())


def test_codebook_is_the_frozen_codes_through_the_map_and_codes_are_nearest():
    torch.manual_seed(0)
    simvq = SimVQ(16, 8, code_dim=5)
    table = simvq.frozen_codebook @ simvq.transform.weight.t()
    torch.testing.assert_close(simvq.codebook, table)
    assert [n for n, _ in simvq.named_parameters()] == ["transform.weight"]
    z = make_z(2)
    rows = z.detach().movedim(1, -1).reshape(-1, 8)
    assert torch.equal(simvq.encode(z).reshape(-1), torch.cdist(rows, table.detach()).argmin(1))
    # the frozen codes depend on the seed only, so every rank builds the same
    assert torch.equal(SimVQ(16, 8, code_dim=5).frozen_codebook, simvq.frozen_codebook)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_each_term_reaches_only_what_it_should(dims):
    torch.manual_seed(0)
    simvq = SimVQ(16, 8, beta=0.5, codebook_weight=2.0)
    w = simvq.transform.weight
    z = make_z(dims)
    out = simvq(z)
    e = simvq.decode(out.codes).detach()
    # straight-through
    upstream = torch.randn_like(out.quantized)
    gz, gw = torch.autograd.grad(out.quantized, [z, w], upstream, retain_graph=True)
    assert torch.equal(gz, upstream) and torch.count_nonzero(gw) == 0
    # codebook term: the map only, d/dW mean((sg[z] - F W^T [ids])^2)
    gz, gw = torch.autograd.grad(out.codebook_loss, [z, w], retain_graph=True)
    assert torch.count_nonzero(gz) == 0
    rows = z.detach().movedim(1, -1).reshape(-1, 8)
    frozen = simvq.frozen_codebook[out.codes.reshape(-1)]  # (N, code_dim)
    diff = frozen @ w.detach().t() - rows
    torch.testing.assert_close(gw, 2 * diff.t() @ frozen / diff.numel(), rtol=1e-5, atol=1e-7)
    # commitment term: the input only
    gz, gw = torch.autograd.grad(out.commitment_loss, [z, w], retain_graph=True)
    assert torch.count_nonzero(gw) == 0
    torch.testing.assert_close(gz, 2 * (z.detach() - e) / z.numel(), rtol=0, atol=1e-7)
    expected = ((z.detach() - e) ** 2).mean()
    torch.testing.assert_close(out.commitment_loss, expected)
    torch.testing.assert_close(out.codebook_loss, expected)
    torch.testing.assert_close(out.loss, 2.0 * expected + 0.5 * expected)
    assert simvq.frozen_codebook.grad is None and not simvq.frozen_codebook.requires_grad


def test_training_the_map_moves_every_code():
    torch.manual_seed(0)
    simvq = SimVQ(16, 8)
    before = simvq.codebook.detach().clone()
    opt = torch.optim.SGD(simvq.parameters(), lr=0.5)
    out = simvq(make_z(2) + 2.0)
    out.loss.backward()
    opt.step()
    moved = (simvq.codebook.detach() - before).abs().sum(1) > 0
    assert bool(moved.all())  # unlike a plain codebook, unused codes move too
    assert out.usage.item() < 1.0


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_codes_equal_under_bf16_autocast(dims):
    torch.manual_seed(0)
    simvq = SimVQ(64, 8)
    z = make_z(dims, batch=4).detach().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = simvq(z)
        auto_codes = simvq.encode(z)
    ref = simvq(z.float())
    assert torch.equal(auto.codes, ref.codes) and torch.equal(auto_codes, ref.codes)
    assert auto.quantized.dtype == torch.bfloat16
    assert torch.equal(auto.loss, ref.loss)


def test_perplexity_and_usage():
    simvq = SimVQ(4, 2)
    with torch.no_grad():
        simvq.transform.weight.copy_(torch.eye(2))
    table = simvq.codebook.detach()
    z = table[[0, 1, 2, 3, 0, 1, 2, 3]].t().unsqueeze(0)  # each code twice
    out = simvq(z)
    assert out.codes.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    assert out.usage.item() == 1.0
    torch.testing.assert_close(out.perplexity, torch.tensor(4.0))
