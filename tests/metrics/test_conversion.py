"""Voice-conversion scoring: classifiers on separable synthetic audio, rates, validation."""

import math

import pytest
import torch

from vqkit.metrics.conversion import (
    IGNORE,
    AudioClassifier,
    LogMel,
    accuracy,
    conversion_scores,
    predict,
    train_classifier,
)

SR = 8000
FREQS = (300.0, 900.0, 2000.0)  # one "speaker" (or one "phone") per tone


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def tone(freq: float, seconds: float, gen: torch.Generator) -> torch.Tensor:
    """A tone with a random phase, amplitude and slight detuning, plus noise: ``(T,)``."""
    t = torch.arange(int(seconds * SR)) / SR
    detune = 1 + 0.03 * (torch.rand((), generator=gen) - 0.5)
    phase = 2 * math.pi * torch.rand((), generator=gen)
    amp = 0.2 + 0.3 * torch.rand((), generator=gen)
    noise = 0.02 * torch.randn(len(t), generator=gen)
    return amp * torch.sin(2 * math.pi * freq * detune * t + phase) + noise


def tone_set(n: int, seed: int) -> tuple[list[torch.Tensor], list[int]]:
    gen = torch.Generator().manual_seed(seed)
    labels = [i % len(FREQS) for i in range(n)]
    lengths = [0.15 + 0.1 * float(torch.rand((), generator=gen)) for _ in labels]
    return [tone(FREQS[y], s, gen) for y, s in zip(labels, lengths)], labels


def test_log_mel_frames():
    mel = LogMel(SR)
    assert mel.hop == 80 and mel.frame_rate == 100.0
    out = mel(torch.zeros(2, 800))
    assert out.shape == (2, 40, mel.num_frames(800)) == (2, 40, 11)


def test_utterance_classifier_separates_tones():
    waves, labels = tone_set(30, seed=0)
    clf = train_classifier(
        waves, labels, sample_rate=SR, num_classes=3, steps=40, batch_size=16, channels=16
    )
    assert isinstance(clf, AudioClassifier) and not clf.training
    test_waves, test_labels = tone_set(12, seed=1)
    preds = predict(clf, test_waves)
    assert all(p.dim() == 0 for p in preds)
    assert accuracy(preds, test_labels) >= 0.9
    # Scoring conversions: right targets score like the accuracy, wrong ones score 0.
    right = conversion_scores(clf, clf, test_waves, test_labels, test_labels)
    assert right["target_speaker_rate"] == right["content_kept_rate"] >= 0.9
    wrong = [(y + 1) % 3 for y in test_labels]
    scores = conversion_scores(clf, clf, test_waves, wrong, test_labels)
    assert scores["target_speaker_rate"] <= 0.1


def test_frame_classifier_follows_label_changes():
    """Each waveform switches tone half way; frame labels follow the switch."""
    gen = torch.Generator().manual_seed(0)
    mel = LogMel(SR)

    def item(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        wave = torch.cat([tone(FREQS[a], 0.2, gen), tone(FREQS[b], 0.2, gen)])
        frames = mel.num_frames(len(wave))
        labels = torch.tensor([a if (f * mel.hop) < len(wave) // 2 else b for f in range(frames)])
        labels[frames // 2 - 1 : frames // 2 + 1] = IGNORE  # the frames straddling the switch
        return wave, labels

    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    train = [item(a, b) for a, b in pairs * 3]
    clf = train_classifier(
        [w for w, _ in train],
        [y for _, y in train],
        sample_rate=SR,
        num_classes=3,
        frame_level=True,
        steps=60,
        batch_size=12,
        channels=16,
    )
    test = [item(a, b) for a, b in pairs]
    preds = predict(clf, [w for w, _ in test])
    assert [p.shape for p in preds] == [y.shape for _, y in test]
    assert accuracy(preds, [y for _, y in test]) >= 0.85


def test_accuracy_leaves_out_ignored_frames():
    preds = [torch.tensor([0, 1, 2]), torch.tensor(1)]
    labels = [torch.tensor([0, IGNORE, 1]), 1]
    assert accuracy(preds, labels) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no labelled"):
        accuracy([torch.tensor([0])], [torch.tensor([IGNORE])])


def test_bad_labels_raise():
    waves, labels = tone_set(4, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        train_classifier(waves, labels, sample_rate=SR, num_classes=2, steps=1)
    with pytest.raises(ValueError, match="one each"):
        train_classifier(waves, labels[:2], sample_rate=SR, num_classes=3, steps=1)
    with pytest.raises(ValueError, match="1-D"):
        train_classifier(waves, labels, sample_rate=SR, num_classes=3, frame_level=True, steps=1)
    with pytest.raises(ValueError, match="num_classes"):
        AudioClassifier(1, SR)
