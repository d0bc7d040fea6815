"""Discrete reconstruction likelihoods over data in [-0.5, 0.5]."""

import math

import pytest
import torch
import torch.nn.functional as F

from vqkit.models.likelihood import (
    Categorical256,
    DiscretizedLogistic,
    GaussianLikelihood,
    bin_centers,
    build_likelihood,
    to_bins,
)

ALL_BINS = bin_centers(torch.arange(256))  # (256,) every value the data can take


def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def _phi(t: float) -> float:
    return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))


def test_bins_round_trip_and_range_check():
    k = torch.arange(256)
    assert torch.equal(to_bins(bin_centers(k)), k)
    with pytest.raises(ValueError, match=r"\[-0.5, 0.5\]"):
        to_bins(torch.tensor([0.0, 0.9]))
    with pytest.raises(ValueError, match=r"\[-0.5, 0.5\]"):
        to_bins(torch.tensor([0.0, float("nan")]))


def _all_bins_log_prob(lik, params_one):
    """log P(k) for every k, for each of the N parameter sets in ``params_one`` (N, P)."""
    n, p = params_one.shape
    params = params_one[:, None, :].expand(n, 256, p).reshape(n * 256, p, 1)  # (N*256, P, 1)
    x = ALL_BINS.repeat(n).reshape(n * 256, 1, 1)  # (N*256, 1, 1)
    return lik.log_prob(params, x).reshape(n, 256)


def test_logistic_probabilities_sum_to_one():
    torch.manual_seed(0)
    mu = torch.rand(64) * 1.6 - 0.8  # includes locations beyond the data range
    log_s = torch.rand(64) * 8 - 7.5  # from sharper than a bin to much wider than the range
    logp = _all_bins_log_prob(DiscretizedLogistic(), torch.stack([mu, log_s], 1))
    assert torch.isfinite(logp).all()
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(64), atol=1e-4, rtol=0)


def test_gaussian_probabilities_sum_to_one():
    torch.manual_seed(0)
    for sigma in (0.002, 0.05, 1.0):
        mu = torch.rand(32, 1) * 1.6 - 0.8
        logp = _all_bins_log_prob(GaussianLikelihood(sigma=sigma), mu)
        assert torch.isfinite(logp).all()
        torch.testing.assert_close(logp.exp().sum(1), torch.ones(32), atol=1e-4, rtol=0)


def test_logistic_nll_matches_hand_computation():
    # One example, C=1, three elements: the lowest bin, an inner bin, the highest bin.
    ks = [0, 100, 255]
    mus = [-0.4, 0.1, 0.45]
    log_ss = [-3.0, -4.0, -2.5]
    h = 0.5 / 255
    expected = 0.0
    for k, mu, ls in zip(ks, mus, log_ss):
        x, s = k / 255 - 0.5, math.exp(ls)
        if k == 0:
            p = _sigmoid((x + h - mu) / s)
        elif k == 255:
            p = 1.0 - _sigmoid((x - h - mu) / s)
        else:
            p = _sigmoid((x + h - mu) / s) - _sigmoid((x - h - mu) / s)
        expected -= math.log(p)
    x = bin_centers(torch.tensor(ks)).reshape(1, 1, 3)
    params = torch.tensor([mus, log_ss]).reshape(1, 2, 3)
    lik = DiscretizedLogistic()
    nll = lik.nll(params, x)
    assert nll.shape == (1,)
    assert nll.item() == pytest.approx(expected, rel=1e-5)
    assert lik.nll_bits_per_dim(params, x).item() == pytest.approx(
        expected / (3 * math.log(2)), rel=1e-5
    )
    assert lik.loss(params, x).item() == pytest.approx(expected / 3, rel=1e-5)


def test_logistic_far_bin_keeps_precision_and_gradients():
    # A bin 10 scales away from a sharp logistic: the plain difference of sigmoids underflows
    # to zero in float32, the log-space form does not.
    lik = DiscretizedLogistic()
    x = torch.full((1, 1, 1), bin_centers(torch.tensor(128)).item())
    params = torch.tensor([[[x.item() - 0.3]], [[-5.0]]]).reshape(1, 2, 1).requires_grad_()
    nll = lik.nll(params, x)
    s, h, c = math.exp(-5.0), 0.5 / 255, 0.3
    log_p = (
        -math.log1p(math.exp(-(c + h) / s))
        - math.log1p(math.exp((c - h) / s))
        + math.log(-math.expm1(-2 * h / s))
    )
    assert nll.item() == pytest.approx(-log_p, rel=1e-4)
    nll.sum().backward()
    assert torch.isfinite(params.grad).all()


