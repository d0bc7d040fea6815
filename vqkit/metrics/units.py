"""How well discrete codes discover phones (or words): accuracy, purity, PNMI and ABX.

Frame metrics take per-utterance code ids and per-utterance labels of the same length (use
:func:`vqkit.datasets.alignments.frame_labels` to label frames from phone segments):

* :func:`code_label_accuracy`: map each code to the label it co-occurs with most, then score the
  mapped codes against the labels. On the SAME data (the default) this is the VQ-VAE paper's
  "49.3% phone accuracy" measure and equals :func:`purity`; pass ``fit_codes``/``fit_labels`` to
  fit the mapping on one split and score another.
* :func:`chance_accuracy`: always answering the most frequent label, the floor to compare with.
* :func:`purity` (phone purity, E_code max_label P(label|code)), :func:`cluster_purity`
  (E_label max_code P(code|label)) and :func:`pnmi`, I(label; code) / H(label) (HuBERT's
  phone-normalised mutual information: 1 when codes determine labels, 0 when independent).

:func:`abx_error` compares whole segments (one per phone or word token) by dynamic time warping.

Examples:
    >>> codes = [np.array([0, 0, 1, 1])]
    >>> labels = [np.array(["a", "a", "b", "b"])]
    >>> code_label_accuracy(codes, labels), round(pnmi(codes, labels), 6)
    (1.0, 1.0)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import numpy as np
from sklearn.metrics import homogeneity_score

__all__ = [
    "code_to_label",
    "code_label_accuracy",
    "chance_accuracy",
    "purity",
    "cluster_purity",
    "pnmi",
    "abx_error",
]


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _utterances(x) -> list[np.ndarray]:
    """One array per utterance; a single flat array counts as one utterance."""
    arr = None if isinstance(x, (list, tuple)) else _as_array(x)
    if arr is not None and arr.ndim == 1:
        return [arr]
    if arr is not None:
        raise ValueError(f"expected a list of 1-D arrays or one 1-D array, got shape {arr.shape}")
    return [_as_array(u).reshape(-1) if np.ndim(u) == 0 else _as_array(u) for u in x]


def _flatten(codes, labels) -> tuple[np.ndarray, np.ndarray]:
    cs, ls = _utterances(codes), _utterances(labels)
    if len(cs) != len(ls):
        raise ValueError(f"got codes for {len(cs)} utterances but labels for {len(ls)}")
    for n, (c, lab) in enumerate(zip(cs, ls)):
        if c.ndim != 1 or lab.ndim != 1:
            raise ValueError(
                f"utterance {n}: codes and labels must be 1-D, got {c.shape}, {lab.shape}"
            )
        if len(c) != len(lab):
            raise ValueError(
                f"utterance {n}: {len(c)} codes but {len(lab)} labels; label exactly one per frame "
                "(e.g. frame_labels(segments, frame_rate_hz, num_frames=len(codes)))"
            )
        if c.size and not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"utterance {n}: codes must be integers, got dtype {c.dtype}")
    c = np.concatenate([u.astype(np.int64) for u in cs]) if cs else np.zeros(0, np.int64)
    lab = np.concatenate(ls) if ls else np.zeros(0)
    if c.size == 0:
        raise ValueError("no frames: codes and labels are empty")
    return c, lab


def _joint(codes: np.ndarray, labels: np.ndarray):
    """Count matrix ``(num distinct codes, num distinct labels)`` and the two vocabularies."""
    code_vocab, ci = np.unique(codes, return_inverse=True)
    label_vocab, li = np.unique(labels, return_inverse=True)
    counts = np.bincount(ci * len(label_vocab) + li, minlength=len(code_vocab) * len(label_vocab))
    return counts.reshape(len(code_vocab), len(label_vocab)), code_vocab, label_vocab


def code_to_label(codes, labels) -> dict[int, Hashable]:
    """Each code's most frequent label (ties: the label that sorts first)."""
    counts, code_vocab, label_vocab = _joint(*_flatten(codes, labels))
    best = counts.argmax(axis=1)
    return {int(c): label_vocab[b].item() for c, b in zip(code_vocab, best)}


