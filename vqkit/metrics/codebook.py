"""Codebook health: histograms, perplexity, usage, and the unigram baseline a prior must beat."""

from __future__ import annotations

import math

import torch
from torch import Tensor

LN2 = math.log(2)  # nats per bit: a loss in nats / LN2 is in bits


def _as_codes(codes, num_codes: int) -> Tensor:
    if isinstance(num_codes, bool) or not isinstance(num_codes, int) or num_codes < 1:
        raise ValueError(f"num_codes must be a positive int, got {num_codes!r}")
    codes = torch.as_tensor(codes)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
    codes = codes.reshape(-1).long()
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= num_codes):
        raise ValueError(
            f"codes must lie in [0, {num_codes}), got values from {int(codes.min())} to "
            f"{int(codes.max())}; is num_codes right?"
        )
    return codes


def code_histogram(codes: Tensor, num_codes: int) -> Tensor:
    """Count how often each code occurs.

    Args:
        codes: Integer tensor of any shape, e.g. ``(B, *spatial)``, values in ``[0, num_codes)``.
        num_codes: Codebook size K.

    Returns:
        ``(K,)`` int64 counts, on the device of ``codes``.
    """
    return torch.bincount(_as_codes(codes, num_codes), minlength=num_codes)


def _as_counts(counts) -> Tensor:
    counts = torch.as_tensor(counts)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"counts must be a non-empty 1-D histogram (K,), got shape {tuple(counts.shape)}"
        )
    if bool((counts < 0).any()):
        raise ValueError("counts must be non-negative")
    return counts.double()


def perplexity(counts: Tensor) -> Tensor:
    """``exp(entropy)`` of the code distribution: K for uniform use of K codes, 1 for one code.

    Args:
        counts: ``(K,)`` histogram (counts or probabilities).

    Returns:
        Scalar float64 tensor in ``[1, K]``.
    """
    counts = _as_counts(counts)
    total = counts.sum()
    if total <= 0:
        raise ValueError("perplexity of an empty histogram (no codes counted) is undefined")
    probs = counts / total
    # 0 * log 0 = 0: empty bins contribute nothing.
    entropy = -torch.where(probs > 0, probs * probs.log(), torch.zeros_like(probs)).sum()
    return entropy.exp()


def usage(counts: Tensor) -> Tensor:
    """Fraction of codes used at least once.

    Args:
        counts: ``(K,)`` histogram.

    Returns:
        Scalar float64 tensor in ``[0, 1]``.
    """
    counts = _as_counts(counts)
    return (counts > 0).double().mean()


def unigram_bits(
    train_codes: Tensor, test_codes: Tensor, num_codes: int, alpha: float = 1.0
) -> float:
    """Mean bits per code of ``test_codes`` under smoothed code frequencies of ``train_codes``.

    This is the cost of coding each latent code independently with its training frequency, the
    baseline an autoregressive prior has to beat (a prior at or above it has learnt nothing about
    context). Smoothing: ``p_k = (n_k + alpha) / (N + alpha K)`` (Laplace for ``alpha = 1``), so a
    code unseen in training still has a finite cost.

    Args:
        train_codes: Integer codes of any shape, values in ``[0, num_codes)``.
        test_codes: Integer codes of any shape, at least one.
        num_codes: Codebook size K.
        alpha: Additive smoothing, positive.

    Returns:
        ``-mean(log2 p[test_codes])`` as a Python float.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be positive (additive smoothing), got {alpha!r}")
    train = _as_codes(train_codes, num_codes)
    test = _as_codes(test_codes, num_codes).to(train.device)
    if test.numel() == 0:
        raise ValueError("test_codes is empty; need at least one code to score")
    counts = torch.bincount(train, minlength=num_codes).double()
    probs = (counts + alpha) / (train.numel() + alpha * num_codes)  # (K,)
    return float(-probs.log()[test].mean() / math.log(2.0))


class CodeUsageTracker:
    """Code counts accumulated over batches, for perplexity and usage over a whole epoch.

    Per-batch perplexity (as in ``QuantizerOutput``) understates collapse on small batches and
    overstates it on large ones; counting over many batches gives the codebook's real use.
    Counts stay on the device of the codes, so updating does not synchronise a GPU.

    Examples:
        >>> tracker = CodeUsageTracker(4)
        >>> tracker.update(torch.tensor([[0, 1], [1, 1]]))
        >>> tracker.histogram().tolist(), float(tracker.usage())
        ([1, 3, 0, 0], 0.5)
    """

    def __init__(self, num_codes: int) -> None:
        if isinstance(num_codes, bool) or not isinstance(num_codes, int) or num_codes < 1:
            raise ValueError(f"num_codes must be a positive int, got {num_codes!r}")
        self.num_codes = num_codes
        self.counts: Tensor | None = None

    def reset(self) -> None:
        self.counts = None

    @torch.no_grad()
    def update(self, codes: Tensor) -> None:
        """Add the codes of one batch (integer tensor of any shape) to the counts."""
        batch = code_histogram(codes, self.num_codes)
        self.counts = batch if self.counts is None else self.counts + batch.to(self.counts.device)

    @property
    def total(self) -> int:
        """Number of codes counted so far."""
        return 0 if self.counts is None else int(self.counts.sum())

    def histogram(self) -> Tensor:
        """``(K,)`` int64 counts so far (zeros before any update)."""
        if self.counts is None:
            return torch.zeros(self.num_codes, dtype=torch.long)
        return self.counts.clone()

    def perplexity(self) -> Tensor:
        """Perplexity of the accumulated histogram; raises ValueError before any update."""
        if self.total == 0:
            raise ValueError("CodeUsageTracker has no codes yet; call update(codes) first")
        return perplexity(self.counts)

    def usage(self) -> Tensor:
        """Fraction of codes seen at least once so far."""
        return usage(self.histogram())

    def dead_codes(self) -> Tensor:
        """Indices of the codes never seen so far, ``(n_dead,)`` int64."""
        return torch.nonzero(self.histogram() == 0).flatten()
