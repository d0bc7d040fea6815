"""Reconstruction likelihoods ``p(x | z_q)`` for data scaled to [-0.5, 0.5].

8-bit data (pixels, mu-law audio) takes 256 values ``k / 255 - 0.5``, ``k = 0..255``: bins of
width ``1 / 255`` centred on those values. A likelihood turns the decoder's raw output
(``params``) into a training loss, a reconstruction and a per-example NLL in nats over the 256
bins, so bits/dim are comparable between likelihoods:

======================  ======================  ==========================================
class                   decoder channels        params layout
======================  ======================  ==========================================
GaussianLikelihood      ``C``                   the mean
DiscretizedLogistic     ``2 * C``               ``[means (C), log-scales (C)]``
Categorical256          ``256 * C``             logits, channel ``c * 256 + k`` for bin k
======================  ======================  ==========================================
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_BINS = 256
HALF_BIN = 0.5 / (NUM_BINS - 1)  # half the width of one bin of [-0.5, 0.5]
LOG_BIN = math.log(2 * HALF_BIN)


def to_model(x: Tensor) -> Tensor:
    """Data in ``[0, 1]`` (images, video frames) -> the models' range ``[-0.5, 0.5]``."""
    return x - 0.5


def to_data(y: Tensor) -> Tensor:
    """The models' range ``[-0.5, 0.5]`` -> data in ``[0, 1]``, clamped: a reconstruction or a
    sample ready to save or score. :func:`to_model` is its inverse on ``[0, 1]``."""
    return (y + 0.5).clamp(0, 1)


def to_bins(x: Tensor) -> Tensor:
    """Data in [-0.5, 0.5] -> int64 bin indices ``round((x + 0.5) * 255)`` in [0, 255]."""
    lo, hi = torch.aminmax(x.detach().float())
    lo, hi = lo.item(), hi.item()
    if not (lo >= -0.5 - HALF_BIN and hi <= 0.5 + HALF_BIN):  # also catches NaN
        raise ValueError(
            f"data must lie in [-0.5, 0.5] for a discrete likelihood, got values in "
            f"[{lo:.4g}, {hi:.4g}]; scale 8-bit data as k / 255 - 0.5 (images in [0, 1]: x - 0.5)"
        )
    return torch.round((x.float() + 0.5) * (NUM_BINS - 1)).long().clamp_(0, NUM_BINS - 1)


def bin_centers(k: Tensor) -> Tensor:
    """Inverse of :func:`to_bins`: bin indices -> values ``k / 255 - 0.5``."""
    return k.float() / (NUM_BINS - 1) - 0.5


def _sum_per_example(t: Tensor) -> Tensor:
    """``(B, ...) -> (B,)``."""
    return t.reshape(t.shape[0], -1).sum(1)


class Likelihood(nn.Module):
    """Interface shared by the likelihoods; they hold no weights."""

    def out_channels(self, channels: int) -> int:
        """Decoder output channels needed for data with ``channels`` channels."""
        raise NotImplementedError  # pragma: no cover

    def loss(self, params: Tensor, x: Tensor) -> Tensor:
        """Scalar training loss, a mean over all elements."""
        raise NotImplementedError  # pragma: no cover

    def mean(self, params: Tensor) -> Tensor:
        """``(B, out_channels(C), *spatial) -> (B, C, *spatial)`` reconstruction."""
        raise NotImplementedError  # pragma: no cover

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """``(B, C, *spatial)`` log-probability in nats of the bin holding each element of x."""
        raise NotImplementedError  # pragma: no cover

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        """``(B,)`` negative log-likelihood in nats, summed over all dims of each example."""
        return -_sum_per_example(self.log_prob(params, x))

    def nll_bits_per_dim(self, params: Tensor, x: Tensor) -> Tensor:
        """``(B,)`` NLL in bits per dim: ``nll / (C * prod(spatial) * ln 2)``."""
        return self.nll(params, x) / (x[0].numel() * math.log(2))

    def _check(self, params: Tensor, x: Tensor) -> None:
        c = x.shape[1]
        expected = (x.shape[0], self.out_channels(c), *x.shape[2:])
        if tuple(params.shape) != expected:
            raise ValueError(
                f"{type(self).__name__} expects decoder params of shape {expected} for data of "
                f"shape {tuple(x.shape)}, got {tuple(params.shape)}; build the decoder with "
                f"out_channels=likelihood.out_channels({c})"
            )


