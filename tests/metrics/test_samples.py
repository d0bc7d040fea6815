"""Sample quality: the image classifier learns real images, the Frechet distance is right."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from vqkit.datasets import build_image_dataset
from vqkit.metrics.samples import (
    ImageClassifier,
    classify,
    frechet_distance,
    quality_caption,
    sample_quality,
    train_image_classifier,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def builtin(split: str, size: int):
    return build_image_dataset(
        "builtin", split=split, size=size, root=None, image_size=32, seed=0, download=False
    )


def test_classifier_scores_real_test_images_above_chance():
    train, test = builtin("train", 400), builtin("test", 100)
    clf = train_image_classifier(train, num_classes=10, steps=150, batch_size=32, channels=8)
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([test[i][1] for i in range(len(test))])
    pred, feats = classify(clf, x, batch_size=32)
    assert pred.shape == (100,) and feats.shape == (100, 32)  # 4 x channels features
    accuracy = float((pred == y).float().mean())
    assert accuracy > 0.35, accuracy  # chance: 0.1
    # The same images with their rows and columns shuffled (colours kept, shapes gone) are not
    # classified as well: the figure depends on the shapes the images show.
    shuffled = x[:, :, torch.randperm(32)][:, :, :, torch.randperm(32)]
    assert float((classify(clf, shuffled)[0] == y).float().mean()) < accuracy - 0.2


def test_classifier_training_is_seeded_and_leaves_the_global_rng_alone():
    data = TensorDataset(torch.rand(16, 3, 8, 8), torch.arange(16) % 2)
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    a = train_image_classifier(data, num_classes=2, steps=3, batch_size=4, channels=4, seed=1)
    assert torch.equal(torch.rand(3), before)
    b = train_image_classifier(data, num_classes=2, steps=3, batch_size=4, channels=4, seed=1)
    c = train_image_classifier(data, num_classes=2, steps=3, batch_size=4, channels=4, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_classifier_refuses_bad_labels_and_classes():
    data = TensorDataset(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        train_image_classifier(data, num_classes=3, steps=2, batch_size=4, channels=4)
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassifier(1)


def test_frechet_is_zero_for_identical_sets_and_grows_with_a_mean_shift():
    a = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Same covariance: the distance is exactly the squared shift of the mean.
    shift = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0])
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.square().sum()), rel=1e-6)
    dists = [frechet_distance(a, a + s * shift) for s in (0.5, 1.0, 2.0)]
    assert dists[0] < dists[1] < dists[2]
    # Symmetric.
    b = torch.randn(150, 5, generator=torch.Generator().manual_seed(1)) * 2 + 1
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_frechet_matches_a_direct_computation():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(40, 3, generator=gen) @ torch.randn(3, 3, generator=gen)
    b = torch.randn(30, 3, generator=gen) @ torch.randn(3, 3, generator=gen) + 0.7
    ad, bd = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = ad.mean(0), bd.mean(0)
    cov_a, cov_b = np.cov(ad, rowvar=False), np.cov(bd, rowvar=False)
    root = scipy_linalg.sqrtm(cov_a @ cov_b).real
    direct = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(direct, rel=1e-6)
    # Diagonal covariances, by hand: sum of (sqrt(var_a) - sqrt(var_b))^2 plus the mean term.
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])  # var 4/3, 16/3
    y = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) + 3  # var 1/3, 1/3
    by_hand = sum((v**0.5 - w**0.5) ** 2 for v, w in ((4 / 3, 1 / 3), (16 / 3, 1 / 3)))
    by_hand += (1 - 3.5) ** 2 + (2 - 3.5) ** 2
    assert frechet_distance(x, y) == pytest.approx(by_hand, rel=1e-6)


def test_frechet_refuses_mismatched_or_too_few_features():
    with pytest.raises(ValueError, match="features"):
        frechet_distance(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(4, 3))


def test_sample_quality_of_the_real_images_themselves():
    """Samples that are the real test images score the real accuracy, ratio 1 against
    reconstructions that are the images too, and Frechet distance 0; an unconditional prior's
    accuracy is not defined, its distance still is."""
    torch.manual_seed(0)
    clf = ImageClassifier(3, channels=4).eval()
    x = torch.rand(24, 3, 8, 8)
    y = classify(clf, x)[0]
    y[:6] = (y[:6] + 1) % 3  # 18 of 24 right
    m = sample_quality(clf, x, y, x, x, y)
    assert m["classifier_real_accuracy"] == m["classifier_sample_accuracy"] == 0.75
    assert m["sample_over_recon_accuracy"] == 1.0
    assert m["classifier_frechet"] == pytest.approx(0, abs=1e-8)
    assert m["classifier_scored_samples"] == 24
    other = sample_quality(clf, x, y, x, torch.rand(24, 3, 8, 8) * 0.2, None)
    assert other["classifier_sample_accuracy"].startswith("n/a: unconditional")
    assert other["classifier_frechet"] > 0
    assert "not defined for an unconditional prior" in quality_caption(other)
    assert "75.0% of 24 samples" in quality_caption(m)


@pytest.mark.parametrize("side", [1, 4, 8, 32])
def test_classifier_takes_any_image_size(side):
    clf = ImageClassifier(3, channels=4).eval()
    pred, feats = classify(clf, torch.rand(5, 3, side, side))
    assert pred.shape == (5,) and feats.shape == (5, 16)