def test_gaussian_nll_matches_hand_computation():
    ks, mus, sigma, h = [0, 77, 255], [-0.45, -0.2, 0.3], 0.05, 0.5 / 255
    expected = 0.0
    for k, mu in zip(ks, mus):
        x = k / 255 - 0.5
        if k == 0:
            p = _phi((x + h - mu) / sigma)
        elif k == 255:
            p = 1.0 - _phi((x - h - mu) / sigma)
        else:
            p = _phi((x + h - mu) / sigma) - _phi((x - h - mu) / sigma)
        expected -= math.log(p)
    x = bin_centers(torch.tensor(ks)).reshape(1, 1, 3)
    nll = GaussianLikelihood(sigma=sigma).nll(torch.tensor(mus).reshape(1, 1, 3), x)
    assert nll.item() == pytest.approx(expected, rel=1e-4)


def test_gaussian_loss_is_mse_and_mean_is_params():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 4) - 0.5
    params = torch.randn(2, 3, 4, 4)
    lik = GaussianLikelihood()
    assert lik.out_channels(3) == 3
    assert lik.loss(params, x).item() == pytest.approx(((params - x) ** 2).mean().item(), rel=1e-6)
    assert torch.equal(lik.mean(params), params)


def test_categorical_nll_is_cross_entropy_with_channel_major_layout():
    torch.manual_seed(0)
    b, c, h, w = 2, 3, 2, 3
    lik = Categorical256()
    assert lik.out_channels(c) == 256 * c
    params = torch.randn(b, 256 * c, h, w)
    k = torch.randint(0, 256, (b, c, h, w))
    x = bin_centers(k)
    # Hand gather: the logit of bin k for channel ch sits at channel ch * 256 + k.
    expected = torch.zeros(b)
    for i in range(b):
        for ch in range(c):
            logits = params[i, ch * 256 : (ch + 1) * 256]  # (256, h, w)
            logp = logits.log_softmax(0).gather(0, k[i, ch][None])
            expected[i] -= logp.sum()
    torch.testing.assert_close(lik.nll(params, x), expected)
    ce = F.cross_entropy(params.reshape(b, c, 256, h, w).transpose(1, 2), k)
    torch.testing.assert_close(lik.loss(params, x), ce)
    torch.testing.assert_close(lik.loss(params, x), expected.sum() / (c * h * w * b))


def test_categorical_mean_is_the_expected_value():
    k = torch.tensor([0, 200, 255]).reshape(1, 3, 1)
    logits = torch.full((1, 3, 256, 1), -1e4)
    logits.scatter_(2, k[:, :, None], 1e4)  # one-hot: the mean is that bin's value
    params = logits.reshape(1, 3 * 256, 1)
    torch.testing.assert_close(Categorical256().mean(params), bin_centers(k))
    uniform = Categorical256().mean(torch.zeros(1, 256, 5))
    torch.testing.assert_close(uniform, torch.zeros(1, 1, 5), atol=1e-6, rtol=0)


def test_logistic_layout_and_mean():
    lik = DiscretizedLogistic()
    assert lik.out_channels(3) == 6
    params = torch.tensor([0.2, 0.9, -3.0, -3.0]).reshape(1, 4, 1)  # means (0.2, 0.9), log-scales
    torch.testing.assert_close(lik.mean(params), torch.tensor([0.2, 0.5]).reshape(1, 2, 1))


@pytest.mark.parametrize("lik", [GaussianLikelihood(), DiscretizedLogistic(), Categorical256()])
def test_wrong_params_shape_is_a_clear_error(lik):
    x = torch.zeros(1, 3, 4)
    with pytest.raises(ValueError, match=r"out_channels\(3\)"):
        lik.loss(torch.zeros(1, 3 * 256 + 1, 4), x)


def test_build_likelihood_by_name():
    assert isinstance(build_likelihood("logistic"), DiscretizedLogistic)
    assert build_likelihood("gaussian", sigma=0.1).sigma == 0.1
    with pytest.raises(ValueError, match="categorical"):
        build_likelihood("laplace")
