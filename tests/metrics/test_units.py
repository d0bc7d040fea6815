"""Unit-discovery metrics on hand-made examples with known answers."""

import math

import numpy as np
import pytest
import torch

from vqkit.metrics.units import (
    abx_error,
    chance_accuracy,
    cluster_purity,
    code_label_accuracy,
    code_to_label,
    pnmi,
    purity,
)


def test_perfect_mapping_scores_one():
    # Two codes per phone: still a perfect (many-to-one) mapping.
    codes = [np.array([3, 3, 7, 9, 9]), torch.tensor([7, 12, 12])]
    labels = [np.array(["a", "a", "b", "c", "c"]), np.array(["b", "a", "a"])]
    assert code_label_accuracy(codes, labels) == 1.0
    assert purity(codes, labels) == 1.0
    assert pnmi(codes, labels) == pytest.approx(1.0)
    assert code_to_label(codes, labels) == {3: "a", 7: "b", 9: "c", 12: "a"}
    # Each label spread over codes: cluster purity counts only the best code per label.
    assert cluster_purity(codes, labels) == pytest.approx((2 + 2 + 2) / 8)


def test_hand_counted_accuracy_purity_pnmi():
    # code 0: a a a b ; code 1: b b a
    codes = [np.array([0, 0, 0, 0, 1, 1, 1])]
    labels = [np.array(["a", "a", "a", "b", "b", "b", "a"])]
    assert code_label_accuracy(codes, labels) == pytest.approx(5 / 7)
    assert purity(codes, labels) == pytest.approx(5 / 7)
    assert chance_accuracy(labels) == pytest.approx(4 / 7)
    # I(L; C) from the joint table [[3, 1], [1, 2]] / 7.
    joint = np.array([[3, 1], [1, 2]]) / 7
    pc, pl = joint.sum(1), joint.sum(0)
    mi = sum(
        joint[i, j] * math.log(joint[i, j] / (pc[i] * pl[j])) for i in range(2) for j in range(2)
    )
    h = -sum(p * math.log(p) for p in pl)
    assert pnmi(codes, labels) == pytest.approx(mi / h)


def test_independent_codes_have_pnmi_near_zero_and_chance_accuracy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=50_000)
    codes = rng.integers(0, 8, size=50_000)
    assert pnmi(codes, labels) < 0.005
    assert code_label_accuracy(codes, labels) == pytest.approx(chance_accuracy(labels), abs=0.01)


def test_mapping_fit_on_one_split_applied_to_another():
    fit_codes, fit_labels = [np.array([0, 0, 1, 1, 1])], [np.array(["a", "a", "b", "b", "a"])]
    # code 2 was never seen: it falls back to the fit data's most frequent label ("a": 3 of 5).
    codes, labels = [np.array([0, 1, 2, 1])], [np.array(["a", "a", "a", "a"])]
    acc = code_label_accuracy(codes, labels, fit_codes=fit_codes, fit_labels=fit_labels)
    assert acc == pytest.approx(2 / 4)  # 0->a ok, 1->b wrong, 2->a ok, 1->b wrong
    # Fitting on the evaluation data itself gives the higher, optimistic number.
    assert code_label_accuracy(codes, labels) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both"):
        code_label_accuracy(codes, labels, fit_codes=fit_codes)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="utterance 1: 2 codes but 3 labels"):
        code_label_accuracy(
            [np.array([0]), np.array([0, 1])], [np.array(["a"]), np.array(["a", "b", "c"])]
        )
    with pytest.raises(ValueError, match="integers"):
        purity([np.array([0.5, 1.0])], [np.array(["a", "b"])])
    with pytest.raises(ValueError, match="single value"):
        pnmi([np.array([0, 1])], [np.array(["a", "a"])])
    with pytest.raises(ValueError, match="2 utterances but labels for 1"):
        pnmi([np.array([0]), np.array([1])], [np.array(["a"])])


# ----------------------------------------------------------------------------- ABX


def _clustered_segments(rng, separated: bool, n_per=6, speakers=("s1", "s2"), labels="abc"):
    centres = {lab: rng.normal(size=8) * 5 for lab in labels}
    segs, labs, spks = [], [], []
    for spk in speakers:
        for lab in labels:
            for _ in range(n_per):
                t = int(rng.integers(3, 9))
                mean = centres[lab] if separated else np.zeros(8)
                segs.append(mean + rng.normal(size=(t, 8)) * (0.3 if separated else 1.0))
                labs.append(lab)
                spks.append(spk)
    return segs, labs, spks


