"""The festival speech corpus: a tiny build (2 sentences x 6 speakers) checked end to end."""

import json
import shutil

import pytest
import soundfile as sf
import torch

from vqkit.datasets import speech_corpus as sc
from vqkit.datasets.alignments import frame_labels
from vqkit.datasets.speech_corpus import (
    FESTIVAL_APT_COMMAND,
    SPEAKERS,
    FestivalNotFoundError,
    SpeechCorpus,
    build_speech_corpus,
    make_sentences,
)

needs_festival = pytest.mark.skipif(
    shutil.which("festival") is None,
    reason=f"festival is not installed; install it with: {FESTIVAL_APT_COMMAND}",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if shutil.which("festival") is None:
        pytest.skip(f"festival is not installed; install it with: {FESTIVAL_APT_COMMAND}")
    return build_speech_corpus(tmp_path_factory.mktemp("speech"), num_sentences=2)


def test_sentences_are_deterministic_distinct_prefixes():
    a = make_sentences(50, seed=0)
    assert a == make_sentences(50, seed=0) and len(set(a)) == 50
    assert make_sentences(5, seed=0) == a[:5]
    assert make_sentences(5, seed=1) != a[:5]
    assert all(s[0].isupper() and s[-1] in ".?" for s in a)


def test_missing_festival_error_gives_apt_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sc.shutil, "which", lambda name: None)
    with pytest.raises(FestivalNotFoundError, match="apt-get install -y festival"):
        build_speech_corpus(tmp_path / "c", num_sentences=1)


def test_missing_corpus_error_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_speech_corpus"):
        SpeechCorpus(tmp_path)


@needs_festival
def test_layout_manifest_and_split(corpus):
    m = json.loads((corpus / "manifest.json").read_text())
    names = [s.name for s in SPEAKERS]
    assert [s["name"] for s in m["speakers"]] == names and len(names) >= 6
    assert len(m["utterances"]) == 2 * len(names)
    assert m["splits"] == {"train": ["s0001"], "test": ["s0000"]}
    assert (corpus / "sentences.txt").read_text().splitlines()[1].split("\t")[1] == make_sentences(
        2
    )[1]
    assert "pau" in m["phone_set"] and len(m["phone_set"]) > 15
    for u in m["utterances"]:
        assert (corpus / u["wav"]).is_file() and (corpus / u["phones"]).is_file()
        assert u["wav"] == f"wav/{u['speaker']}/{u['id']}.wav"


@needs_festival
def test_phones_tile_the_wav_and_match_its_duration(corpus):
    ds = SpeechCorpus(corpus)
    m = json.loads((corpus / "manifest.json").read_text())
    for i, u in enumerate(m["utterances"]):
        info = sf.info(corpus / u["wav"])
        assert info.samplerate == 16000 and info.subtype == "PCM_16" and info.channels == 1
        duration = info.frames / info.samplerate
        # festival's own last segment end (before the final pause is stretched to the end).
        assert abs(u["festival_end_s"] - duration) < 0.05, u["id"]
        segs = ds.phones(i)
        assert segs[0].start_s == 0.0 and abs(segs[-1].end_s - duration) < 1e-4
        assert all(a.end_s == b.start_s for a, b in zip(segs, segs[1:]))
        assert segs[0].label == "pau" and len(segs) > 10


@needs_festival
def test_timings_line_up_with_the_audio(corpus):
    """Pauses are quiet and phones are loud, so the times really describe the waveform."""
    ds = SpeechCorpus(corpus)
    for i in range(len(ds)):
        wav, sr, spk, _ = ds[i]
        frame_rate = 100.0
        hop = int(sr / frame_rate)
        frames = wav[0, : wav.shape[1] // hop * hop].reshape(-1, hop)
        rms = frames.pow(2).mean(1).sqrt()
        labels = frame_labels(ds.phones(i), frame_rate, len(rms))
        pause = torch.tensor([lab == "pau" for lab in labels])
        assert rms[pause].mean() < 0.2 * rms[~pause].mean(), spk


@needs_festival
def test_dataset_splits_speakers_crop_and_resample(corpus):
    train, test = SpeechCorpus(corpus, split="train"), SpeechCorpus(corpus, split="test")
    assert len(train) == len(test) == len(SPEAKERS)
    assert train.speakers == sorted(s.name for s in SPEAKERS)
    assert {test.sentence(i) for i in range(len(test))} == {make_sentences(1)[0]}
    wav, sr, spk, utt = test[0]
    assert wav.shape[0] == 1 and sr == 16000 and utt.startswith(spk)
    assert test.speaker_index(spk) == sorted(s.name for s in SPEAKERS).index(spk)
    cropped = SpeechCorpus(corpus, split="train", crop=2048, seed=0)
    assert cropped[0][0].shape == (1, 2048)
    low = SpeechCorpus(corpus, split="test", sample_rate=8000)
    assert low[0][1] == 8000 and abs(low[0][0].shape[1] - wav.shape[1] // 2) <= 1


@needs_festival
def test_speakers_differ_in_pitch(corpus):
    """The pitch variants really move f0: compare autocorrelation pitch of the same sentence."""

    def median_f0(wav, sr):
        frames = wav[0].unfold(0, 640, 160)  # (F, 640) 40 ms windows, 10 ms hop
        frames = frames - frames.mean(1, keepdim=True)
        frames = frames[frames.pow(2).mean(1) > 1e-4]  # voiced-ish frames only
        spec = torch.fft.rfft(frames, n=2 * 640)
        ac = torch.fft.irfft(spec.abs().pow(2), n=2 * 640)[:, :640]  # (F, lags)
        lo, hi = sr // 400, sr // 60  # 60-400 Hz
        lag = lo + ac[:, lo:hi].argmax(1)
        periodic = ac.gather(1, lag[:, None])[:, 0] > 0.5 * ac[:, 0]
        return float((sr / lag[periodic].float()).median())

    ds = SpeechCorpus(corpus, split="test")
    f0 = {ds[i][2]: median_f0(*ds[i][:2]) for i in range(len(ds))}
    assert f0["kal_high"] > 1.25 * f0["kal"]
    assert f0["ked_low"] < 0.9 * f0["ked"]
    assert f0["slt_deep"] < 0.9 * f0["slt"]
    assert f0["slt"] > 1.4 * f0["kal"]


@needs_festival
def test_cache_reuse_and_parameter_mismatch(corpus):
    stamp = (corpus / "manifest.json").stat().st_mtime_ns
    assert build_speech_corpus(corpus, num_sentences=2) == corpus
    assert (corpus / "manifest.json").stat().st_mtime_ns == stamp  # nothing rebuilt
    with pytest.raises(ValueError, match="delete the folder to rebuild it"):
        build_speech_corpus(corpus, num_sentences=3)