def code_label_accuracy(codes, labels, *, fit_codes=None, fit_labels=None) -> float:
    """Accuracy of labelling every frame with its code's most frequent label.

    Args:
        codes: per-utterance code ids, a list of ``(T_i,)`` int arrays (or one array).
        labels: per-utterance labels, a list of ``(T_i,)`` arrays (str or int).
        fit_codes, fit_labels: data to fit the code->label mapping on (e.g. the train split);
            by default the mapping is fit on ``codes``/``labels`` themselves, as in the VQ-VAE
            paper. Codes never seen while fitting get the fit data's most frequent label.

    Returns:
        Fraction of frames whose mapped label equals the true label, in [0, 1].
    """
    c, lab = _flatten(codes, labels)
    if (fit_codes is None) != (fit_labels is None):
        raise ValueError("pass both fit_codes and fit_labels, or neither")
    fc, fl = (c, lab) if fit_codes is None else _flatten(fit_codes, fit_labels)
    counts, code_vocab, label_vocab = _joint(fc, fl)
    mapped_vocab = label_vocab[counts.argmax(axis=1)]
    fallback = label_vocab[counts.sum(axis=0).argmax()]
    pos = np.searchsorted(code_vocab, c).clip(max=len(code_vocab) - 1)
    seen = code_vocab[pos] == c
    predicted = np.where(seen, mapped_vocab[pos], fallback)
    return float(np.mean(predicted == lab))


def chance_accuracy(labels) -> float:
    """Accuracy of always answering the most frequent label."""
    ls = _utterances(labels)
    flat = np.concatenate([u.reshape(-1) for u in ls]) if ls else np.zeros(0)
    if flat.size == 0:
        raise ValueError("no labels")
    _, counts = np.unique(flat, return_counts=True)
    return float(counts.max() / flat.size)


def purity(codes, labels) -> float:
    """Phone purity: ``sum_c max_l n(c, l) / N``, the average precision of each code's best label.

    Identical to :func:`code_label_accuracy` with the mapping fit on the same data.
    """
    counts, _, _ = _joint(*_flatten(codes, labels))
    return float(counts.max(axis=1).sum() / counts.sum())


def cluster_purity(codes, labels) -> float:
    """Cluster purity: ``sum_l max_c n(c, l) / N``; high when each label is mostly one code."""
    counts, _, _ = _joint(*_flatten(codes, labels))
    return float(counts.max(axis=0).sum() / counts.sum())


def pnmi(codes, labels) -> float:
    """Phone-normalised mutual information ``I(label; code) / H(label)``, in [0, 1].

    This is the homogeneity of the codes as a clustering of the labels, so it is computed by
    ``sklearn.metrics.homogeneity_score(labels, codes)``.

    Raises:
        ValueError: labels take a single value (H(label) = 0, so PNMI is undefined).
    """
    c, lab = _flatten(codes, labels)
    if len(np.unique(lab)) < 2:  # sklearn would answer 1.0
        raise ValueError("labels take a single value, so H(label) = 0 and PNMI is undefined")
    return float(homogeneity_score(lab, c))


# ----------------------------------------------------------------------------- ABX


def _frame_distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """``(n,)``/``(n, D)`` and ``(m,)``/``(m, D)`` -> ``(n, m)`` frame distances."""
    if a.ndim == 1:  # code ids: 0 when the codes agree, 1 otherwise
        return (a[:, None] != b[None, :]).astype(np.float64)
    if metric == "euclidean":
        return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    # Angular distance in [0, 1], as in the ZeroSpeech ABX: arccos(cosine similarity) / pi.
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.arccos(np.clip(an @ bn.T, -1.0, 1.0)) / np.pi


