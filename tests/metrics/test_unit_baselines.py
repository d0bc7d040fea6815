"""The k-means baselines of unit discovery: feature stacking, context, per-speaker
normalisation, and k-means that recovers clusters it is given."""

import numpy as np
import pytest

from vqkit.metrics.unit_baselines import (
    kmeans_units,
    mfcc_frames,
    per_code,
    speaker_normalise,
    with_context,
)
from vqkit.metrics.units import pnmi


def test_per_code_stacks_frames_and_repeats_the_last():
    frames = np.arange(10.0).reshape(5, 2)  # frames [0,1], [2,3], ... [8,9]
    out = per_code(frames, 2, 3)  # the third code needs frame 5: frame 4 repeated
    assert out.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 8, 9]]
    assert per_code(frames, 1, 2).tolist() == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="no frames"):
        per_code(np.zeros((0, 2)), 2, 1)


def test_with_context_puts_neighbours_beside_each_row():
    x = np.array([[1.0], [2.0], [3.0]])
    assert with_context(x).tolist() == [[1, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert with_context(x, 2).shape == (3, 5)


def test_speaker_normalise_uses_the_fit_statistics_of_known_speakers():
    rng = np.random.default_rng(0)
    fit = [rng.normal(3.0, 2.0, size=(400, 2)), rng.normal(-1.0, 0.5, size=(300, 2))]
    fit_spk = ["a", "b"]
    normed = speaker_normalise(fit, fit_spk)
    for x in normed:
        assert np.allclose(x.mean(0), 0, atol=1e-9) and np.allclose(x.std(0), 1)
    # "a" is read with its fit statistics; "c", unknown there, with its own.
    x_a, x_c = np.full((5, 2), 3.0 + 2.0), rng.normal(10.0, 3.0, size=(50, 2))
    out_a, out_c = speaker_normalise([x_a, x_c], ["a", "c"], fit_feats=fit, fit_speakers=fit_spk)
    assert np.allclose(out_a, (x_a - fit[0].mean(0)) / fit[0].std(0))
    assert np.allclose(out_c.mean(0), 0, atol=1e-9)


def test_kmeans_units_recovers_separated_clusters_on_held_out_rows():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 5)) * 10

    def draw(n):
        labels = rng.integers(0, 6, size=n)
        return centres[labels] + rng.normal(size=(n, 5)) * 0.1, labels

    fit = [draw(200)[0] for _ in range(3)]
    held = [draw(80) for _ in range(2)]
    codes, found = kmeans_units(fit, [x for x, _ in held], num_codes=6, max_fit_frames=300)
    assert found.shape == (6, 5) and [c.shape for c in codes] == [(80,), (80,)]
    assert pnmi(codes, [lab for _, lab in held]) == pytest.approx(1.0)  # one code per cluster
    again, _ = kmeans_units(fit, [x for x, _ in held], num_codes=6, max_fit_frames=300)
    assert all(np.array_equal(a, b) for a, b in zip(codes, again))  # seeded
    with pytest.raises(ValueError, match="K=6 needs at least K frames"):
        kmeans_units([np.zeros((4, 5))], [np.zeros((1, 5))], num_codes=6)


def test_mfcc_frames_are_centred_every_hop():
    sr, hop = 8000, 80
    wave = np.zeros(8000, dtype=np.float32)
    wave[4000:] = np.sin(2 * np.pi * 440 * np.arange(4000) / sr)  # a tone from 0.5 s on
    mfcc = mfcc_frames(wave, sr, hop=hop)
    assert mfcc.shape == (1 + 8000 // hop, 13)
    energy = mfcc[:, 0]  # c0 follows the log energy
    assert energy[4000 // hop + 3] > energy[4000 // hop - 3] + 10
