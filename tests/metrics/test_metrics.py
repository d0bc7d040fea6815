"""Reconstruction and codebook metrics against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vqkit.datasets import SyntheticShapes
from vqkit.metrics import (
    CodeUsageTracker,
    bits_per_dim,
    code_histogram,
    data_variance,
    mse,
    perplexity,
    psnr,
    unigram_bits,
    usage,
)

# ---------------------------------------------------------------- reconstruction


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two examples with per-example MSE 0.01 and 0.04."""
    x = torch.zeros(2, 1, 2, 2)
    y = torch.zeros(2, 1, 2, 2)
    y[0] = 0.1  # every value off by 0.1 -> 0.01
    y[1, 0, 1, 1] = 0.4  # one of four values off by 0.4 -> 0.16 / 4 = 0.04
    return x, y


def test_mse_per_example_and_mean():
    x, y = _pair()
    torch.testing.assert_close(mse(x, y, reduction="none"), torch.tensor([0.01, 0.04]))
    torch.testing.assert_close(mse(x, y), torch.tensor(0.025))


def test_psnr_of_known_mse():
    x, y = _pair()
    per = psnr(x, y, reduction="none")
    torch.testing.assert_close(per, torch.tensor([20.0, 10 * math.log10(25.0)]))
    # The mean is over per-example PSNRs, not the PSNR of the mean MSE (16.02 dB).
    torch.testing.assert_close(psnr(x, y), per.mean())
    torch.testing.assert_close(psnr(x * 255, y * 255, data_range=255.0), psnr(x, y))
    # Data in [-1, 1]: range 2, so 10 log10(4 / MSE) per example.
    by_hand = (10 * math.log10(4 / 0.01) + 10 * math.log10(4 / 0.04)) / 2
    assert float(psnr(x, y, 2.0)) == pytest.approx(by_hand, rel=1e-6)
    assert math.isinf(float(psnr(x, x)))


def test_reconstruction_errors_are_clear():
    with pytest.raises(ValueError, match="same shape"):
        mse(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        mse(torch.zeros(2, 3), torch.zeros(2, 3), reduction="sum")
    with pytest.raises(ValueError, match="data_range"):
        psnr(torch.zeros(2, 3), torch.zeros(2, 3), data_range=0)
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(1.0, 0)


def test_data_variance_of_tensor_and_dataset():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=(10, 3, 4, 4)).astype(np.float32)
    expected = float(np.var(values.astype(np.float64)))
    assert data_variance(torch.from_numpy(values)) == pytest.approx(expected, rel=1e-9)
    items = [(torch.from_numpy(v), 0) for v in values]
    assert data_variance(items) == pytest.approx(expected, rel=1e-9)
    assert data_variance(items, max_items=4) == pytest.approx(
        float(np.var(values[:4].astype(np.float64))), rel=1e-9
    )
    # A large offset must not ruin the streaming sums.
    shifted = [(x + 1e6, y) for x, y in ((torch.from_numpy(v).double(), 0) for v in values)]
    assert data_variance(shifted) == pytest.approx(expected, rel=1e-6)
    # A map-style Dataset is indexed, using each item's image.
    ds = SyntheticShapes(split="test", size=5, image_size=8)
    stacked = torch.stack([ds[i][0] for i in range(5)])
    assert data_variance(ds) == pytest.approx(float(stacked.double().var(correction=0)), rel=1e-9)
    with pytest.raises(ValueError, match="empty"):
        data_variance([])


def test_bits_per_dim():
    assert bits_per_dim(3072 * math.log(2.0), 3072) == pytest.approx(1.0)
    assert bits_per_dim(64 * math.log(8.0), 64) == pytest.approx(3.0)
    nll = torch.tensor([math.log(2.0) * 10, math.log(4.0) * 10])
    torch.testing.assert_close(bits_per_dim(nll, 10), torch.tensor([1.0, 2.0]))


# ---------------------------------------------------------------- codebook