def _dtw_average(costs: list[np.ndarray]) -> np.ndarray:
    """DTW-averaged distance of each cost matrix: the least total cost of a monotonic alignment
    (steps right, down, diagonal) divided by that alignment's length. Matrices are padded and
    solved together one anti-diagonal at a time, so numpy does the inner loop."""
    p = len(costs)
    n = np.array([c.shape[0] for c in costs])
    m = np.array([c.shape[1] for c in costs])
    big_n, big_m = n.max(), m.max()
    cost = np.zeros((p, big_n, big_m))
    for k, c in enumerate(costs):
        cost[k, : c.shape[0], : c.shape[1]] = c
    acc = np.full((p, big_n + 1, big_m + 1), np.inf)
    acc[:, 0, 0] = 0.0
    length = np.zeros((p, big_n + 1, big_m + 1))
    for diag in range(2, big_n + big_m + 1):  # cells (i, j), 1-based, with i + j == diag
        i = np.arange(max(1, diag - big_m), min(big_n, diag - 1) + 1)
        j = diag - i
        cand = np.stack([acc[:, i - 1, j - 1], acc[:, i - 1, j], acc[:, i, j - 1]])  # (3, P, L)
        lens = np.stack([length[:, i - 1, j - 1], length[:, i - 1, j], length[:, i, j - 1]])
        best = cand.argmin(axis=0)[None]  # ties go to the diagonal, the shorter path
        acc[:, i, j] = np.take_along_axis(cand, best, 0)[0] + cost[:, i - 1, j - 1]
        length[:, i, j] = np.take_along_axis(lens, best, 0)[0] + 1
    rows = np.arange(p)
    return acc[rows, n, m] / length[rows, n, m]


def _dtw_pairs(segments: list[np.ndarray], pairs: list[tuple[int, int]], metric: str) -> dict:
    out = {}
    # Similar sizes share a padded batch; a batch holds about 2M cells.
    order = sorted(pairs, key=lambda ab: (len(segments[ab[0]]), len(segments[ab[1]])))
    start = 0
    while start < len(order):
        stop, cells = start, 0
        while stop < len(order):
            a, b = order[stop]
            cells = max(cells, len(segments[a]) * len(segments[b]))
            if stop > start and (stop - start + 1) * cells > 2_000_000:
                break
            stop += 1
        batch = order[start:stop]
        costs = [_frame_distances(segments[a], segments[b], metric) for a, b in batch]
        out.update(zip(batch, _dtw_average(costs)))
        start = stop
    return out


def _sample_triples(labels, speakers, within: bool, num: int, rng) -> list[tuple[int, int, int]]:
    by_speaker: dict = defaultdict(list)
    by_speaker_label: dict = defaultdict(list)
    for k, (lab, spk) in enumerate(zip(labels, speakers)):
        by_speaker[spk].append(k)
        by_speaker_label[spk, lab].append(k)
    n_labels = {spk: len({labels[k] for k in idx}) for spk, idx in by_speaker.items()}

    def sources(x: int) -> list:
        """Speakers that can supply A (label of x) and B (another label) for this X."""
        lab, spk = labels[x], speakers[x]
        if within:
            ok = len(by_speaker_label[spk, lab]) >= 2 and n_labels[spk] >= 2
            return [spk] if ok else []
        return [
            s for s in by_speaker if s != spk and (s, lab) in by_speaker_label and n_labels[s] >= 2
        ]

    valid = {x: src for x in range(len(labels)) if (src := sources(x))}
    if not valid:
        kind = "within-speaker" if within else "across-speaker"
        raise ValueError(
            f"no {kind} ABX triple exists: need segments of two labels from one speaker and "
            + (
                "two segments sharing a label from that speaker"
                if within
                else "the same label from another speaker"
            )
        )
    xs = list(valid)
    triples = []
    for _ in range(num):
        x = xs[rng.integers(len(xs))]
        spk = valid[x][rng.integers(len(valid[x]))]
        same = [k for k in by_speaker_label[spk, labels[x]] if k != x]
        other = [k for k in by_speaker[spk] if labels[k] != labels[x]]
        triples.append((same[rng.integers(len(same))], other[rng.integers(len(other))], x))
    return triples


