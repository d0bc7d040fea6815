"""Sample quality of generated images: a small classifier trained on real images judges them.

A class-conditional prior's sample of class ``c`` should look like class ``c``. A small CNN
(:class:`ImageClassifier`) trained on the real training images answers it: its accuracy on real
test images is the reference, on their reconstructions the ceiling any prior can reach through
the decoder, and on the samples (against the class they were drawn for) the **sample class
accuracy**. :func:`frechet_distance` between the classifier's penultimate features of real test
images and of samples compares the two distributions (for unconditional priors too); it is the
Frechet distance of Heusel et al. 2017 in this small classifier's feature space, so it is NOT the
Inception FID and its values are comparable only between runs that use the same classifier.

Example:
    >>> clf = train_image_classifier(train_set, num_classes=10, steps=300)
    >>> pred, feats = classify(clf, images)  # (N,) class ids, (N, F) penultimate features
    >>> frechet_distance(feats_real, feats)  # 0 for identical statistics
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

__all__ = [
    "ImageClassifier",
    "train_image_classifier",
    "classify",
    "frechet_distance",
    "sample_quality",
    "quality_caption",
]


class ImageClassifier(nn.Module):
    """Three conv-BN-ReLU stages, each halving the resolution, then global average pooling (the
    ``features``) and a linear head.

    Args:
        num_classes: classes C (>= 2).
        in_channels: channels of the images (3 for RGB).
        channels: width of the first stage (doubled at each of the next two).

    Shape:
        ``forward(x (B, in_channels, H, W) in [0, 1])`` -> logits ``(B, C)``;
        ``features(x)`` -> ``(B, 4 * channels)``.
    """

    def __init__(self, num_classes: int, *, in_channels: int = 3, channels: int = 16) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        layers: list[nn.Module] = []
        ch = in_channels
        for width in (channels, 2 * channels, 4 * channels):
            layers += [nn.Conv2d(ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            layers.append(nn.MaxPool2d(2, ceil_mode=True))  # any size: 1 x 1 stays 1 x 1
            ch = width
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(ch, num_classes)
        self.num_classes = num_classes

    def features(self, x: Tensor) -> Tensor:
        return self.net(x * 2 - 1).mean((2, 3))  # (B, F)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, C)


def train_image_classifier(
    dataset: Dataset,
    *,
    num_classes: int,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 2e-3,
    channels: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ImageClassifier:
    """Train an :class:`ImageClassifier` on real images (Adam, cosine-decayed learning rate).

    Args:
        dataset: items ``(image (C, H, W) in [0, 1], label)``, read by index.
        num_classes: classes C; every label must lie in ``[0, C)``.
        steps, batch_size, lr: the optimisation (batches drawn at random with replacement).
        channels: width of the network.
        seed: seeds the initialisation and the batches (the global RNG is left as it was).
        device: where to train.
        progress: show a bar over the steps.

    Returns:
        The classifier in eval mode.
    """
    if len(dataset) == 0:
        raise ValueError("the classifier's training set is empty")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        in_channels = int(dataset[0][0].shape[0])
        clf = ImageClassifier(num_classes, in_channels=in_channels, channels=channels).to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    clf.train()
    for _ in tqdm(range(steps), desc="classifier", disable=not progress, leave=False):
        idx = torch.randint(len(dataset), (min(batch_size, len(dataset)),), generator=gen)
        items = [dataset[int(i)] for i in idx]
        x = torch.stack([it[0] for it in items]).to(device)
        y = torch.as_tensor([int(it[1]) for it in items], device=device)
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got {y.tolist()}")
        loss = F.cross_entropy(clf(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return clf.eval()


@torch.no_grad()
def classify(
    clf: ImageClassifier, images: Tensor, *, batch_size: int = 256
) -> tuple[Tensor, Tensor]:
    """Class ids ``(N,)`` and penultimate features ``(N, F)`` of images ``(N, C, H, W)`` in
    [0, 1] (both on the CPU)."""
    clf.eval()
    device = clf.head.weight.device
    preds, feats = [], []
    for start in range(0, len(images), batch_size):
        f = clf.features(images[start : start + batch_size].to(device))
        preds.append(clf.head(f).argmax(1).cpu())
        feats.append(f.cpu())
    return torch.cat(preds), torch.cat(feats)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two sets of feature vectors:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    The trace of the matrix square root is computed in float64 as the sum of the square roots of
    the eigenvalues of the symmetric ``S_a^(1/2) S_b S_a^(1/2)`` (similar to ``S_a S_b``), which
    stays real and finite where a general ``sqrtm`` of the non-symmetric product can turn
    complex from rounding.

    Args:
        a: ``(N, F)`` features, N >= 2.
        b: ``(M, F)`` features, M >= 2.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"expected (N, F) and (M, F) features, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 vectors in each set, got {len(a)} and {len(b)}")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    dist = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return float(dist.clamp_min(0))


def sample_quality(
    clf: ImageClassifier,
    real: Tensor,
    labels: Tensor,
    recons: Tensor,
    samples: Tensor,
    sample_labels: Tensor | None,
) -> dict:
    """The classifier's accuracy on real test images, their reconstructions and the samples
    (against the class each was drawn for), and Frechet distances in its feature space from the
    real test images to the samples (and, for scale, to the reconstructions).

    Args:
        clf: the classifier, trained on real training images.
        real: real test images ``(N, C, H, W)`` in [0, 1]; labels: their classes ``(N,)``.
        recons: their reconstructions, in the same order.
        samples: prior samples ``(M, C, H, W)``; sample_labels: the class each was drawn for
            ``(M,)``, or None for an unconditional prior (its accuracy is then not defined).
    """
    real_pred, real_feat = classify(clf, real)
    recon_pred, recon_feat = classify(clf, recons)
    sample_pred, sample_feat = classify(clf, samples)
    out = {
        "classifier_real_accuracy": float((real_pred == labels).float().mean()),
        "classifier_recon_accuracy": float((recon_pred == labels).float().mean()),
    }
    if sample_labels is None:
        na = "n/a: unconditional prior (no class to match)"
        out.update(classifier_sample_accuracy=na, sample_over_recon_accuracy=na)
    else:
        acc = float((sample_pred == sample_labels).float().mean())
        out["classifier_sample_accuracy"] = acc
        recon_acc = out["classifier_recon_accuracy"]
        out["sample_over_recon_accuracy"] = (
            acc / recon_acc if recon_acc else "n/a: no reconstruction classified right"
        )
    few = "n/a: needs at least 2 images in each set"
    out["classifier_frechet"] = (
        frechet_distance(real_feat, sample_feat) if min(len(real), len(samples)) >= 2 else few
    )
    out["classifier_frechet_recon"] = (
        frechet_distance(real_feat, recon_feat) if len(real) >= 2 else few
    )
    out["classifier_scored_samples"] = len(samples)
    return out


def quality_caption(m: dict) -> str:
    """The sample-quality figures, in words, for the report beside the sample grid."""
    acc, ratio = m["classifier_sample_accuracy"], m["sample_over_recon_accuracy"]
    said = (
        f"{acc:.1%} of {m['classifier_scored_samples']} samples are classified as the class they "
        f"were drawn for"
        + (f" ({ratio:.2f}x the reconstructions')" if isinstance(ratio, float) else "")
        if isinstance(acc, float)
        else "sample class accuracy: not defined for an unconditional prior"
    )
    return (
        f"A classifier trained on the real training images: {m['classifier_real_accuracy']:.1%} "
        f"on real test images, {m['classifier_recon_accuracy']:.1%} on their reconstructions; "
        f"{said}. Frechet distance in its feature space (not Inception FID) from real test "
        f"images: samples {_figure(m['classifier_frechet'])}, reconstructions "
        f"{_figure(m['classifier_frechet_recon'])}."
    )


def _figure(value: float | str) -> str:
    return f"{value:.3g}" if isinstance(value, float) else value