@pytest.mark.parametrize("within", [True, False])
def test_abx_separated_clusters_near_zero(within):
    segs, labs, spks = _clustered_segments(np.random.default_rng(1), separated=True)
    err = abx_error(segs, labs, spks, within_speaker=within, num_triples=500)
    assert err < 0.02
    assert (
        abx_error(segs, labs, spks, within_speaker=within, metric="euclidean", num_triples=300)
        < 0.02
    )


@pytest.mark.parametrize("within", [True, False])
def test_abx_random_features_near_half(within):
    segs, labs, spks = _clustered_segments(np.random.default_rng(2), separated=False, n_per=10)
    err = abx_error(segs, labs, spks, within_speaker=within, num_triples=1500, seed=1)
    assert 0.42 < err < 0.58


def test_abx_codes_mismatch_and_codebook_and_ties():
    # Code sequences: each label has its own code, except noise frames.
    rng = np.random.default_rng(3)
    segs, labs, spks = [], [], []
    for spk in ("s1", "s2"):
        for lab, code in (("a", 0), ("b", 1), ("c", 2)):
            for _ in range(5):
                seq = np.full(int(rng.integers(3, 7)), code)
                seq[rng.integers(len(seq))] = 3  # one noisy frame
                segs.append(seq)
                labs.append(lab)
                spks.append(spk)
    assert abx_error(segs, labs, spks, within_speaker=False, num_triples=400) < 0.05
    book = np.eye(4)
    assert abx_error(segs, labs, spks, within_speaker=True, codebook=book, num_triples=400) < 0.05
    # All segments the same code: every distance ties, and ties count half.
    same = [np.zeros(4, dtype=np.int64) for _ in segs]
    assert abx_error(same, labs, spks, within_speaker=True, num_triples=200) == 0.5


def test_abx_dtw_handles_time_warping():
    # X is A slowed down 3x: DTW distance 0, while B differs in every frame.
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x = np.repeat(a, 3, axis=0)
    b = np.array([[-1.0, 0.0], [0.0, -1.0]])
    err = abx_error(
        [a, b, x, b * 2],
        ["p", "q", "p", "q"],
        ["s", "s", "s", "s"],
        within_speaker=True,
        num_triples=50,
    )
    # Only X = x (A = a) or X = a (A = x) ... and X = b-like triples; all are decided correctly.
    assert err == 0.0


def test_abx_errors():
    segs = [np.zeros((2, 3))] * 3
    with pytest.raises(ValueError, match="differ in length"):
        abx_error(segs, ["a", "b"], ["s", "s", "s"], within_speaker=True)
    with pytest.raises(ValueError, match="no within-speaker ABX triple"):
        abx_error(segs, ["a", "b", "c"], ["s", "s", "s"], within_speaker=True)
    with pytest.raises(ValueError, match="no across-speaker ABX triple"):
        abx_error(segs, ["a", "a", "b"], ["s", "s", "s"], within_speaker=False)
    with pytest.raises(ValueError, match="segment 1"):
        abx_error([np.zeros((2, 3)), np.zeros((0, 3))], ["a", "b"], ["s", "s"], within_speaker=True)
    with pytest.raises(ValueError, match="codebook"):
        abx_error(
            [np.array([0, 5]), np.array([1])] * 2,
            ["a", "b", "a", "b"],
            ["s"] * 4,
            within_speaker=True,
            codebook=np.eye(3),
        )


def _all_paths(n, m):
    """Every monotonic alignment path from (0, 0) to (n-1, m-1)."""
    if (n, m) == (1, 1):
        return [[(0, 0)]]
    out = []
    for di, dj in ((1, 1), (1, 0), (0, 1)):
        if n - di >= 1 and m - dj >= 1:
            out += [p + [(n - 1, m - 1)] for p in _all_paths(n - di, m - dj)]
    return out


def test_dtw_average_matches_brute_force():
    from vqkit.metrics.units import _dtw_average

    rng = np.random.default_rng(4)
    costs = [rng.random((n, m)) for n, m in ((1, 1), (1, 4), (3, 2), (4, 5), (5, 3))]
    got = _dtw_average(costs)
    for c, value in zip(costs, got):
        paths = _all_paths(*c.shape)
        best = min(paths, key=lambda p: sum(c[i, j] for i, j in p))
        assert value == pytest.approx(sum(c[i, j] for i, j in best) / len(best))


