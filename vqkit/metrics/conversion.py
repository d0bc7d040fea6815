"""Voice-conversion scoring: small classifiers trained on real recordings judge converted audio.

A conversion should sound like the *target* speaker and keep the *source* content. Two
:class:`AudioClassifier` s trained on real training recordings answer both questions:

* a speaker classifier (one label per utterance): the **target-speaker rate** is the fraction of
  conversions it assigns to the target speaker;
* a content classifier: per utterance (FSDD: the spoken digit) or per frame (phones, when the
  data has phone alignments; conversion keeps the timing, so the source's phone labels still
  apply): the **content-kept rate** is its accuracy on conversions against the source's labels.

Both classifiers read log-mel frames (``torchaudio.transforms.MelSpectrogram``), normalised per mel
band with statistics of their training data (not per utterance, which would remove the speaker).

Example:
    >>> clf = train_classifier(waves, speakers, sample_rate=8000, num_classes=4, steps=200)
    >>> predict(clf, converted)  # one class id per waveform
    >>> conversion_scores(speaker_clf, digit_clf, converted, targets, digits)
    {'target_speaker_rate': 0.9, 'content_kept_rate': 0.85}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vqkit.audio import LogMel

__all__ = [
    "LogMel",
    "AudioClassifier",
    "train_classifier",
    "predict",
    "accuracy",
    "conversion_scores",
]

IGNORE = -100  # frame label of padding (F.cross_entropy's ignore_index)


class AudioClassifier(nn.Module):
    """Log-mel -> band normalisation -> dilated conv stack -> per-frame or per-utterance logits.

    Args:
        num_classes: classes C.
        sample_rate: rate of the waveforms it reads.
        frame_level: one prediction per log-mel frame (phones) instead of per utterance.
        channels: width of the conv stack.
        n_mels: mel bands.

    Shape:
        ``forward(wav (B, T), lengths (B,) or None)`` -> ``(B, C)``, or ``(B, C, F)`` frame-level.
    """

    def __init__(
        self,
        num_classes: int,
        sample_rate: int,
        *,
        frame_level: bool = False,
        channels: int = 64,
        n_mels: int = 40,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes, self.frame_level = num_classes, frame_level
        self.features = LogMel(sample_rate, n_mels=n_mels)
        self.register_buffer("mean", torch.zeros(n_mels, 1))
        self.register_buffer("std", torch.ones(n_mels, 1))
        layers: list[nn.Module] = []
        ch = n_mels
        for dilation in (1, 2, 4):  # receptive field 29 frames (~0.3 s at 100 Hz)
            layers += [nn.Conv1d(ch, channels, 5, padding=2 * dilation, dilation=dilation)]
            layers += [nn.BatchNorm1d(channels), nn.ReLU()]
            ch = channels
        self.net = nn.Sequential(*layers)
        self.head = nn.Conv1d(channels, num_classes, 1) if frame_level else None
        self.pooled_head = None if frame_level else nn.Linear(2 * channels, num_classes)

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    def frame_mask(self, lengths: Tensor, num_frames: int) -> Tensor:
        """``(B, F)`` True at frames inside each waveform's length."""
        valid = (lengths // self.features.hop + 1).clamp(max=num_frames)  # (B,)
        return torch.arange(num_frames, device=lengths.device)[None] < valid[:, None]

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        feats = (self.features(wav) - self.mean) / self.std  # (B, n_mels, F)
        h = self.net(feats)  # (B, channels, F)
        if self.frame_level:
            return self.head(h)  # (B, C, F)
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[-1], device=wav.device)
        mask = self.frame_mask(lengths, h.shape[-1])[:, None]  # (B, 1, F)
        mean = (h * mask).sum(-1) / mask.sum(-1).clamp_min(1)
        peak = h.masked_fill(~mask, float("-inf")).amax(-1)
        return self.pooled_head(torch.cat([mean, peak], dim=1))  # (B, C)


