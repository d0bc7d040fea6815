"""Evaluation for the audio recipe: unit metrics (accuracy, purity, PNMI, ABX), reconstruction
and prior scores, conversion scoring, plots. The utterances come from
:mod:`vqkit.datasets.utterances`."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vqkit.audio import silence_class
from vqkit.datasets.alignments import Segment, frame_labels
from vqkit.datasets.speech_corpus import SILENCES
from vqkit.datasets.utterances import Utterances, load_utterances, spread
from vqkit.errors import InputError
from vqkit.metrics import (
    abx_error,
    chance_accuracy,
    code_label_accuracy,
    pnmi,
    purity,
    unigram_bits,
)
from vqkit.metrics.conversion import LogMel, accuracy, predict, train_classifier
from vqkit.metrics.unit_baselines import (
    kmeans_units,
    mfcc_frames,
    per_code,
    speaker_normalise,
    with_context,
)
from vqkit.metrics.units import cluster_purity
from vqkit.report import svg_codes_vs_labels

SILENCE_CLASS = silence_class(256)


def load_split(data, split: str) -> Utterances:
    """The ``split`` ("train" or "test") of the recipe's data section."""
    return load_utterances(
        data.kind,
        split,
        root=data.root,
        sample_rate=data.sample_rate,
        max_files=data.max_files,
        max_seconds=data.max_seconds,
        num_sentences=data.num_sentences,
        min_seconds=data.min_seconds,
        strict=data.strict,
    )


# --- codes -----------------------------------------------------------------------------------


def _padded(vqvae, audio: torch.Tensor, device) -> torch.Tensor:
    """``(T,)`` mu-law classes -> ``(1, ceil(T / hop) * hop)``, the tail padded with silence."""
    x = audio.long().to(device)
    pad = -len(x) % vqvae.hop
    x = F.pad(x, (0, pad), value=SILENCE_CLASS) if pad or len(x) == 0 else x
    if len(x) == 0:
        x = torch.full((vqvae.hop,), SILENCE_CLASS, device=device)
    return x[None]


@torch.no_grad()
def encode_utterance(vqvae, audio: torch.Tensor, device, speaker: int | None = None, stats=None):
    """``(T,)`` mu-law classes -> ``(ceil(T / hop),)`` codes (the tail padded with silence).

    ``speaker`` (a training speaker's id) or ``stats`` (``vqvae.speaker_stats`` of any speaker's
    utterances) give the input statistics of an encoder with ``mel_norm="speaker"``."""
    return vqvae.encode(_padded(vqvae, audio, device), speaker, stats=stats)[0]


def _norm_inputs(vqvae, split: Utterances, speakers: list[str]):
    """Per utterance ``(speaker id or None, stats or None)``: a training speaker's utterances
    are normalised with that speaker's statistics, another speaker's with those of their
    utterances here (``mel_norm="speaker"``)."""
    ids = {s: speakers.index(s) for s in speakers}
    stats = {}
    if vqvae.speaker_norm:
        for s in set(split.speakers) - set(ids):
            mine = [a for a, t in zip(split.audio, split.speakers) if t == s]
            stats[s] = vqvae.speaker_stats(mine)
    return [(ids.get(s), stats.get(s)) for s in split.speakers]


def encode_split(
    vqvae, split: Utterances, speakers: list[str], device, *, progress: bool = False
) -> list[torch.Tensor]:
    """Codes of every utterance (on the CPU), with a progress bar if ``progress``, normalised
    as :func:`_norm_inputs` says."""
    pairs = tqdm(
        list(zip(split.audio, _norm_inputs(vqvae, split, speakers))),
        desc="encode",
        disable=not progress,
        leave=False,
    )
    return [encode_utterance(vqvae, a, device, spk, stats).cpu() for a, (spk, stats) in pairs]


