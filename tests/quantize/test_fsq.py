"""FSQ: mixed-radix codes, the round trip, the straight-through gradient, bf16, dims 1-3."""

from __future__ import annotations

import itertools

import pytest
import torch

from vqkit.quantize import FSQ

SPATIAL = {1: (12,), 2: (5, 6), 3: (3, 4, 5)}


def make_z(dims: int, dim: int = 8, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, *SPATIAL[dims], generator=gen).requires_grad_(True)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("dim", [3, 8], ids=["no-projection", "projected"])
def test_decode_of_encode_equals_forward(dims, dim):
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 3], dim)
    z = make_z(dims, dim) * 2
    out = fsq(z)
    codes = fsq.encode(z)
    assert codes.shape == (2, *SPATIAL[dims]) and codes.dtype == torch.int64
    assert torch.equal(codes, out.codes)
    assert torch.equal(fsq.decode(codes), out.quantized.detach())
    assert out.quantized.shape == z.shape


def test_codes_are_the_mixed_radix_index_of_the_levels():
    levels = [8, 5, 3]
    fsq = FSQ(levels)
    # Every grid point (i0, i1, i2), as the value it decodes to, must encode to
    # i0 + 8 i1 + 40 i2; feed the pre-image of each grid value through the bound.
    grid = torch.tensor(list(itertools.product(*[range(v) for v in levels])), dtype=torch.float)
    half = torch.tensor([4.0, 2.0, 1.0])
    values = (grid - half) / half  # in [-1, 1]
    target = values * half  # the rounded value the bound must produce
    pre = torch.atanh((target + fsq._offset) / fsq._half_range) - fsq._shift
    z = pre.t().unsqueeze(0)  # (1, 3, 120)
    codes = fsq.encode(z)[0]
    expected = grid[:, 0] + 8 * grid[:, 1] + 40 * grid[:, 2]
    assert torch.equal(codes, expected.long())
    assert sorted(codes.tolist()) == list(range(fsq.num_codes))
    torch.testing.assert_close(fsq.decode(codes.unsqueeze(0))[0].t(), values)


def test_values_lie_on_the_grid_and_every_level_is_reachable():
    fsq = FSQ([8, 6, 5])
    z = 4 * torch.randn(1, 3, 5000, generator=torch.Generator().manual_seed(0))
    q = fsq(z).quantized[0]
    for c, levels in enumerate([8, 6, 5]):
        half = levels // 2
        seen = torch.unique(q[c] * half)
        assert torch.equal(seen, torch.arange(-half, levels - half, dtype=torch.float))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_gradient_is_straight_through_the_bound_and_losses_are_zero(dims):
    fsq = FSQ([7, 5, 5, 5, 5])  # dim = 5: no projection, so dq/dz is the bound's derivative
    z = make_z(dims, dim=5)
    out = fsq(z)
    upstream = torch.randn_like(out.quantized)
    (grad,) = torch.autograd.grad(out.quantized, z, upstream)
    shape = (1, 5) + (1,) * dims
    half_range = fsq._half_range.view(shape)
    slope = (1 - torch.tanh(z.detach() + fsq._shift.view(shape)) ** 2) * half_range
    expected = upstream * slope / fsq._half_width.view(shape)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
    for term in (out.loss, out.codebook_loss, out.commitment_loss):
        assert term.item() == 0.0 and not term.requires_grad
    assert out.entropy_loss is None


def test_projections_receive_the_reconstruction_gradient():
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 5, 5], dim=16)
    out = fsq(make_z(2, 16))
    out.quantized.square().sum().backward()
    assert fsq.project_in.weight.grad.abs().sum() > 0
    assert fsq.project_out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_codes_equal_under_bf16_autocast(dims):
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 5, 5], dim=8)
    z = (3 * make_z(dims, batch=4)).detach().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = fsq(z)
        auto_codes = fsq.encode(z)
    ref = fsq(z.float())
    assert torch.equal(auto.codes, ref.codes) and torch.equal(auto_codes, ref.codes)
    assert auto.quantized.dtype == torch.bfloat16
    assert torch.equal(auto.quantized.float(), ref.quantized.bfloat16().float())


def test_perplexity_and_usage():
    fsq = FSQ([3, 3])
    # Nine vectors, one per grid point: all 9 codes once, perplexity 9.
    grid = torch.tensor(list(itertools.product([-1.0, 0.0, 1.0], repeat=2)))
    z = (5 * grid).t().unsqueeze(0)  # tanh saturates: -1, 0, +1 per channel
    out = fsq(z)
    assert out.usage.item() == 1.0
    torch.testing.assert_close(out.perplexity, torch.tensor(9.0))


def test_bad_levels_and_codes():
    with pytest.raises(ValueError, match=">= 3"):
        FSQ([2, 5])
    fsq = FSQ([5, 5])
    with pytest.raises(ValueError, match=r"\[0, 25\)"):
        fsq.decode(torch.tensor([[25]]))
    with pytest.raises(ValueError, match=r"expected \(B, 2, \*spatial\)"):
        fsq(torch.randn(1, 3, 4))