@pytest.mark.parametrize("within", [True, False])
def test_abx_triples_respect_label_and_speaker_rules(within):
    from vqkit.metrics.units import _sample_triples

    rng = np.random.default_rng(5)
    labels = list(rng.choice(list("abcd"), size=60))
    speakers = list(rng.choice(["s1", "s2", "s3"], size=60))
    triples = _sample_triples(labels, speakers, within, 300, rng)
    assert len(triples) == 300
    for a, b, x in triples:
        assert a != x and labels[a] == labels[x] != labels[b]
        assert speakers[a] == speakers[b]
        assert (speakers[x] == speakers[a]) is within


# ----------------------------------------------------------------------------- cross-checks


def test_pnmi_equals_mutual_information_over_label_entropy():
    # PNMI is computed by sklearn's homogeneity; check it against I(L; C) / H(L) by hand on
    # codes that carry part of the labels.
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 6, size=3000)
    codes = np.where(rng.random(3000) < 0.6, labels * 2 + rng.integers(0, 2, 3000), 20)
    joint = np.zeros((21, 6))
    np.add.at(joint, (codes, labels), 1)
    joint /= joint.sum()
    pc, pl = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    mi = (joint[nz] * np.log(joint[nz] / (pc @ pl)[nz])).sum()
    h = -(pl * np.log(pl)).sum()
    split = [codes[:1000], codes[1000:]], [labels[:1000], labels[1000:]]
    assert pnmi(*split) == pytest.approx(mi / h, rel=1e-9)
    assert 0.3 < mi / h < 0.9  # neither trivial end


def test_abx_known_answer_swapped_speakers():
    # Speaker s2 says "a" the way s1 says "b" and the other way round: within a speaker every
    # triple is decided right, across speakers every one wrong.
    va, vb = np.array([1.0, 0.0, 0.2]), np.array([0.0, 1.0, 0.2])
    segs, labs, spks = [], [], []
    for spk, (a, b) in (("s1", (va, vb)), ("s2", (vb, va))):
        for n in (2, 3, 4):
            segs += [np.tile(a, (n, 1)), np.tile(b, (n + 1, 1))]
            labs += ["a", "b"]
            spks += [spk, spk]
    assert abx_error(segs, labs, spks, within_speaker=True, num_triples=300) == 0.0
    assert abx_error(segs, labs, spks, within_speaker=False, num_triples=300) == 1.0


def test_abx_matches_the_exact_expectation_of_its_draw():
    # One speaker, labels a (3 tokens) and b (2 tokens); one "a" token looks like "b". The exact
    # error of the draw (X uniform over tokens, A uniform over the other tokens of X's label,
    # B uniform over the other label's tokens), enumerated, against the Monte-Carlo estimate.
    e1, e2 = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    segs = [e1, e1 * 2, e2 * 3, e2, e2 * 2]  # tokens 0-2 are "a", token 2 looks like "b"
    labs = ["a", "a", "a", "b", "b"]

    def dist(u, v):  # the angular distance of the one-frame segments
        cos = float(u[0] @ v[0]) / float(np.linalg.norm(u) * np.linalg.norm(v))
        return math.acos(max(-1.0, min(1.0, cos))) / math.pi

    expected = 0.0
    for x in range(5):
        same = [k for k in range(5) if k != x and labs[k] == labs[x]]
        other = [k for k in range(5) if labs[k] != labs[x]]
        for a in same:
            for b in other:
                dax, dbx = dist(segs[a], segs[x]), dist(segs[b], segs[x])
                err = 0.5 if abs(dax - dbx) < 1e-12 else float(dax > dbx)
                expected += err / (5 * len(same) * len(other))
    assert 0.2 < expected < 0.5
    got = abx_error(segs, labs, ["s"] * 5, within_speaker=True, num_triples=40_000, seed=3)
    assert got == pytest.approx(expected, abs=0.01)  # 4 standard errors at n = 40000


def test_dtw_average_matches_librosa():
    # The batched DTW of abx_error against librosa's: the same least total cost (librosa's D at
    # the last cell, steps right, down and diagonal, unit weights) over the same path length.
    librosa = pytest.importorskip("librosa")
    from vqkit.metrics.units import _dtw_average

    rng = np.random.default_rng(7)
    costs = [rng.random((int(rng.integers(1, 12)), int(rng.integers(1, 12)))) for _ in range(60)]
    got = _dtw_average(costs)
    for c, value in zip(costs, got):
        d, path = librosa.sequence.dtw(C=c, backtrack=True)
        assert value == pytest.approx(d[-1, -1] / len(path), rel=1e-12)