def codebook_vectors(vqvae) -> torch.Tensor:
    """``(K, D)`` the vector each code decodes to."""
    k = vqvae.quantizer.num_codes
    with torch.no_grad():
        table = vqvae.quantizer.decode(torch.arange(k, device=_device(vqvae))[None])  # (1, D, K)
    return table[0].t().cpu()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def pick_sources(test: Utterances, speakers: list[str], n: int) -> list[int]:
    """``n`` test utterances by ``speakers``, spread over the (sorted) list."""
    known = [i for i, s in enumerate(test.speakers) if s in speakers]
    if not known:
        raise InputError(f"no test utterance is by {', '.join(speakers)}; nothing to convert")
    return [known[i] for i in spread(len(known), n)]


def leave_out(train: Utterances, heldout: list[str]) -> Utterances:
    """The training split without the speakers of ``data.heldout_speakers``."""
    missing = sorted(set(heldout) - set(train.speakers))
    if missing:
        raise InputError(
            f"data.heldout_speakers: no training utterance by {', '.join(missing)}; speakers: "
            f"{', '.join(sorted(set(train.speakers)))}"
        )
    keep = [i for i, s in enumerate(train.speakers) if s not in heldout]
    return train.subset(keep) if heldout else train


def speaker_probe(codes_train, train: Utterances, codes_test, test: Utterances, speakers, vqvae):
    """How much of the speaker the codes carry: a linear classifier (multinomial logistic
    regression, L2) from each utterance's code histogram to its speaker, trained on the
    training utterances, scored on the test utterances of training speakers; beside chance
    (the most frequent speaker). Lower is better for conversion."""
    k = vqvae.quantizer.num_codes

    def features(codes):
        h = torch.stack([torch.bincount(c.flatten(), minlength=k).float() for c in codes])
        return h / h.sum(1, keepdim=True).clamp_min(1)

    known = [i for i, s in enumerate(test.speakers) if s in speakers]
    if len(speakers) < 2 or not known:
        return {}
    x, y = features(codes_train), torch.tensor([speakers.index(s) for s in train.speakers])
    xt = features([codes_test[i] for i in known])
    yt = torch.tensor([speakers.index(test.speakers[i]) for i in known])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    w = torch.zeros(k, len(speakers), requires_grad=True)
    b = torch.zeros(len(speakers), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy((x - mean) / std @ w + b, y) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    pred = ((xt - mean) / std @ w + b).argmax(1)
    return {
        "speaker_probe_accuracy": float((pred == yt).float().mean()),
        "speaker_probe_chance": float(torch.bincount(yt).max() / len(yt)),
    }


# --- unit discovery --------------------------------------------------------------------------


def _segment_frames(seg: Segment, rate: float, num_frames: int, first_centre_s: float) -> list[int]:
    """Frames (frame f centred at ``first_centre_s + f / rate`` s) whose centre lies in the
    segment, or the frame nearest its midpoint."""
    first = math.ceil((seg.start_s - first_centre_s) * rate)
    last = math.ceil((seg.end_s - first_centre_s) * rate)  # exclusive
    frames = [f for f in range(max(first, 0), min(last, num_frames))]
    if not frames:
        mid = math.floor(((seg.start_s + seg.end_s) / 2 - first_centre_s) * rate + 0.5)
        frames = [min(max(mid, 0), num_frames - 1)]
    return frames


def unit_metrics(
    codes: list[torch.Tensor],
    test: Utterances,
    rate: float,
    cfg,
    *,
    codebook,
    first_centre_s: float,
    prefix="unit_",
) -> dict:
    """Frame accuracy (paper), chance, purity, cluster purity, PNMI and ABX of held-out codes,
    under keys ``prefix + name`` (the labels and chance only under ``"unit_"``). Code i is
    labelled with the phone at its centre, ``first_centre_s + i / rate`` seconds
    (:func:`code_centre_s`)."""
    if test.label_kind is None:
        return {}
    labels = [
        frame_labels(test.segments(i), rate, len(c), first_centre_s=first_centre_s)
        for i, c in enumerate(codes)
    ]
    arrays = [c.numpy() for c in codes]
    out = {"unit_labels": test.label_kind} if prefix == "unit_" else {}
    out[f"{prefix}accuracy"] = code_label_accuracy(arrays, labels)
    if prefix == "unit_":
        out["unit_chance"] = chance_accuracy(labels)
    out[f"{prefix}purity"] = purity(arrays, labels)
    out[f"{prefix}cluster_purity"] = cluster_purity(arrays, labels)
    out[f"{prefix}pnmi"] = pnmi(arrays, labels)
    segs, seg_labels, seg_speakers = [], [], []
    for i, c in enumerate(codes):
        for seg in test.segments(i):
            if seg.label in SILENCES:
                continue
            segs.append(c[_segment_frames(seg, rate, len(c), first_centre_s)].numpy())
            seg_labels.append(seg.label)
            seg_speakers.append(test.speakers[i])
    for within in (True, False):
        key = f"{prefix}abx_within" if within else f"{prefix}abx_across"
        try:
            out[key] = abx_error(
                segs,
                seg_labels,
                seg_speakers,
                within_speaker=within,
                codebook=codebook,
                num_triples=cfg.abx_triples,
            )
        except ValueError as e:  # too few segments (tiny runs): say so instead of failing
            out[key] = f"n/a: {e}"
    return out


# What the k-means baselines of unit_baseline_metrics cluster, for the report and `vqkit units`.
BASELINES = {
    "input": "the encoder's own input: the frames its conv stack reads (normalised log-mel, or "
    "the companded waveform), those of each code stacked",
    "mfcc": "13 MFCCs (25 ms window) at the encoder's frame hop, those of each code stacked, "
    "one code of context each side, normalised per speaker",
}


def mfcc_rows(split: Utterances, hop: int, frame_hop: int, phases: int = 1) -> list[list]:
    """The rows of the ``mfcc`` baseline before the speaker normalisation: for each phase ``p <
    phases`` and each utterance a ``(ceil(T / hop), 78)`` array whose row i holds the 13 MFCCs
    (every ``frame_hop`` samples) of the code window starting at frame ``p + i * hop //
    frame_hop``, beside those of its neighbours. Phase 0 is the codes' own window (what the
    baseline clusters); the others shift it by whole frames (pseudo-labels of crops that start
    on any frame)."""
    per = hop // frame_hop
    out = [[] for _ in range(phases)]
    for i, a in enumerate(split.audio):
        n = max(1, -(-len(a) // hop))
        mfcc = mfcc_frames(split.waveform(i).numpy(), split.sample_rate, hop=frame_hop)
        for p in range(phases):
            out[p].append(with_context(per_code(mfcc[min(p, len(mfcc) - 1) :], per, n)))
    return out


def code_centre_s(vqvae, sample_rate: int) -> float:
    """Where the first code of an utterance is centred, in seconds (``AudioVQVAE.code_centre``):
    the ``first_centre_s`` of :func:`unit_metrics` for the codes."""
    return vqvae.code_centre / sample_rate


def baseline_features(vqvae, train: Utterances, test: Utterances, speakers, device) -> dict:
    """``{name: (train rows, test rows, first_centre_s)}`` of :data:`BASELINES`: per utterance
    a ``(codes, D)`` float array, one row per code of the utterance (as many as
    :func:`encode_utterance` gives), and where its first row is centred in seconds (the
    encoder's input: the codes' own centre; the MFCCs, frame f centred on sample ``f *
    frame_hop``: the mean of the frames a row stacks)."""
    hop = vqvae.hop
    frame_hop = vqvae.mel_hop or hop  # of the MFCCs
    per_input = hop // (vqvae.mel_hop or 1)  # the encoder's frames (or samples) per code

    def encoder_rows(split: Utterances) -> list:
        rows = []
        for a, (spk, stats) in zip(split.audio, _norm_inputs(vqvae, split, speakers)):
            x = vqvae.encoder_input(_padded(vqvae, a, device), spk, stats=stats)[0]  # (C, F)
            rows.append(per_code(x.t().double().cpu().numpy(), per_input, x.shape[-1] // per_input))
        return rows

    mfcc_train, mfcc_test = mfcc_rows(train, hop, frame_hop)[0], mfcc_rows(test, hop, frame_hop)[0]
    mfcc_test = speaker_normalise(
        mfcc_test, test.speakers, fit_feats=mfcc_train, fit_speakers=train.speakers
    )
    mfcc_train = speaker_normalise(mfcc_train, train.speakers)
    sr = train.sample_rate
    return {
        "input": (encoder_rows(train), encoder_rows(test), code_centre_s(vqvae, sr)),
        "mfcc": (mfcc_train, mfcc_test, (hop - frame_hop) / 2 / sr),
    }


def unit_baseline_metrics(
    vqvae, train: Utterances, test: Utterances, speakers, rate: float, cfg, device
) -> dict:
    """The unit metrics of k-means (the codes' K, fit on the training split) over each feature
    of :data:`BASELINES`, on the same held-out utterances and labels as the codes, under keys
    ``unit_baseline_<name>_<metric>``: the mean over the k-means seeds ``0 ..
    cfg.baseline_seeds - 1`` (each seed draws its own fit subsample and k-means++ start), with
    ``unit_baseline_<name>_accuracy_min`` / ``_max`` over them when there are several."""
    if test.label_kind is None or train.label_kind is None or cfg.baseline_fit_frames == 0:
        return {}
    out = {"unit_kmeans_seeds": cfg.baseline_seeds}
    features = baseline_features(vqvae, train, test, speakers, device)
    for name, (fit, rows, first_centre_s) in features.items():
        prefix = f"unit_baseline_{name}_"
        per_seed = []
        for seed in range(cfg.baseline_seeds):
            try:
                codes, centres = kmeans_units(
                    fit,
                    rows,
                    num_codes=vqvae.quantizer.num_codes,
                    seed=seed,
                    max_fit_frames=cfg.baseline_fit_frames,
                )
            except ValueError as e:  # fewer training frames than codes (tiny runs): say so
                out[f"{prefix}accuracy"] = f"n/a: {e}"
                break
            per_seed.append(
                unit_metrics(
                    [torch.from_numpy(c) for c in codes],
                    test,
                    rate,
                    cfg,
                    codebook=centres,
                    first_centre_s=first_centre_s,
                    prefix=prefix,
                )
            )
        if not per_seed:
            continue
        for key, value in per_seed[0].items():
            values = [m[key] for m in per_seed]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            out[key] = statistics.fmean(values) if numeric and len(values) > 1 else value
        if len(per_seed) > 1:
            accuracies = [m[f"{prefix}accuracy"] for m in per_seed]
            out[f"{prefix}accuracy_min"] = min(accuracies)
            out[f"{prefix}accuracy_max"] = max(accuracies)
    return out


def plot_codes(run_dir: Path, codes, test: Utterances, rate: float, count: int) -> list[str]:
    """SVG plots of codes over time against the labels of the first ``count`` test utterances."""
    if test.label_kind is None:
        return []
    paths = []
    for i in range(min(count, len(codes))):
        svg = svg_codes_vs_labels(
            codes[i].tolist(),
            rate,
            test.segments(i),
            title=f"{test.ids[i]} ({test.speakers[i]}): codes vs {test.label_kind}",
        )
        path = f"codes_{test.ids[i]}.svg"
        (run_dir / path).write_text(svg)
        paths.append(path)
    return paths


# --- reconstruction, prior, generation speed -------------------------------------------------


@torch.no_grad()
def reconstruction_metrics(
    vqvae,
    test: Utterances,
    speakers,
    result: dict,
    device,
    *,
    nll_utterances: int = 16,
    nll_seconds: float = 2.0,
) -> dict:
    """Teacher-forced test NLL, log-mel distance of generated reconstructions, decoding speed."""
    out = {}
    known = [i for i, s in enumerate(test.speakers) if s in speakers]
    bits = []
    for i in [] if vqvae.is_mel else known[:nll_utterances]:  # the WaveNet decoder's likelihood
        n = min(len(test.audio[i]), int(nll_seconds * test.sample_rate)) // vqvae.hop * vqvae.hop
        if n == 0:
            continue
        x = test.audio[i][:n].long()[None].to(device)
        spk = torch.tensor([speakers.index(test.speakers[i])], device=device)
        bits.append(float(vqvae.nll_bits(x, spk if vqvae.num_speakers else None)))
    if bits:
        out["test_nll_bits_per_sample"] = statistics.fmean(bits)
    mel = LogMel(test.sample_rate)
    dists = []
    for (kind, s, t), wav in zip(result["jobs"], result["wavs"]):
        if kind == "convert" and speakers[t] == test.speakers[s]:
            ref = test.waveform(s)[: len(wav)]
            db = 10 / math.log(10)
            diff = (mel(ref[None]) - mel(wav[None])) * db  # (1, n_mels, F)
            dists.append(float(diff.pow(2).mean(1).sqrt().mean()))
    if dists:
        out["recon_logmel_distance_db"] = statistics.fmean(dists)
    if not vqvae.is_mel:
        out.update(generation_speed(vqvae, result, test.sample_rate, device))
    else:
        out["decode_samples_per_s"] = result["decoded_samples"] / result["decode_s"]
    return out


@torch.inference_mode()
def generation_speed(vqvae, result: dict, sample_rate: int, device, repeats: int = 3) -> dict:
    """Cached decoding speed (measured on the matrix) against naive decoding, whose steady-state
    cost per sample is one forward pass over the receptive field (timed directly)."""
    batch = len(result["jobs"])
    wavenet = vqvae.decoder.wavenet
    field = wavenet.receptive_field
    x = torch.full((batch, field), SILENCE_CLASS, device=device)
    local = torch.zeros(batch, wavenet.local_channels, field, device=device)
    spk = torch.zeros(batch, dtype=torch.long, device=device) if wavenet.global_classes else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        wavenet(x, local, spk)
        times.append(time.perf_counter() - t0)
    cached = result["decoded_samples"] / result["decode_s"]  # samples/s over the whole batch
    naive = batch / statistics.median(times)
    per_stream = sample_rate * batch  # samples/s needed to keep every stream real time
    return {
        "decode_batch": batch,
        "decode_samples_per_s_cached": cached,
        "decode_samples_per_s_naive": naive,
        "decode_rtf_cached": per_stream / cached,
        "decode_rtf_naive": per_stream / naive,
        "decode_speedup": cached / naive,
    }


@torch.no_grad()
def prior_metrics(prior, codes_train, codes_test, test: Utterances, speakers, device) -> dict:
    """Test NLL of the prior in bits per code (utterances of training speakers), beside log2 K
    and the unigram baseline."""
    k = prior.in_classes
    bits, kept = 0.0, []
    for c, s in zip(codes_test, test.speakers):
        if s not in speakers:
            continue
        spk = torch.tensor([speakers.index(s)], device=device) if prior.global_classes else None
        bits += float(prior.nll_bits(c[None].to(device), speaker=spk)) * len(c)
        kept.append(c)
    if not kept:
        return {}
    n = sum(len(c) for c in kept)
    return {
        "prior_bits_per_code": bits / n,
        "unigram_bits_per_code": float(unigram_bits(torch.cat(codes_train), torch.cat(kept), k)),
        "log2_num_codes": math.log2(k),
    }


# --- conversion ------------------------------------------------------------------------------


def _content_targets(split: Utterances, i: int, clf_rate: float, num_frames: int, vocab: dict):
    """The content classifier's targets: the word, or the phone at each of its log-mel frames'
    centres (frame f centred on sample ``f * hop``: ``LogMel`` pads half a window each side)."""
    if split.label_kind == "words":
        return split.labels[i]
    names = frame_labels(split.segments(i), clf_rate, num_frames, first_centre_s=0.0)
    return torch.tensor([vocab.get(p, -100) for p in names])


def conversion_metrics(
    train: Utterances, test: Utterances, speakers, result: dict, cfg, device, *, progress=False
) -> dict:
    """Speaker and content classifiers trained on real training audio, applied to real test
    audio (their reference accuracy), reconstructions, conversions and prior samples; with
    ``progress``, a bar over each classifier's training steps.

    Returns:
        ``(metrics, verdicts)``: the rates, and what the classifiers say of each decoded
        waveform of ``result["jobs"]`` (a line each, for the report)."""
    sr, e = train.sample_rate, cfg.eval
    if len(speakers) < 2:
        return {}, [""] * len(result["jobs"])
    opts = dict(sample_rate=sr, steps=e.classifier_steps, crop=e.classifier_crop, device=device)
    waves = [train.waveform(i) for i in range(len(train.audio))]
    spk_clf = train_classifier(
        waves,
        [speakers.index(s) for s in train.speakers],
        num_classes=len(speakers),
        progress="speaker classifier" if progress else None,
        **opts,
    )
    opts["progress"] = "content classifier" if progress else None
    known = [i for i, s in enumerate(test.speakers) if s in speakers]
    test_waves = [test.waveform(i) for i in known]
    out = {
        "speaker_clf_test_accuracy": accuracy(
            predict(spk_clf, test_waves), [speakers.index(test.speakers[i]) for i in known]
        )
    }

    content_clf, vocab = None, {}
    if train.label_kind == "words":
        num = max(train.labels) + 1
        content_clf = train_classifier(waves, train.labels, num_classes=num, **opts)
    elif train.label_kind == "phones":
        vocab = {p: k for k, p in enumerate(sorted({s.label for seg in train.labels for s in seg}))}
        rate = LogMel(sr).frame_rate
        frames = [
            _content_targets(train, i, rate, LogMel(sr).num_frames(len(w)), vocab)
            for i, w in enumerate(waves)
        ]
        content_clf = train_classifier(
            waves, frames, num_classes=len(vocab), frame_level=True, **opts
        )
    if content_clf is not None:
        feats = content_clf.features
        targets = [
            _content_targets(test, i, feats.frame_rate, feats.num_frames(len(w)), vocab)
            for i, w in zip(known, test_waves)
        ]
        out["content_clf_test_accuracy"] = accuracy(predict(content_clf, test_waves), targets)

    groups: dict[str, tuple[list, list, list]] = {
        "recon": ([], [], []),
        "convert": ([], [], []),
        "sample": ([], [], []),
        "vocoder": ([], [], []),
        "unseen": ([], [], []),
    }
    for (kind, s, t), wav in zip(result["jobs"], result["wavs"]):
        if kind == "convert" and test.speakers[s] not in speakers:
            kind = "unseen"  # a held-out voice converted
        elif kind == "convert":
            kind = "recon" if speakers[t] == test.speakers[s] else "convert"
        waves_k, spk_k, content_k = groups[kind]
        waves_k.append(wav)
        spk_k.append(t)
        if content_clf is not None and s is not None:
            feats = content_clf.features
            content_k.append(
                _content_targets(test, s, feats.frame_rate, feats.num_frames(len(wav)), vocab)
            )
    names = {
        "recon": "recon",
        "convert": "conversion",
        "sample": "prior_sample",
        "vocoder": "vocoder",
        "unseen": "unseen",
    }
    for kind, (w, spk, content) in groups.items():
        if not w:
            continue
        out[f"{names[kind]}_speaker_rate"] = accuracy(predict(spk_clf, w), spk)
        if content:
            out[f"{names[kind]}_content_rate"] = accuracy(predict(content_clf, w), content)
        out[f"{names[kind]}_count"] = len(w)
    if "conversion_speaker_rate" in out:
        out["target_speaker_rate"] = out["conversion_speaker_rate"]
    if "conversion_content_rate" in out:
        out["content_kept_rate"] = out["conversion_content_rate"]
    return out, _verdicts(spk_clf, content_clf, vocab, test, speakers, result)


def _verdicts(spk_clf, content_clf, vocab, test: Utterances, speakers, result) -> list[str]:
    """What the classifiers say of each decoded waveform, for the report."""
    heard = predict(spk_clf, result["wavs"])
    said = predict(content_clf, result["wavs"]) if content_clf is not None else None
    out = []
    for j, ((_, s, t), wav) in enumerate(zip(result["jobs"], result["wavs"])):
        v = f"heard as {speakers[int(heard[j])]} {'✓' if int(heard[j]) == t else '✗'}"
        if said is not None and s is not None and test.label_kind == "words":
            ok = int(said[j]) == test.labels[s]
            v += f", digit {int(said[j])} {'✓' if ok else '✗'}"
        elif said is not None and s is not None:
            feats = content_clf.features
            target = _content_targets(test, s, feats.frame_rate, feats.num_frames(len(wav)), vocab)
            v += f", {accuracy([said[j]], [target]):.0%} of frames' phones kept"
        out.append(v)
    return out