def _pad_batch(waves: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Waveforms of any lengths ``(T_i,)`` or ``(1, T_i)`` -> zero-padded ``(B, T)``, lengths."""
    flat = [w.reshape(-1).float() for w in waves]
    lengths = torch.tensor([len(w) for w in flat])
    out = torch.zeros(len(flat), int(lengths.max()))
    for i, w in enumerate(flat):
        out[i, : len(w)] = w
    return out, lengths


def _check_labels(waves, labels, frame_level: bool, num_classes: int) -> None:
    if len(waves) != len(labels) or not waves:
        raise ValueError(f"got {len(waves)} waveforms and {len(labels)} labels; give one each")
    for i, y in enumerate(labels):
        y = torch.as_tensor(y)
        if frame_level and y.dim() != 1:
            raise ValueError(f"frame-level labels of item {i} must be 1-D (frames,), got {y.shape}")
        if not frame_level and y.dim() != 0:
            raise ValueError(f"utterance labels must be one int each; item {i} has {y.shape}")
        valid = y[y != IGNORE]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
            raise ValueError(f"labels of item {i} must lie in [0, {num_classes}), got {y.tolist()}")


def _frame_targets(labels, num_frames: int) -> Tensor:
    out = torch.full((len(labels), num_frames), IGNORE, dtype=torch.long)
    for i, y in enumerate(labels):
        y = torch.as_tensor(y, dtype=torch.long)[:num_frames]
        out[i, : len(y)] = y
    return out


def train_classifier(
    waves: Sequence[Tensor],
    labels: Sequence,
    *,
    sample_rate: int,
    num_classes: int,
    frame_level: bool = False,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 2e-3,
    crop: int | None = None,
    channels: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: str | None = None,
) -> AudioClassifier:
    """Train an :class:`AudioClassifier` on real recordings (Adam, a few hundred steps).

    Args:
        waves: waveforms ``(T_i,)`` or ``(1, T_i)`` in [-1, 1].
        labels: one int per waveform, or (``frame_level``) one int per log-mel frame
            (``clf.features.num_frames(T_i)`` of them; :data:`IGNORE` skips a frame).
        sample_rate: their rate.
        num_classes: classes C.
        frame_level: per-frame classification.
        steps, batch_size, lr: the optimisation.
        crop: train on random crops of at most this many samples (frame labels cropped alike),
            which bounds the cost per step for long utterances.
        channels: width of the network.
        seed: seeds the initialisation and the batches.
        device: where to train.
        progress: a progress bar over the steps, with this description (None: none).

    Returns:
        The classifier in eval mode.
    """
    _check_labels(waves, labels, frame_level, num_classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = AudioClassifier(
            num_classes, sample_rate, frame_level=frame_level, channels=channels
        ).to(device)
    hop = clf.features.hop
    with torch.no_grad():  # band statistics of the training features
        feats = torch.cat([clf.features(w.reshape(1, -1).float().to(device))[0] for w in waves], 1)
        clf.mean.copy_(feats.mean(1, keepdim=True))
        clf.std.copy_(feats.std(1, keepdim=True).clamp_min(1e-3))
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    clf.train()
    for _ in tqdm(range(steps), desc=progress, disable=progress is None, leave=False):
        idx = torch.randint(len(waves), (min(batch_size, len(waves)),), generator=gen).tolist()
        batch_w, batch_y = [], []
        for i in idx:
            w, y = waves[i].reshape(-1), labels[i]
            if crop is not None and len(w) > crop:
                start = int(torch.randint(0, (len(w) - crop) // hop + 1, (1,), generator=gen)) * hop
                w = w[start : start + crop]
                if frame_level:
                    first = start // hop
                    y = torch.as_tensor(y)[first : first + clf.features.num_frames(len(w))]
            batch_w.append(w)
            batch_y.append(y)
        x, lengths = _pad_batch(batch_w)
        x, lengths = x.to(device), lengths.to(device)
        logits = clf(x, lengths)
        if frame_level:
            target = _frame_targets(batch_y, logits.shape[-1]).to(device)
            target[~clf.frame_mask(lengths, logits.shape[-1])] = IGNORE
            loss = F.cross_entropy(logits, target, ignore_index=IGNORE)
        else:
            loss = F.cross_entropy(logits, torch.as_tensor(batch_y, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval()


@torch.no_grad()
def predict(clf: AudioClassifier, waves: Sequence[Tensor], *, batch_size: int = 32) -> list[Tensor]:
    """Class ids of each waveform: a 0-d tensor per utterance, or ``(F_i,)`` per frame."""
    clf.eval()
    device = clf.mean.device
    out: list[Tensor] = []
    for start in range(0, len(waves), batch_size):
        chunk = waves[start : start + batch_size]
        x, lengths = _pad_batch(chunk)
        logits = clf(x.to(device), lengths.to(device)).cpu()
        for i, w in enumerate(chunk):
            if clf.frame_level:
                out.append(logits[i].argmax(0)[: clf.features.num_frames(w.numel())])
            else:
                out.append(logits[i].argmax())
    return out


def accuracy(predictions: Sequence[Tensor], labels: Sequence) -> float:
    """Fraction of correct predictions (per utterance, or per frame over all frames, frames
    labelled :data:`IGNORE` left out)."""
    if len(predictions) != len(labels) or not predictions:
        raise ValueError(f"got {len(predictions)} predictions and {len(labels)} labels")
    right = total = 0
    for p, y in zip(predictions, labels):
        y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
        p = p.reshape(-1)[: len(y)]
        y = y[: len(p)]
        keep = y != IGNORE
        right += int((p[keep] == y[keep]).sum())
        total += int(keep.sum())
    if total == 0:
        raise ValueError("no labelled items to score")
    return right / total


def conversion_scores(
    speaker_clf: AudioClassifier,
    content_clf: AudioClassifier,
    converted: Sequence[Tensor],
    target_speakers: Sequence[int],
    contents: Sequence,
) -> dict[str, float]:
    """Target-speaker rate and content-kept rate of converted waveforms.

    Args:
        speaker_clf: utterance-level speaker classifier.
        content_clf: utterance- or frame-level content classifier.
        converted: converted waveforms ``(T_i,)``.
        target_speakers: speaker id each conversion was made for.
        contents: the *source* content label(s) of each conversion (an int, or frame labels).
    """
    return {
        "target_speaker_rate": accuracy(predict(speaker_clf, converted), target_speakers),
        "content_kept_rate": accuracy(predict(content_clf, converted), contents),
    }