class GaussianLikelihood(Likelihood):
    """A Gaussian with fixed standard deviation; its training loss is the MSE (the paper's).

    Args:
        sigma: the fixed standard deviation used by :meth:`nll` only (the loss is plain MSE,
            which equals the Gaussian NLL up to scale and constant). The NLL is that of the
            Gaussian discretized to the 256 bins (edge bins take the tails), so it is a proper
            discrete NLL in the same units as the other likelihoods.
    """

    def __init__(self, sigma: float = 0.05) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        # A buffer, so a sigma fitted after training is saved with the weights (float64: it is
        # read back as the same Python float).
        self.register_buffer("std", torch.tensor(float(sigma), dtype=torch.float64))

    @property
    def sigma(self) -> float:
        return float(self.std)

    @sigma.setter
    def sigma(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"sigma must be > 0, got {value}")
        self.std.fill_(float(value))

    def out_channels(self, channels: int) -> int:
        return channels

    def loss(self, params: Tensor, x: Tensor) -> Tensor:
        self._check(params, x)
        return F.mse_loss(params, x)

    def mean(self, params: Tensor) -> Tensor:
        return params

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        self._check(params, x)
        k = to_bins(x)
        centered = bin_centers(k) - params.float()
        upper = (centered + HALF_BIN) / self.sigma
        lower = (centered - HALF_BIN) / self.sigma
        # log(Phi(u) - Phi(l)) computed on the side of the distribution where it does not
        # cancel: for l > 0 use the upper tails Phi(-l) - Phi(-u).
        flip = lower > 0
        u, lo = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
        log_u, log_l = torch.special.log_ndtr(u), torch.special.log_ndtr(lo)
        log_mid = log_u + torch.log((-torch.expm1(log_l - log_u)).clamp(min=1e-12))
        log_first = torch.special.log_ndtr(upper)  # bin 0 takes the whole lower tail
        log_last = torch.special.log_ndtr(-lower)  # bin 255 takes the whole upper tail
        return torch.where(k == 0, log_first, torch.where(k == NUM_BINS - 1, log_last, log_mid))


class DiscretizedLogistic(Likelihood):
    """A single logistic per element, discretized to 256 bins (PixelCNN++ with one component).

    ``P(k) = sigmoid((x_k + h - mu) / s) - sigmoid((x_k - h - mu) / s)`` with ``h`` half a bin;
    bin 0 takes the whole lower tail and bin 255 the whole upper tail, so the 256 probabilities
    sum to 1. Log-scales are clamped below at ``min_log_scale`` as in PixelCNN++.
    """

    def __init__(self, min_log_scale: float = -7.0) -> None:
        super().__init__()
        self.min_log_scale = float(min_log_scale)

    def out_channels(self, channels: int) -> int:
        return 2 * channels

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        # float32 even under autocast: softplus/expm1 of bf16 logits lose the small bins.
        mu, log_s = params.float().chunk(2, dim=1)
        return mu, log_s.clamp(min=self.min_log_scale)

    def mean(self, params: Tensor) -> Tensor:
        # The location clamped to the data range; the exact mean of the discretized distribution
        # differs only by the edge bins' mass.
        return self._split(params)[0].clamp(-0.5, 0.5)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        self._check(params, x)
        mu, log_s = self._split(params)
        k = to_bins(x)
        centered = bin_centers(k) - mu
        inv_s = torch.exp(-log_s)
        plus_in = inv_s * (centered + HALF_BIN)
        min_in = inv_s * (centered - HALF_BIN)
        log_cdf_plus = -F.softplus(-plus_in)  # log sigmoid(plus_in): bin 0
        log_one_minus_cdf_min = -F.softplus(min_in)  # log(1 - sigmoid(min_in)): bin 255
        # sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)), in log space so
        # a far-off bin (both sigmoids near 0 or 1) keeps its precision.
        log_mid = (
            -F.softplus(-plus_in)
            - F.softplus(min_in)
            + torch.log((-torch.expm1(min_in - plus_in)).clamp(min=1e-12))
        )
        return torch.where(
            k == 0, log_cdf_plus, torch.where(k == NUM_BINS - 1, log_one_minus_cdf_min, log_mid)
        )

    def loss(self, params: Tensor, x: Tensor) -> Tensor:
        """Mean NLL per dim in nats."""
        return -self.log_prob(params, x).mean()


class Categorical256(Likelihood):
    """A softmax over the 256 bins for every element; the loss is the cross-entropy.

    The reconstruction is the expected value ``sum_k p_k (k / 255 - 0.5)`` (differentiable).
    """

    def out_channels(self, channels: int) -> int:
        return NUM_BINS * channels

    def logits(self, params: Tensor) -> Tensor:
        """``(B, 256 * C, *spatial) -> (B, 256, C, *spatial)``, the layout ``F.cross_entropy`` takes."""
        b, c256, *spatial = params.shape
        if c256 % NUM_BINS:
            raise ValueError(
                f"Categorical256 expects 256 * C decoder channels, got {c256}; build the decoder "
                f"with out_channels=likelihood.out_channels(C)"
            )
        return params.reshape(b, c256 // NUM_BINS, NUM_BINS, *spatial).transpose(1, 2)

    def mean(self, params: Tensor) -> Tensor:
        probs = self.logits(params).softmax(dim=1)  # (B, 256, C, *spatial)
        values = bin_centers(torch.arange(NUM_BINS, device=params.device)).to(probs.dtype)
        return torch.einsum("bk...,k->b...", probs, values)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        self._check(params, x)
        return -F.cross_entropy(self.logits(params), to_bins(x), reduction="none")

    def loss(self, params: Tensor, x: Tensor) -> Tensor:
        """Mean cross-entropy per dim in nats."""
        self._check(params, x)
        return F.cross_entropy(self.logits(params), to_bins(x))


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "gaussian": GaussianLikelihood,
    "logistic": DiscretizedLogistic,
    "categorical": Categorical256,
}


def build_likelihood(name: str, **kwargs) -> Likelihood:
    """A likelihood by name: ``"gaussian"``, ``"logistic"`` or ``"categorical"``."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name](**kwargs)
