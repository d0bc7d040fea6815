"""Codebook mechanics shared by every quantizer: nearest-code search, EMA update, k-means
initialisation, dead-code restart, and the collective ops that keep codebooks equal across
DDP ranks (defined in :mod:`vqkit.distributed`, re-exported here for the quantizers).

All functions work on rows ``(N, C)`` in float32; the quantizer reshapes any ``(B, D, *spatial)``
tensor into rows first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vqkit.distributed import all_reduce_sum_, broadcast_, gather_rows, is_distributed

__all__ = [  # the collectives are re-exported: the quantizers call them as codebook.<name>
    "MAX_DISTANCE_ELEMENTS",
    "argmin_rows",
    "all_reduce_sum_",
    "broadcast_",
    "code_counts",
    "code_sums",
    "ema_update",
    "gather_rows",
    "is_distributed",
    "kmeans",
    "kmeans_plus_plus",
    "nearest_code",
]

# Upper bound on the number of distance entries held at once (N_chunk x K floats, 2 MiB): small
# enough that argmin reads each chunk from cache right after addmm wrote it (faster than one big
# product on CPU, benchmarks/quantizer.py) and that memory stays flat whatever N is.
MAX_DISTANCE_ELEMENTS = 1 << 19


def nearest_code(
    rows: Tensor,
    codebook: Tensor,
    *,
    max_elements: int = MAX_DISTANCE_ELEMENTS,
    sq_norms: Tensor | None = None,
) -> Tensor:
    """Index of the nearest codebook entry (L2) for each row.

    Uses ``argmin_k ||e_k||^2 - 2 <z, e_k>`` (``||z||^2`` does not change the argmin) computed
    by one fused ``addmm`` per chunk of rows, so no ``N x K`` one-hot is ever built and the
    distance matrix held at once is at most ``max(max_elements, K * C)`` entries: a chunk has
    at least ``C`` rows, since each chunk reads the whole ``(K, C)`` codebook and with fewer
    rows that read costs more than the distances themselves (at K = 65,536 and C = 64 the
    default cap alone would give 8-row chunks, 1.65x slower: docs/results.md). The argmin of
    each chunk is :func:`argmin_rows`.

    Args:
        rows: ``(N, C)`` float vectors.
        codebook: ``(K, C)`` codebook.
        max_elements: cap on ``chunk x K`` distance entries held at once, raised to ``K x C``
            when smaller.
        sq_norms: ``(K,)`` the ``||e_k||^2`` term, when the codes compared are a linear image
            of ``codebook``: SimVQ's codes are ``e_k = W f_k``, and ``<z, W f_k> = <W^T z,
            f_k>``, so it passes ``rows = z W``, ``codebook = F`` and ``||W f_k||^2``, a
            lookup in the frozen codes' few dimensions. Default: ``codebook``'s own.

    Returns:
        ``(N,)`` int64 code indices.

    Example:
        >>> nearest_code(torch.tensor([[0.9, 0.0]]), torch.eye(2))
        tensor([0])
    """
    num_codes = codebook.shape[0]
    if sq_norms is None:
        sq_norms = codebook.pow(2).sum(1)  # (K,)
    codebook_t = codebook.t()
    chunk = max(1, codebook.shape[1], max_elements // num_codes)
    if rows.shape[0] <= chunk:
        return argmin_rows(torch.addmm(sq_norms, rows, codebook_t, alpha=-2.0))
    out = torch.empty(rows.shape[0], dtype=torch.long, device=rows.device)
    for start in range(0, rows.shape[0], chunk):
        part = rows[start : start + chunk]
        out[start : start + chunk] = argmin_rows(
            torch.addmm(sq_norms, part, codebook_t, alpha=-2.0)
        )
    return out


# Width of the blocks argmin_rows takes minima over, and the K from which it does: at 4,096
# codes blocks were 1.3-1.45x faster (benchmarks/quantizer.py --lookup-k); below, a plain argmin
# is kept (at 512 one microbenchmark showed no difference beyond noise).
ARGMIN_BLOCK = 256
ARGMIN_BLOCKED_FROM = 4096


def argmin_rows(dist: Tensor) -> Tensor:
    """``dist.argmin(1)`` of an ``(N, K)`` matrix, the same indices (first minimum on ties).

    On CPU ``argmin`` over a long row runs at a fraction of ``amin``'s speed (``amin`` is
    vectorised, the index-tracking reduction is not: 7x at K = 65,536). So for K >= 4,096 the
    row is cut into blocks of 256: ``amin`` per block, ``argmin`` over the N x K/256 block
    minima picks the first block that holds the row's minimum, and ``argmin`` within that
    block the first position of it, which is the first position of the minimum in the row.
    Columns past the last whole block are compared after it, winning only when strictly less.
    """
    n, k = dist.shape
    if k < ARGMIN_BLOCKED_FROM or dist.device.type != "cpu":
        return dist.argmin(1)
    blocks = k // ARGMIN_BLOCK
    whole = dist[:, : blocks * ARGMIN_BLOCK].reshape(n, blocks, ARGMIN_BLOCK)
    block = whole.amin(2).argmin(1)  # (N,) first block holding the minimum
    rows = torch.arange(n, device=dist.device)
    within = whole[rows, block]  # (N, ARGMIN_BLOCK)
    idx = block * ARGMIN_BLOCK + within.argmin(1)
    if blocks * ARGMIN_BLOCK < k:
        tail = dist[:, blocks * ARGMIN_BLOCK :]
        tail_val, tail_idx = tail.min(1)
        better = tail_val < dist[rows, idx]
        idx = torch.where(better, tail_idx + blocks * ARGMIN_BLOCK, idx)
    return idx


def code_counts(codes: Tensor, num_codes: int) -> Tensor:
    """``(K,)`` float counts of each code in ``codes`` (any shape)."""
    return torch.bincount(codes.reshape(-1), minlength=num_codes).to(torch.float32)


def code_sums(rows: Tensor, codes: Tensor, num_codes: int) -> Tensor:
    """``(K, C)`` sum of the rows assigned to each code (an index_add, not a one-hot matmul)."""
    sums = torch.zeros(num_codes, rows.shape[1], dtype=rows.dtype, device=rows.device)
    return sums.index_add_(0, codes, rows)


def ema_update(
    cluster_size: Tensor,
    embed_sum: Tensor,
    counts: Tensor,
    sums: Tensor,
    *,
    decay: float,
    eps: float,
) -> Tensor:
    """One EMA codebook step (van den Oord et al. 2017, appendix), in place on the state.

    ``N_k <- d N_k + (1-d) n_k``, ``m_k <- d m_k + (1-d) sum_k``, then Laplace smoothing
    ``N~_k = (N_k + eps) / (sum N + K eps) * sum N`` and ``e_k = m_k / N~_k``.

    Args:
        cluster_size: ``(K,)`` EMA of counts, updated in place.
        embed_sum: ``(K, C)`` EMA of assigned-row sums, updated in place.
        counts: ``(K,)`` this step's counts (already summed over ranks).
        sums: ``(K, C)`` this step's sums (already summed over ranks).
        decay: EMA decay, e.g. 0.99.
        eps: Laplace smoothing constant.

    Returns:
        ``(K, C)`` the new codebook.
    """
    cluster_size.mul_(decay).add_(counts, alpha=1.0 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + cluster_size.numel() * eps) * total
    return embed_sum / smoothed.unsqueeze(1)


def kmeans_plus_plus(
    rows: Tensor, num_codes: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """k-means++ seeding: each next seed is a row drawn with probability ~ squared distance.

    Returns:
        ``(K,)`` row indices (repeats only when there are fewer distinct rows than K).
    """
    n = rows.shape[0]
    picks = torch.empty(num_codes, dtype=torch.long)
    picks[0] = torch.randint(0, n, (1,), generator=generator)
    min_d2 = (rows - rows[picks[0]]).pow(2).sum(1)  # (N,)
    uniforms = torch.rand(num_codes, generator=generator, dtype=torch.float64)
    for i in range(1, num_codes):
        cumulative = min_d2.double().cumsum(0)
        total = cumulative[-1]
        if total <= 0:  # every row already is a seed: draw uniformly
            picks[i] = int(uniforms[i] * n)
        else:
            target = (uniforms[i] * total).to(cumulative.device)
            picks[i] = int(torch.searchsorted(cumulative, target.reshape(1)).clamp_max(n - 1))
        min_d2 = torch.minimum(min_d2, (rows - rows[picks[i]]).pow(2).sum(1))
    return picks


def kmeans(
    rows: Tensor,
    num_codes: int,
    *,
    iters: int = 10,
    generator: torch.Generator | None = None,
    max_rows: int = 16384,
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on rows, seeded by k-means++ (on at most ``max_rows`` random rows).

    Args:
        rows: ``(N, C)`` float vectors.
        num_codes: K.
        iters: Lloyd iterations.
        generator: CPU generator for the seeding (reproducible, equal on every rank).

    Returns:
        ``(centroids (K, C), counts (K,))``; an empty cluster keeps its previous centroid.
    """
    if rows.shape[0] > max_rows:
        keep = torch.randperm(rows.shape[0], generator=generator)[:max_rows]
        rows = rows[keep.to(rows.device)]
    seeds = kmeans_plus_plus(rows, num_codes, generator=generator)
    centroids = rows[seeds.to(rows.device)].clone()
    counts = torch.zeros(num_codes, device=rows.device)
    for _ in range(iters):
        codes = nearest_code(rows, centroids)
        counts = code_counts(codes, num_codes)
        sums = code_sums(rows, codes, num_codes)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return centroids, counts