def abx_error(
    segments: Sequence,
    labels: Sequence[Hashable],
    speakers: Sequence[Hashable],
    *,
    within_speaker: bool,
    codebook=None,
    metric: str = "cosine",
    num_triples: int = 2000,
    seed: int = 0,
) -> float:
    """ABX error rate of segment representations (one segment per phone or word token).

    For a triple (A, B, X) with label(A) == label(X) != label(B), the representation errs when
    ``d(A, X) > d(B, X)`` (a tie counts half). Within speaker, A, B and X share a speaker; across
    speakers, A and B share one speaker and X comes from another. Triples are drawn uniformly
    (with replacement) from the valid ones for a uniformly drawn X, so this is a Monte-Carlo
    estimate of the triple-averaged error (ZeroSpeech instead averages per label pair and
    context; the two agree closely when labels are balanced).

    Args:
        segments: per segment either ``(T_i, D)`` float features or ``(T_i,)`` int code ids.
        labels: label of each segment.
        speakers: speaker of each segment.
        within_speaker: within- (True) or across-speaker (False) triples.
        codebook: ``(K, D)`` code vectors; with code-id segments, compare the vectors instead of
            code identity (0/1 mismatch).
        metric: frame distance for vectors: ``"cosine"`` (angular, in [0, 1]) or ``"euclidean"``.
        num_triples: how many triples to draw.
        seed: RNG seed for the draw.

    Returns:
        Error rate in [0, 1]: 0 is perfect, 0.5 is chance.

    Distance between two segments: frame distances aligned by DTW, the aligned path's total
    divided by its length.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if not len(segments) == len(labels) == len(speakers):
        raise ValueError(
            f"segments, labels and speakers differ in length: {len(segments)}, {len(labels)}, {len(speakers)}"
        )
    if num_triples <= 0:
        raise ValueError(f"num_triples must be positive, got {num_triples}")
    segs = [_as_array(s) for s in segments]
    if any(s.ndim not in (1, 2) or len(s) == 0 for s in segs):
        bad = next(k for k, s in enumerate(segs) if s.ndim not in (1, 2) or len(s) == 0)
        raise ValueError(
            f"segment {bad} has shape {segs[bad].shape}; want (T,) codes or (T, D) features, T > 0"
        )
    if len({s.ndim for s in segs}) > 1:
        raise ValueError("mix of (T,) code and (T, D) feature segments; use one kind")
    if segs[0].ndim == 1:
        if not all(np.issubdtype(s.dtype, np.integer) for s in segs):
            raise ValueError("1-D segments must hold integer code ids")
        if codebook is not None:
            book = _as_array(codebook).astype(np.float64)
            top = max(int(s.max()) for s in segs)
            if book.ndim != 2 or top >= len(book) or min(int(s.min()) for s in segs) < 0:
                raise ValueError(f"codebook {book.shape} cannot look up code ids in [0, {top}]")
            segs = [book[s] for s in segs]
    else:
        segs = [s.astype(np.float64) for s in segs]
    labels, speakers = list(labels), list(speakers)
    rng = np.random.default_rng(seed)
    triples = _sample_triples(labels, speakers, within_speaker, num_triples, rng)
    pairs = sorted({(a, x) for a, _, x in triples} | {(b, x) for _, b, x in triples})
    dist = _dtw_pairs(segs, pairs, metric)
    d_ax = np.array([dist[a, x] for a, _, x in triples])
    d_bx = np.array([dist[b, x] for _, b, x in triples])
    tie = np.abs(d_ax - d_bx) <= 1e-12
    return float(np.mean(np.where(tie, 0.5, (d_ax > d_bx).astype(np.float64))))