def test_code_histogram_counts_and_validates():
    codes = torch.tensor([[0, 2], [2, 3]])
    assert code_histogram(codes, 5).tolist() == [1, 0, 2, 1, 0]
    assert code_histogram(codes, 5).dtype == torch.int64
    assert code_histogram(torch.zeros(0, dtype=torch.long), 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        code_histogram(codes, 3)
    with pytest.raises(ValueError, match="integer"):
        code_histogram(codes.float(), 5)
    with pytest.raises(ValueError, match="num_codes"):
        code_histogram(codes, 0)


@pytest.mark.parametrize("k", [1, 7, 512])
def test_perplexity_of_uniform_histogram_is_k(k):
    assert float(perplexity(torch.full((k,), 5))) == pytest.approx(k)
    # Unused codes do not count: uniform over k of 2k codes is still k.
    assert float(
        perplexity(torch.cat([torch.full((k,), 3), torch.zeros(k, dtype=torch.long)]))
    ) == pytest.approx(k)


def test_perplexity_by_hand():
    # p = (1/4, 1/4, 1/2): entropy = 1.5 bits, so perplexity = 2 ** 1.5.
    assert float(perplexity(torch.tensor([1, 1, 2]))) == pytest.approx(2**1.5)
    assert float(perplexity(torch.tensor([0, 9, 0]))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty"):
        perplexity(torch.zeros(4))
    with pytest.raises(ValueError, match="1-D"):
        perplexity(torch.ones(2, 2))


def test_perplexity_agrees_with_quantizer_code_stats():
    from vqkit.quantize.base import code_stats

    codes = torch.randint(0, 16, (4, 8, 8), generator=torch.Generator().manual_seed(0)) // 3
    ppl, used, reachable = code_stats(codes, 16)
    hist = code_histogram(codes, 16)
    assert float(perplexity(hist)) == pytest.approx(float(ppl), rel=1e-5)
    assert float(usage(hist)) == pytest.approx(float(used))
    assert float(reachable) == float(used)  # 256 lookups can reach all 16 codes
    # 3 lookups reach at most 3 of 16 codes: 2 distinct of them is 2/3, not 2/16
    small = code_stats(torch.tensor([5, 5, 9]), 16)
    assert float(small.usage) == 2 / 16 and float(small.reachable_usage) == pytest.approx(2 / 3)


def test_usage_is_fraction_of_codes_seen():
    assert float(usage(torch.tensor([1, 0, 3, 0]))) == 0.5
    assert float(usage(torch.zeros(8))) == 0.0
    assert float(usage(torch.ones(8))) == 1.0


def test_unigram_bits_by_hand():
    # Train counts (3, 1, 0), alpha 1: p = (4/7, 2/7, 1/7). Test codes 0 and 2:
    # -(log2(4/7) + log2(1/7)) / 2 = log2(7) - 1.
    train, test = torch.tensor([0, 0, 0, 1]), torch.tensor([[0], [2]])
    assert unigram_bits(train, test, 3) == pytest.approx(math.log2(7) - 1)
    # alpha 0.5: p_1 = (1 + 0.5) / (4 + 1.5) = 3/11.
    assert unigram_bits(train, torch.tensor([1]), 3, alpha=0.5) == pytest.approx(math.log2(11 / 3))
    # Uniform training frequencies over K codes cost log2 K bits whatever the test codes.
    uniform = torch.arange(8).repeat(10)
    assert unigram_bits(uniform, torch.tensor([5, 5, 5]), 8) == pytest.approx(3.0)


def test_unigram_bits_errors():
    with pytest.raises(ValueError, match="alpha"):
        unigram_bits(torch.tensor([0]), torch.tensor([0]), 2, alpha=0.0)
    with pytest.raises(ValueError, match="empty"):
        unigram_bits(torch.tensor([0]), torch.tensor([], dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        unigram_bits(torch.tensor([0]), torch.tensor([2]), 2)


def test_code_usage_tracker_accumulates_batches():
    tracker = CodeUsageTracker(6)
    assert tracker.histogram().tolist() == [0] * 6 and tracker.total == 0
    with pytest.raises(ValueError, match="update"):
        tracker.perplexity()
    a = torch.tensor([[0, 1], [1, 1]])
    b = torch.tensor([[[4, 4, 1]]])
    tracker.update(a)
    tracker.update(b)
    assert tracker.histogram().tolist() == [1, 4, 0, 0, 2, 0]
    assert tracker.total == 7
    both = torch.cat([a.flatten(), b.flatten()])
    assert float(tracker.perplexity()) == pytest.approx(float(perplexity(code_histogram(both, 6))))
    assert float(tracker.usage()) == pytest.approx(0.5)
    assert tracker.dead_codes().tolist() == [2, 3, 5]
    tracker.reset()
    assert tracker.total == 0
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        tracker.update(torch.tensor([6]))
