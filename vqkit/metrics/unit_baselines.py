"""Training-free baselines for unit discovery: k-means over frame features, to put beside the codes
of a model at the same K and code rate.

A baseline is a list of per-utterance ``(T_i, D)`` feature arrays, one row per code frame: build
them with :func:`mfcc_frames`, :func:`per_code` (frames stacked to the code rate),
:func:`with_context` and :func:`speaker_normalise`, then :func:`kmeans_units` fits k-means on the
training split's rows and assigns the held-out ones, giving code ids and centres that
:mod:`vqkit.metrics.units` scores exactly like a model's codes.

Example:
    >>> rng = np.random.default_rng(0)
    >>> train = [rng.normal(size=(50, 4)) for _ in range(3)]
    >>> codes, centres = kmeans_units(train, train[:1], num_codes=8)
    >>> codes[0].shape, centres.shape
    ((50,), (8, 4))
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import librosa
import numpy as np
from sklearn.cluster import KMeans

__all__ = ["kmeans_units", "mfcc_frames", "per_code", "speaker_normalise", "with_context"]


def mfcc_frames(
    wave: np.ndarray,
    sample_rate: int,
    *,
    hop: int,
    n_mfcc: int = 13,
    n_mels: int = 40,
    window_ms: float = 25.0,
) -> np.ndarray:
    """``(T,)`` float waveform -> ``(1 + T // hop, n_mfcc)`` MFCCs (librosa; frame f centred on
    sample ``f * hop``, a ``window_ms`` Hann window, ``n_mels`` mel bands)."""
    n_fft = int(round(window_ms * sample_rate / 1000))
    mfcc = librosa.feature.mfcc(
        y=np.asarray(wave, dtype=np.float32),
        sr=sample_rate,
        n_mfcc=n_mfcc,
        n_fft=n_fft,
        hop_length=hop,
        n_mels=n_mels,
        fmax=sample_rate / 2,
    )
    return mfcc.T.astype(np.float64)


def per_code(frames: np.ndarray, frames_per_code: int, num_codes: int) -> np.ndarray:
    """``(F, D)`` frames -> ``(num_codes, frames_per_code * D)``: code i gets frames
    ``[i * frames_per_code, (i + 1) * frames_per_code)`` side by side (the last frame repeated
    where the frames run out)."""
    need = frames_per_code * num_codes
    if len(frames) == 0:
        raise ValueError("no frames to stack")
    if len(frames) < need:
        frames = np.concatenate([frames, np.repeat(frames[-1:], need - len(frames), axis=0)])
    return frames[:need].reshape(num_codes, -1)


def with_context(x: np.ndarray, width: int = 1) -> np.ndarray:
    """``(T, D)`` -> ``(T, (2 * width + 1) * D)``: each row beside its ``width`` neighbours on each
    side (the ends repeated), earliest first."""
    padded = np.concatenate([np.repeat(x[:1], width, 0), x, np.repeat(x[-1:], width, 0)])
    return np.concatenate([padded[k : k + len(x)] for k in range(2 * width + 1)], axis=1)


def speaker_normalise(
    feats: Sequence[np.ndarray],
    speakers: Sequence[Hashable],
    *,
    fit_feats: Sequence[np.ndarray] | None = None,
    fit_speakers: Sequence[Hashable] | None = None,
) -> list[np.ndarray]:
    """Each utterance's ``(T_i, D)`` rows minus its speaker's mean, over its speaker's deviation,
    per dimension. A speaker's statistics come from their utterances in ``fit_feats`` (e.g. the
    training split) when they have any there, else from their utterances in ``feats``."""

    def stats(xs, spks) -> dict:
        rows = defaultdict(list)
        for x, s in zip(xs, spks):
            rows[s].append(x)
        out = {}
        for s, parts in rows.items():
            allx = np.concatenate(parts)
            out[s] = allx.mean(0), np.maximum(allx.std(0), 1e-6)
        return out

    own = stats(feats, speakers)
    fit = {} if fit_feats is None else stats(fit_feats, fit_speakers)
    out = []
    for x, s in zip(feats, speakers):
        mean, std = fit.get(s, own[s])
        out.append((x - mean) / std)
    return out


def kmeans_units(
    fit_feats: Sequence[np.ndarray],
    feats: Sequence[np.ndarray],
    *,
    num_codes: int,
    seed: int = 0,
    max_fit_frames: int | None = 50_000,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Fit k-means (sklearn ``KMeans``, seeded, k-means++ start) on the rows of ``fit_feats`` and
    assign each row of ``feats`` to its nearest centre.

    Args:
        fit_feats: per-utterance ``(T_i, D)`` rows to fit on (the training split).
        feats: per-utterance ``(T_j, D)`` rows to assign (the held-out split).
        num_codes: K.
        seed: seeds the subsample and k-means.
        max_fit_frames: fit on at most this many rows, drawn uniformly without replacement
            (None: all); assignment always covers every row of ``feats``.

    Returns:
        ``(codes, centres)``: per-utterance ``(T_j,)`` int64 code ids and ``(K, D)`` centres.
    """
    x = np.concatenate([np.asarray(f, dtype=np.float64) for f in fit_feats])
    if len(x) < num_codes:
        raise ValueError(f"k-means with K={num_codes} needs at least K frames, got {len(x)}")
    rng = np.random.default_rng(seed)
    if max_fit_frames is not None and len(x) > max_fit_frames:
        x = x[np.sort(rng.choice(len(x), max_fit_frames, replace=False))]
    km = KMeans(n_clusters=num_codes, n_init=1, random_state=seed).fit(x)
    codes = [km.predict(np.asarray(f, dtype=np.float64)).astype(np.int64) for f in feats]
    return codes, km.cluster_centers_
