"""The quantizer core: gradient routing of each loss term, EMA, k-means, restarts, options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqkit.quantize import ResidualVQ, VectorQuantizer
from vqkit.quantize.codebook import argmin_rows, ema_update, kmeans, nearest_code

SPATIAL = {1: (12,), 2: (5, 6), 3: (3, 4, 5)}


def make_z(dims: int, dim: int = 8, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, *SPATIAL[dims], generator=gen).requires_grad_(True)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_straight_through_passes_reconstruction_gradient_unchanged(dims):
    vq = VectorQuantizer(16, 8)
    z = make_z(dims)
    out = vq(z)
    upstream = torch.randn_like(out.quantized)
    (grad,) = torch.autograd.grad(out.quantized, z, upstream)
    assert torch.equal(grad, upstream)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_codebook_term_moves_codebook_only(dims):
    vq = VectorQuantizer(16, 8)
    z = make_z(dims)
    out = vq(z)
    gz, gcb = torch.autograd.grad(out.codebook_loss, [z, vq.codebook], allow_unused=True)
    assert gz is None or torch.count_nonzero(gz) == 0
    assert gcb is not None and torch.count_nonzero(gcb) > 0
    # Only the codes that were used receive gradient.
    used = torch.zeros(16, dtype=torch.bool)
    used[out.codes.unique()] = True
    assert torch.count_nonzero(gcb[~used]) == 0
    assert (gcb[used].abs().sum(1) > 0).all()


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_commitment_term_moves_encoder_only(dims):
    vq = VectorQuantizer(16, 8)
    z = make_z(dims)
    out = vq(z)
    gz, gcb = torch.autograd.grad(out.commitment_loss, [z, vq.codebook], allow_unused=True)
    assert gcb is None or torch.count_nonzero(gcb) == 0
    # d/dz mean((z - e)^2) = 2 (z - e) / numel, exactly where the codes say.
    e = vq.decode(out.codes)
    assert torch.allclose(gz, 2 * (z - e).detach() / z.numel(), atol=1e-7)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_loss_values_and_weights(dims):
    vq = VectorQuantizer(16, 8, beta=0.5, codebook_weight=2.0)
    z = make_z(dims)
    out = vq(z)
    expected = ((z - vq.decode(out.codes)) ** 2).mean()
    assert torch.allclose(out.codebook_loss, expected)
    assert torch.allclose(out.commitment_loss, expected)
    assert torch.allclose(out.loss, 2.0 * out.codebook_loss + 0.5 * out.commitment_loss)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize(
    "options",
    [{}, {"ema": True}, {"cosine": True}, {"code_dim": 3}, {"heads": 2}, {"kmeans_init": True}],
)
def test_decode_of_encode_equals_forward(dims, options):
    vq = VectorQuantizer(16, 8, **options)
    z = make_z(dims)
    vq(z)  # one training step (k-means init, EMA update)
    vq.eval()
    out = vq(z)
    codes = vq.encode(z)
    assert torch.equal(codes, out.codes)
    assert torch.equal(vq.decode(codes), out.quantized.detach())
    heads = options.get("heads", 1)
    expected = (2, heads, *SPATIAL[dims]) if heads > 1 else (2, *SPATIAL[dims])
    assert codes.shape == expected and codes.dtype == torch.int64


def test_nearest_code_matches_brute_force_and_chunking():
    gen = torch.Generator().manual_seed(1)
    rows, table = torch.randn(1000, 6, generator=gen), torch.randn(37, 6, generator=gen)
    brute = torch.cdist(rows, table).argmin(1)
    assert torch.equal(nearest_code(rows, table), brute)
    assert torch.equal(nearest_code(rows, table, max_elements=37 * 7), brute)  # 143 chunks


def test_nearest_code_chunks_hold_at_least_code_dim_rows(monkeypatch):
    # A cap below K x C would give chunks of fewer rows than the codebook has columns, each
    # re-reading the whole codebook: the chunk is floored at C rows, with the same codes.
    gen = torch.Generator().manual_seed(2)
    rows, table = torch.randn(100, 6, generator=gen), torch.randn(37, 6, generator=gen)
    brute = torch.cdist(rows, table).argmin(1)
    sizes, addmm = [], torch.addmm
    monkeypatch.setattr(
        torch, "addmm", lambda b, x, *a, **k: sizes.append(len(x)) or addmm(b, x, *a, **k)
    )
    assert torch.equal(nearest_code(rows, table, max_elements=37 * 2), brute)
    assert sizes == [6] * 16 + [4]


@pytest.mark.parametrize("k", [4096, 4096 + 100, 8192 + 255])
def test_blocked_argmin_equals_argmin_with_first_index_on_ties(k):
    # argmin_rows takes block minima above 4,096 columns; it must return torch's argmin, the
    # first minimum, on ties inside a block, across blocks and between the blocks and the tail
    gen = torch.Generator().manual_seed(3)
    dist = torch.randint(0, 50, (40, k), generator=gen).float()  # many ties at the minimum
    dist[0, :] = 1.0  # all tied: index 0
    dist[1, k - 1] = -5.0  # minimum in the last column (the tail when k has one)
    dist[2, 300], dist[2, k - 1] = -7.0, -7.0  # tie between a block and the tail: the block's
    dist[3, 700], dist[3, 701] = -9.0, -9.0  # tie inside a block
    dist[4, 255], dist[4, 256] = -9.0, -9.0  # tie across a block edge
    expected = dist.argmin(1)
    assert torch.equal(argmin_rows(dist), expected)
    assert expected[:5].tolist() == [0, k - 1, 300, 700, 255]
    assert torch.equal(argmin_rows(dist[:, :100]), dist[:, :100].argmin(1))  # plain path


def test_nearest_code_with_given_norms_finds_codes_of_a_linear_map():
    # SimVQ's lookup: codes e_k = W f_k, searched as <z W, f_k> with ||W f_k||^2 given
    gen = torch.Generator().manual_seed(4)
    frozen, weight = torch.randn(5000, 3, generator=gen), torch.randn(8, 3, generator=gen)
    rows = torch.randn(300, 8, generator=gen)
    table = frozen @ weight.t()
    found = nearest_code(rows @ weight, frozen, sq_norms=table.pow(2).sum(1))
    assert torch.equal(found, torch.cdist(rows, table).argmin(1))


def test_ema_step_equals_hand_computation():
    # Tiny example: K=3 codes in 2-D, decay 0.5, eps 0.1.
    vq = VectorQuantizer(3, 2, ema=True, decay=0.5, eps=0.1)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    vq.embed_sum.copy_(vq.codebook)
    vq.cluster_size.fill_(1.0)
    z = torch.tensor([[[0.2, 0.1, 0.9, 1.3], [0.0, -0.1, 1.1, 0.9]]])  # (1, 2, 4): 4 vectors
    out = vq(z)
    assert out.codes.tolist() == [[0, 0, 1, 1]]
    assert out.codebook_loss.item() == 0.0
    # By hand: counts n = [2, 2, 0]; sums = [[0.3, -0.1], [2.2, 2.0], [0, 0]].
    size = torch.tensor([0.5 * 1 + 0.5 * 2, 0.5 * 1 + 0.5 * 2, 0.5 * 1])  # [1.5, 1.5, 0.5]
    sums = torch.tensor(
        [
            [0.5 * 0 + 0.5 * 0.3, 0.5 * 0 - 0.5 * 0.1],
            [0.5 * 1 + 0.5 * 2.2, 0.5 * 1 + 0.5 * 2.0],
            [0.5 * 5, 0.5 * 5],
        ]
    )
    total = 3.5
    smoothed = (size + 0.1) / (total + 3 * 0.1) * total
    assert torch.allclose(vq.cluster_size, size)
    assert torch.allclose(vq.embed_sum, sums)
    assert torch.allclose(vq.codebook, sums / smoothed[:, None])


def test_ema_update_function_matches_formula():
    size, acc = torch.tensor([2.0, 0.0]), torch.tensor([[2.0, 4.0], [0.0, 0.0]])
    new = ema_update(
        size,
        acc,
        torch.tensor([1.0, 3.0]),
        torch.tensor([[1.0, 1.0], [3.0, 0.0]]),
        decay=0.9,
        eps=0.0,
    )
    assert torch.allclose(size, torch.tensor([1.9, 0.3]))
    assert torch.allclose(new, acc / size[:, None])


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_ema_codebook_gets_no_gradient_and_moves_towards_data(dims):
    vq = VectorQuantizer(4, 8, ema=True, decay=0.9)
    z = make_z(dims) + 3.0
    before = vq.codebook.clone()
    for _ in range(5):
        out = vq(z)
    assert not isinstance(vq.codebook, torch.nn.Parameter)
    used = out.codes.unique()
    dist_before = (before[used] - 3.0).abs().mean()
    assert (vq.codebook[used] - 3.0).abs().mean() < dist_before


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_dead_codes_are_restarted_from_encoder_outputs(dims):
    vq = VectorQuantizer(8, 8, restart_after=3)
    with torch.no_grad():
        vq.codebook[5] = 100.0  # never the nearest: dead
    z = make_z(dims).detach()
    rows = z.permute(0, *range(2, z.dim()), 1).reshape(-1, 8)
    for step in range(3):
        vq(z)
        if step < 2:
            assert torch.all(vq.codebook[5] == 100.0)
    # After 3 unused steps code 5 holds one of this step's encoder outputs.
    assert (vq.codebook[5] - rows).abs().sum(1).min() == 0
    assert vq.unused_steps[5] == 0


def rows_as_z(rows: torch.Tensor, dims: int) -> torch.Tensor:
    """``(N, D)`` rows -> ``(1, D, N, 1, ...)`` with ``dims`` spatial axes (rows in order)."""
    return rows.t().reshape(1, rows.shape[1], rows.shape[0], *([1] * (dims - 1)))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_rarely_used_codes_are_restarted_by_usage_ema(dims):
    # Codes 0, 1, 2 get 4, 2 and 2 rows a step; code 3 none. Usage starts at the mean count
    # (2) and follows usage <- decay * usage + (1 - decay) * counts, with decay 0.5:
    # code 3 goes 1.0, 0.5, 0.25 and is re-seeded at the third step (strictly below 0.5).
    vq = VectorQuantizer(4, 2, decay=0.5, restart_below=0.5)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [100.0, 100.0]]))
    rows = torch.tensor(
        [[0.1, 0], [0, 0.1], [-0.1, 0], [0, -0.1], [10, 0.1], [10, -0.1], [0.1, 10], [-0.1, 10]]
    )
    z = rows_as_z(rows, dims)
    expected = [[3.0, 2.0, 2.0, 1.0], [3.5, 2.0, 2.0, 0.5]]
    for step in range(2):
        vq(z)
        torch.testing.assert_close(vq.usage, torch.tensor(expected[step]))
        assert torch.equal(vq.codebook[3], torch.tensor([100.0, 100.0]))
    vq(z)
    assert (vq.codebook[3] - rows).abs().sum(1).min() == 0  # one of this step's rows
    assert vq.usage[3] == 2.0  # a restarted code starts at the mean count
    torch.testing.assert_close(vq.usage[:3], torch.tensor([3.75, 2.0, 2.0]))


def test_usage_restart_catches_codes_that_count_based_restart_misses():
    # Code 3 wins one row every step, so it is never "unused"; with 5 rows on each other code
    # its use (1 a step) is far below the mean (4): restart_below=1.5 moves it (within 17
    # steps at decay 0.9).
    gen = torch.Generator().manual_seed(0)
    table = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [100.0, 100.0]])
    noise = 0.1 * torch.randn(15, 2, generator=gen)
    rows = torch.cat([table[:3].repeat_interleave(5, dim=0) + noise, table[3:] - 1.0])
    by_count = VectorQuantizer(4, 2, decay=0.9, restart_after=2)
    by_usage = VectorQuantizer(4, 2, decay=0.9, restart_after=2, restart_below=1.5)
    for vq in (by_count, by_usage):
        with torch.no_grad():
            vq.codebook.copy_(table)
        for _ in range(100):
            vq(rows_as_z(rows, 2))
    assert torch.equal(by_count.codebook[3], table[3])
    assert not torch.equal(by_usage.codebook[3], table[3])


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_error_weighted_restart_lands_where_quantisation_error_is(dims):
    # Rows sit exactly on codes 0, 1 and 2 (error 0) but for one at (5, 5), 50 from each of
    # them. Code 3 is dead; "error" must re-seed it on (5, 5), while "random" draws by count
    # (1 row in 10) and here lands on a row that already had its code.
    table = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [100.0, 100.0]])
    rows = torch.cat([table[:3].repeat(3, 1), torch.tensor([[5.0, 5.0]])])
    landed = {}
    for restart_from in ("error", "random"):
        vq = VectorQuantizer(4, 2, restart_after=1, restart_from=restart_from)
        with torch.no_grad():
            vq.codebook.copy_(table)
        vq(rows_as_z(rows, dims))
        landed[restart_from] = vq.codebook[3].clone()
    assert torch.equal(landed["error"], torch.tensor([5.0, 5.0]))
    assert not torch.equal(landed["random"], torch.tensor([5.0, 5.0]))
    assert (landed["random"] - rows).abs().sum(1).min() == 0


def test_restart_from_must_be_known():
    with pytest.raises(ValueError, match="restart_from"):
        VectorQuantizer(4, 2, restart_after=1, restart_from="worst")


def test_restart_below_must_be_positive():
    with pytest.raises(ValueError, match="restart_below"):
        VectorQuantizer(4, 2, restart_below=0.0)


def test_restart_never_fires_when_disabled():
    vq = VectorQuantizer(8, 8)
    with torch.no_grad():
        vq.codebook[5] = 100.0
    for _ in range(5):
        vq(make_z(2).detach())
    assert torch.all(vq.codebook[5] == 100.0) and vq.unused_steps[5] == 5


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_kmeans_init_places_codes_on_clusters(dims):
    centres = torch.tensor([[4.0] * 8, [-4.0] * 8, [0.0, 8.0] * 4, [8.0, 0.0] * 4])
    gen = torch.Generator().manual_seed(0)
    n = 2 * torch.Size(SPATIAL[dims]).numel()
    pick = torch.arange(n) % 4
    rows = centres[pick] + 0.01 * torch.randn(n, 8, generator=gen)
    z = rows.reshape(2, *SPATIAL[dims], 8).movedim(-1, 1).contiguous()
    vq = VectorQuantizer(4, 8, kmeans_init=True)
    assert not bool(vq.initialized)
    out = vq(z)
    assert bool(vq.initialized)
    assert out.usage.item() == 1.0
    assert torch.cdist(centres, vq.codebook).min(1).values.max() < 0.05
    # Only the first training batch initialises.
    snapshot = vq.codebook.detach().clone()
    vq(z * 0 + 50.0)
    assert torch.equal(vq.codebook.detach(), snapshot)


def test_cosine_codes_are_unit_vectors_and_nearest_by_angle():
    vq = VectorQuantizer(16, 8, cosine=True)
    z = make_z(2)
    vq.eval()
    codes = vq.encode(z)
    q = vq.decode(codes)
    assert torch.allclose(q.norm(dim=1), torch.ones(()), atol=1e-5)
    rows = F.normalize(z.detach().movedim(1, -1).reshape(-1, 8), dim=1)
    table = F.normalize(vq.codebook.detach(), dim=1)
    assert torch.equal(codes.reshape(-1), (rows @ table.t()).argmax(1))


def test_low_dimensional_codes_look_up_in_projected_space():
    vq = VectorQuantizer(16, 8, code_dim=2)
    assert vq.codebook.shape == (16, 2)
    z = make_z(2)
    out = vq(z)
    out.loss.backward()
    assert vq.project_in.weight.grad is not None  # commitment reaches the projection
    assert out.quantized.shape == z.shape


def test_heads_quantize_each_channel_group_with_the_shared_codebook():
    vq = VectorQuantizer(16, 8, heads=4)
    z = make_z(2)
    codes = vq.encode(z)  # (2, 4, 5, 6)
    for h in range(4):
        part = z.detach()[:, 2 * h : 2 * h + 2].movedim(1, -1).reshape(-1, 2)
        expected = torch.cdist(part, vq.codebook.detach()).argmin(1)
        assert torch.equal(codes[:, h].reshape(-1), expected)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_residual_vq_round_trip_and_gradients(dims):
    rvq = ResidualVQ(3, 16, 8, kmeans_init=True)
    z = make_z(dims)
    out = rvq(z)
    assert out.codes.shape == (2, 3, *SPATIAL[dims])
    upstream = torch.randn_like(z)
    (grad,) = torch.autograd.grad(out.quantized, z, upstream, retain_graph=True)
    assert torch.equal(grad, upstream)
    out.loss.backward()
    assert all(level.codebook.grad is not None for level in rvq.levels)
    rvq.eval()
    out = rvq(z)
    assert torch.allclose(rvq.decode(rvq.encode(z)), out.quantized, atol=1e-6)
    # Later levels quantise what earlier levels left: error shrinks after k-means fits.
    err_one = (rvq.levels[0].decode(out.codes[:, 0]) - z).pow(2).mean()
    assert (out.quantized - z).pow(2).mean() < err_one


def test_residual_vq_reports_every_level():
    torch.manual_seed(0)
    rvq = ResidualVQ(3, 16, 8)
    out = rvq(torch.randn(4, 8, 32))
    for i in range(len(rvq.levels)):
        counts = torch.bincount(out.codes[:, i].flatten(), minlength=16).float()
        p = counts / counts.sum()
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        assert torch.allclose(out.level_perplexity[i], entropy.exp())
        assert out.level_usage[i] == (counts > 0).float().mean()
    assert out.level_perplexity.shape == (3,) and len(set(out.level_perplexity.tolist())) > 1
    assert torch.allclose(out.perplexity, out.level_perplexity.mean())
    assert VectorQuantizer(16, 8)(torch.randn(4, 8, 32)).level_perplexity is None


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize(
    "opts",
    [{}, dict(ema=True, kmeans_init=True, restart_after=1), dict(code_dim=4, cosine=True)],
    ids=["plain", "ema-kmeans-restart", "lowdim-cosine"],
)
def test_codes_equal_under_bf16_autocast(dims, opts):
    # Distances, argmin and codebook statistics stay in fp32 under autocast, so training steps
    # give the same codes and the same codebook state as in fp32, bit for bit. The input is
    # what an autocast encoder emits (bf16); the fp32 run sees the same values as float32.
    auto_vq = VectorQuantizer(64, 8, **opts)
    ref_vq = VectorQuantizer(64, 8, **opts)
    ref_vq.load_state_dict(auto_vq.state_dict())
    for step in range(3):
        z = make_z(dims, batch=4, seed=step).detach().bfloat16()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = auto_vq(z)
        ref = ref_vq(z.float())
        assert torch.equal(auto.codes, ref.codes)
        assert auto.quantized.dtype == torch.bfloat16  # the input's dtype
        assert torch.equal(auto.quantized.float(), ref.quantized.bfloat16().float())
    for (name, a), b in zip(auto_vq.state_dict().items(), ref_vq.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    with torch.autocast("cpu", dtype=torch.bfloat16):  # eval path: encode
        assert torch.equal(auto_vq.encode(z), ref_vq.encode(z.float()))


def test_kmeans_returns_centroids_of_their_members():
    rows = torch.tensor([[0.0], [0.2], [10.0], [10.4]])
    centroids, counts = kmeans(rows, 2, iters=5, generator=torch.Generator().manual_seed(0))
    assert sorted(centroids.flatten().tolist()) == pytest.approx([0.1, 10.2])
    assert counts.tolist() == [2.0, 2.0]


def test_bad_inputs_give_clear_errors():
    vq = VectorQuantizer(16, 8)
    with pytest.raises(ValueError, match="expected 8 channels"):
        vq(torch.randn(2, 7, 4))
    with pytest.raises(ValueError, match="1 to 3 spatial axes"):
        vq(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        vq.decode(torch.tensor([[3, 16]]))
    with pytest.raises(ValueError, match="integer"):
        vq.decode(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="divisible by heads"):
        VectorQuantizer(16, 8, heads=3)


@pytest.mark.parametrize("ema", [False, True])
def test_init_codebook_is_kmeans_over_every_row_given(ema):
    centres = torch.tensor([[4.0] * 8, [-4.0] * 8, [0.0, 8.0] * 4, [8.0, 0.0] * 4])
    gen = torch.Generator().manual_seed(0)
    n = 20_000  # more than the first-batch init's k-means++ subsample (16,384 rows)
    rows = centres[torch.arange(n) % 4] + 0.5 * torch.randn(n, 8, generator=gen)
    vq = VectorQuantizer(4, 8, kmeans_init=True, ema=ema, seed=3)
    vq.init_codebook(rows, iters=7, counts_total=40.0)
    # exactly Lloyd's k-means over all n rows, seeded as the quantizer seeds its first draw
    expect, counts = kmeans(rows, 4, iters=7, generator=torch.Generator().manual_seed(3_000_009),
                            max_rows=n)  # fmt: skip
    assert torch.equal(vq.codebook.detach(), expect)
    assert torch.cdist(centres, vq.codebook).min(1).values.max() < 0.05
    assert bool(vq.initialized)
    if ema:  # the EMA starts with counts scaled to counts_total, consistent with the codebook
        assert torch.allclose(vq.cluster_size, counts * 40.0 / n)
        assert torch.allclose(vq.embed_sum / vq.cluster_size.unsqueeze(1), expect, atol=1e-5)
    else:  # the first training batch no longer re-fits it (and no EMA moves it)
        snapshot = vq.codebook.detach().clone()
        vq(rows[:64].t().reshape(1, 8, 64) + 50.0)
        assert torch.equal(vq.codebook.detach(), snapshot)


def test_init_codebook_maps_rows_as_forward_does_and_refuses_too_few():
    vq = VectorQuantizer(4, 8, code_dim=3, cosine=True)
    z = make_z(1, batch=4).detach()  # (4, 8, 12): 48 rows
    vq.init_codebook(z)
    rows, _ = vq._rows(z)
    codes = nearest_code(rows, vq._lookup_table())
    assert codes.unique().numel() == 4  # centres among the projected, normalised rows
    with pytest.raises(ValueError, match="at least num_codes=4 rows, got 3"):
        VectorQuantizer(4, 8).init_codebook(torch.randn(3, 8))
    with pytest.raises(ValueError, match="counts_total must be > 0"):
        VectorQuantizer(4, 8).init_codebook(torch.randn(8, 8), counts_total=0)
