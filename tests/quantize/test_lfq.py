"""LFQ: binary codes, the round trip, the entropy term against a direct computation, gradient
routing of each loss term, bf16, dims 1-3."""

from __future__ import annotations

import pytest
import torch

from vqkit.quantize import LFQ

SPATIAL = {1: (12,), 2: (5, 6), 3: (3, 4, 5)}


def make_z(dims: int, dim: int = 4, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, *SPATIAL[dims], generator=gen).requires_grad_(True)


def all_codes(bits: int, scale: float = 1.0) -> torch.Tensor:
    """``(K, bits)`` code vectors in code order: bit i of k is channel i (little-endian)."""
    k = torch.arange(2**bits).unsqueeze(1)
    return ((k >> torch.arange(bits)) & 1).float() * 2 * scale - scale


def direct_entropy_terms(rows: torch.Tensor, inv_temperature: float, scale: float = 1.0):
    """The MAGVIT-v2 terms as written: a softmax over all K codes of -||z - c||^2 / T."""
    codes = all_codes(rows.shape[1], scale)
    probs = torch.softmax(-torch.cdist(rows, codes).square() * inv_temperature, dim=1)

    def entropy(p):
        return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)

    return entropy(probs).mean(), entropy(probs.mean(0))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("dim", [4, 6], ids=["no-projection", "projected"])
def test_decode_of_encode_equals_forward(dims, dim):
    torch.manual_seed(0)
    lfq = LFQ(16, dim)
    z = make_z(dims, dim)
    out = lfq(z)
    codes = lfq.encode(z)
    assert codes.shape == (2, *SPATIAL[dims]) and codes.dtype == torch.int64
    assert torch.equal(codes, out.codes)
    assert torch.equal(lfq.decode(codes), out.quantized.detach())


def test_codes_are_the_binary_number_of_the_signs():
    lfq = LFQ(8, codebook_scale=0.5)
    z = torch.tensor([[[0.3, -1.0, 2.0, -0.1], [-0.2, 0.5, 1.0, -3.0], [0.1, 0.1, -5.0, -1]]])
    out = lfq(z)  # columns are vectors (bit 0, bit 1, bit 2)
    assert out.codes.tolist() == [[1 + 4, 2 + 4, 1 + 2, 0]]
    assert torch.equal(out.quantized, 0.5 * torch.sign(z.detach()))
    assert torch.equal(lfq.decode(torch.arange(8).view(1, 8)), all_codes(3, 0.5).t()[None])


@pytest.mark.parametrize("inv_temperature", [0.7, 100.0])
def test_entropy_term_equals_direct_computation(inv_temperature):
    lfq = LFQ(16, diversity_gamma=0.7, inv_temperature=inv_temperature, codebook_scale=0.5)
    z = make_z(1, batch=1) * 0.05  # small values: the distributions are not one-hot
    out = lfq(z)
    rows = z.detach()[0].t()
    per_sample, codebook = direct_entropy_terms(rows, inv_temperature, scale=0.5)
    torch.testing.assert_close(out.entropy_loss, per_sample - 0.7 * codebook)
    ours = lfq.entropy_terms(rows)
    torch.testing.assert_close(ours[0], per_sample)
    torch.testing.assert_close(ours[1], codebook)
    commitment = (rows - 0.5 * torch.sign(rows)).square().mean()
    torch.testing.assert_close(out.commitment_loss, commitment)
    torch.testing.assert_close(out.loss, 0.25 * commitment + 0.1 * (per_sample - 0.7 * codebook))


@pytest.mark.parametrize("num_codes", [2, 8, 16, 32])
def test_entropy_values_and_gradient_equal_the_direct_computation(num_codes):
    # The two-halves factorisation (odd bit counts and a single bit included) against autograd
    # through the full softmax over all K codes.
    lfq = LFQ(num_codes, inv_temperature=0.9)
    gen = torch.Generator().manual_seed(2)
    rows = (0.3 * torch.randn(10, lfq.bits, generator=gen)).requires_grad_()
    a = lfq.entropy_terms(rows)
    b = direct_entropy_terms(rows, 0.9)
    torch.testing.assert_close(torch.stack(a), torch.stack(b))
    ga = torch.autograd.grad(a[0] - 0.6 * a[1], rows)[0]
    gb = torch.autograd.grad(b[0] - 0.6 * b[1], rows)[0]
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_each_term_reaches_only_what_it_should(dims):
    lfq = LFQ(16)  # dim 4: no projection, z itself is the bits space
    z = make_z(dims) * 0.05
    out = lfq(z)
    # straight-through: the reconstruction gradient passes unchanged
    upstream = torch.randn_like(out.quantized)
    (g,) = torch.autograd.grad(out.quantized, z, upstream, retain_graph=True)
    assert torch.equal(g, upstream)
    # commitment: d/dz mean((z - sg[q])^2) = 2 (z - q) / numel, q held constant
    (g,) = torch.autograd.grad(out.commitment_loss, z, retain_graph=True)
    q = torch.sign(z.detach())
    torch.testing.assert_close(g, 2 * (z.detach() - q) / z.numel(), rtol=0, atol=1e-8)
    # entropy: reaches z; there is no codebook and no parameter at all
    (g,) = torch.autograd.grad(out.entropy_loss, z, retain_graph=True)
    assert torch.count_nonzero(g) > 0
    assert list(lfq.parameters()) == []
    assert not out.codebook_loss.requires_grad and out.codebook_loss.item() == 0.0


def test_projection_in_gets_commitment_and_entropy_gradients_out_gets_reconstruction_only():
    torch.manual_seed(0)
    lfq = LFQ(16, dim=8)
    out = lfq(make_z(2, 8))
    for term in (out.commitment_loss, out.entropy_loss):
        g_in, g_out = torch.autograd.grad(
            term,
            [lfq.project_in.weight, lfq.project_out.weight],
            retain_graph=True,
            allow_unused=True,
        )
        assert g_in.abs().sum() > 0 and g_out is None
    g_out = torch.autograd.grad(out.quantized.sum(), lfq.project_out.weight)[0]
    assert g_out.abs().sum() > 0


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_codes_equal_under_bf16_autocast(dims):
    torch.manual_seed(0)
    lfq = LFQ(64, dim=8)
    z = make_z(dims, dim=8, batch=4).detach().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = lfq(z)
        auto_codes = lfq.encode(z)
    ref = lfq(z.float())
    assert torch.equal(auto.codes, ref.codes) and torch.equal(auto_codes, ref.codes)
    assert auto.quantized.dtype == torch.bfloat16
    assert torch.equal(auto.entropy_loss, ref.entropy_loss)


def test_perplexity_and_usage():
    lfq = LFQ(4)
    z = torch.tensor([[[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]]])  # codes 3, 2, 1, 0
    out = lfq(z)
    assert out.usage.item() == 1.0
    torch.testing.assert_close(out.perplexity, torch.tensor(4.0))


def test_num_codes_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of 2.*try 1024"):
        LFQ(1000, 16)
