"""The rotation trick (Fifty et al. 2024) as an option of VectorQuantizer and SimVQ."""

from __future__ import annotations

import pytest
import torch

from vqkit.quantize import SimVQ, VectorQuantizer

SPATIAL = {1: (12,), 2: (5, 6), 3: (3, 4, 5)}


def make_z(dims: int, dim: int = 8, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, *SPATIAL[dims], generator=gen).requires_grad_(True)


def rotation_matrix(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The paper's ``R = I - 2 r r^T + 2 q^ e^T`` (sec. 4.2) for one pair of vectors."""
    e, q_hat = z / z.norm(), q / q.norm()
    r = (e + q_hat) / (e + q_hat).norm()
    return torch.eye(len(z), dtype=z.dtype) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e)


def test_rotation_gradient_equals_the_analytic_formula_on_a_tiny_case():
    # Two 3-D vectors, two codes; the reference matrices are built in float64.
    vq = VectorQuantizer(2, 3, rotation=True)
    table = torch.tensor([[1.0, 2.0, 0.5], [-2.0, 0.0, 1.0]])
    with torch.no_grad():
        vq.codebook.copy_(table)
    z = torch.tensor([[[0.9, -1.0], [0.5, 0.3], [0.1, 0.2]]], requires_grad=True)
    out = vq(z)
    assert out.codes.tolist() == [[0, 1]]
    # forward value: exactly the codes
    assert torch.equal(out.quantized.detach(), table[[0, 1]].t()[None])
    g = torch.tensor([[[0.3, -0.7], [1.1, 0.2], [-0.4, 0.5]]], dtype=torch.float64)
    (grad,) = torch.autograd.grad(out.quantized, z, g.float())
    grad = grad.double()
    for n, k in enumerate([0, 1]):
        zn, qn = z.detach()[0, :, n].double(), table[k].double()
        rot = rotation_matrix(zn, qn)
        # R is a rotation taking z's direction to q's, and lambda R z = q
        torch.testing.assert_close(rot @ rot.t(), torch.eye(3, dtype=torch.float64))
        torch.testing.assert_close(torch.linalg.det(rot), torch.tensor(1.0, dtype=torch.float64))
        lam = qn.norm() / zn.norm()
        torch.testing.assert_close(lam * rot @ zn, qn)
        # d(lambda R z)/dz with lambda and R constant: lambda R^T g
        expected = lam * rot.t() @ g[0, :, n]
        torch.testing.assert_close(grad[0, :, n], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("options", [{}, {"code_dim": 4}, {"cosine": True}, {"heads": 2}])
def test_rotation_keeps_values_codes_and_loss_terms(dims, options):
    torch.manual_seed(0)
    plain = VectorQuantizer(16, 8, **options)
    rotated = VectorQuantizer(16, 8, rotation=True, **options)
    rotated.load_state_dict(plain.state_dict())
    z = make_z(dims)
    a, b = plain(z), rotated(z)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.quantized, b.quantized)
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(rotated.decode(b.codes), b.quantized.detach())
    # the loss terms' gradients are untouched; only the reconstruction path changes
    for term in ("codebook_loss", "commitment_loss"):
        ga = torch.autograd.grad(getattr(a, term), [z, plain.codebook], retain_graph=True)
        gb = torch.autograd.grad(getattr(b, term), [z, rotated.codebook], retain_graph=True)
        assert all(torch.equal(x, y) for x, y in zip(ga, gb)), term
    upstream = torch.randn_like(z)
    g_plain = torch.autograd.grad(a.quantized, z, upstream)[0]
    g_rot, g_cb = torch.autograd.grad(b.quantized, [z, rotated.codebook], upstream)
    if "code_dim" not in options and "cosine" not in options:
        assert torch.equal(g_plain, upstream)  # straight-through: the identity
    assert not torch.allclose(g_rot, g_plain)
    assert torch.count_nonzero(g_cb) == 0  # R and lambda are constants: no codebook gradient


def test_rotation_preserves_the_gradient_norm_up_to_the_scale():
    # |lambda R^T g| = lambda |g| for a rotation R: the trick rescales, it does not shrink.
    vq = VectorQuantizer(16, 8, rotation=True)
    z = make_z(1, batch=1)
    out = vq(z)
    g = torch.randn_like(z)
    (grad,) = torch.autograd.grad(out.quantized, z, g)
    q = out.quantized.detach()
    lam = q.norm(dim=1) / z.detach().norm(dim=1)
    torch.testing.assert_close(grad.norm(dim=1), lam * g.norm(dim=1))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_simvq_rotation_matches_the_formula(dims):
    torch.manual_seed(0)
    simvq = SimVQ(16, 8, rotation=True)
    z = make_z(dims)
    out = simvq(z)
    q = simvq.decode(out.codes).detach()
    assert torch.equal(out.quantized.detach(), q)
    g = torch.randn_like(z)
    grad, gw = torch.autograd.grad(out.quantized, [z, simvq.transform.weight], g)
    assert torch.count_nonzero(gw) == 0
    zr = z.detach().movedim(1, -1).reshape(-1, 8).double()
    qr = q.movedim(1, -1).reshape(-1, 8).double()
    gr = g.movedim(1, -1).reshape(-1, 8).double()
    got = grad.movedim(1, -1).reshape(-1, 8)
    for n in range(0, zr.shape[0], 7):
        lam = qr[n].norm() / zr[n].norm()
        expected = lam * rotation_matrix(zr[n], qr[n]).t() @ gr[n]
        torch.testing.assert_close(got[n], expected.float(), rtol=1e-4, atol=1e-6)
