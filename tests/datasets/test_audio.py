"""Audio I/O (vqkit.audio) and the speaker folder data sets (vqkit.datasets.audio)."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vqkit.audio import AudioError, MuLawDecode, MuLawEncode, audio_info, load_audio, save_audio
from vqkit.datasets.audio import VCTK, RandomCrop, SpeakerAudioFolder
from vqkit.errors import InputError


def _fsdd_root() -> Path:
    env = os.environ.get("VQKIT_SHARED_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared/data"
    return base / "fsdd"


FSDD = _fsdd_root()
needs_fsdd = pytest.mark.skipif(
    not (FSDD / "recordings").is_dir(),
    reason=f"FSDD not found at {FSDD} (set VQKIT_SHARED_DATA to the folder holding fsdd/)",
)


def _tone(n=4000, sr=8000, freq=440.0, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


# ----------------------------------------------------------------------------- load_audio


@pytest.mark.parametrize(
    "subtype,tol",
    [
        ("PCM_U8", 1 / 127),
        ("PCM_16", 1 / 2**15),
        ("PCM_24", 1 / 2**23),
        ("PCM_32", 1e-8),
        ("FLOAT", 0),
    ],
)
def test_load_each_subtype_round_trips(tmp_path, subtype, tol):
    x = _tone()
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, x, 8000, subtype=subtype)
    wav, sr = load_audio(path)
    assert sr == 8000 and wav.shape == (1, len(x)) and wav.dtype == torch.float32
    assert float((wav[0] - torch.from_numpy(x)).abs().max()) <= tol + 1e-7
    assert float(wav.abs().max()) <= 1.0


def test_load_stereo_mono_mean_and_keep_channels(tmp_path):
    left, right = _tone(amp=0.5), _tone(freq=220.0, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="PCM_24")
    mono, _ = load_audio(path)
    both, _ = load_audio(path, mono=False)
    assert mono.shape == (1, 4000) and both.shape == (2, 4000)
    torch.testing.assert_close(mono[0], torch.from_numpy((left + right) / 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(both[1], torch.from_numpy(right), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "file_sr,target", [(8000, 16000), (22050, 16000), (48000, 16000), (16000, 16000)]
)
def test_load_resamples_and_keeps_pitch(tmp_path, file_sr, target):
    n = file_sr // 2  # half a second
    x = _tone(n=n, sr=file_sr, freq=300.0)
    path = tmp_path / "t.flac"
    sf.write(path, x, file_sr, subtype="PCM_16")
    wav, sr = load_audio(path, sample_rate=target)
    assert sr == target
    assert abs(wav.shape[1] - target // 2) <= 1
    # The spectral peak stays at 300 Hz whatever the rate.
    spectrum = torch.fft.rfft(wav[0]).abs()
    peak_hz = int(spectrum.argmax()) * target / wav.shape[1]
    assert abs(peak_hz - 300.0) < 5


def test_corrupt_files_raise_audio_error_naming_the_file(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, _tone(), 8000, subtype="PCM_16")
    raw = good.read_bytes()
    cases = {
        "truncated.wav": raw[: len(raw) // 2],
        "header_only.wav": raw[:30],
        "junk.wav": b"this is not audio" * 20,
        "empty.wav": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AudioError, match=name):
            load_audio(tmp_path / name)
    assert issubclass(AudioError, ValueError)


def test_zero_length_and_nan_files(tmp_path):
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 8000, subtype="PCM_16")
    with pytest.raises(AudioError, match="zero length"):
        load_audio(tmp_path / "zero.wav")
    x = _tone()
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")
    x[100] = np.inf
    sf.write(tmp_path / "inf.wav", x, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match="inf"):
        load_audio(tmp_path / "inf.wav")
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(tmp_path / "nan.wav", sample_rate=0)


def test_save_audio_writes_pcm16_and_clips(tmp_path):
    wav = torch.tensor([[0.0, 0.5, -0.5, 2.0, -3.0]])
    path = save_audio(tmp_path / "sub" / "out.wav", wav, 16000)
    info = sf.info(path)
    assert info.subtype == "PCM_16" and info.samplerate == 16000 and info.frames == 5
    back, _ = load_audio(path)
    torch.testing.assert_close(back, torch.tensor([[0.0, 0.5, -0.5, 1.0, -1.0]]), atol=1e-4, rtol=0)
    assert audio_info(path).frames == 5
    with pytest.raises(ValueError, match="NaN"):
        save_audio(tmp_path / "bad.wav", torch.tensor([float("nan")]), 16000)


def test_mu_law_round_trip_and_range():
    x = torch.linspace(-1, 1, 1001).reshape(1, 1001)
    enc, dec = MuLawEncode(256), MuLawDecode(256)
    codes = enc(x)
    assert codes.dtype == torch.int64 and int(codes.min()) == 0 and int(codes.max()) == 255
    # Mu-law steps are finest near zero: small values come back almost exactly.
    err = (dec(codes) - x).abs()
    assert float(err.max()) < 0.04 and float(err[x.abs() < 0.01].max()) < 1e-3
    assert torch.equal(enc(dec(codes)), codes)
    assert torch.equal(enc(torch.tensor([[5.0, -5.0]])), torch.tensor([[255, 0]]))  # clipped
    with pytest.raises(ValueError, match="codes must lie"):
        dec(torch.tensor([256]))
    with pytest.raises(ValueError, match="classes"):
        MuLawEncode(1)


# ----------------------------------------------------------------------------- folders


def _write_tree(root: Path, files: dict[str, int], sr=8000):
    for rel, n in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _tone(n=n, sr=sr), sr, subtype="PCM_16")


def test_speaker_dirs_layout_and_speaker_index(tmp_path):
    _write_tree(tmp_path, {"bob/a.wav": 800, "bob/b.wav": 800, "alice/c.flac": 800})
    ds = SpeakerAudioFolder(tmp_path, sample_rate=None)
    assert ds.layout == "speaker_dirs" and ds.speakers == ["alice", "bob"]
    assert len(ds) == 3 and ds.speaker_index("bob") == 1
    wav, sr, spk, utt = ds[0]
    assert (spk, utt, sr, wav.shape) == ("alice", "c", 8000, (1, 800))
    with pytest.raises(KeyError, match="carol"):
        ds.speaker_index("carol")
    with pytest.raises(ValueError, match="FSDD"):
        ds.label(0)


def test_vctk_layout_picks_one_microphone(tmp_path):
    _write_tree(
        tmp_path,
        {
            "wav48_silence_trimmed/p225/p225_001_mic1.flac": 480,
            "wav48_silence_trimmed/p225/p225_001_mic2.flac": 480,
            "wav48_silence_trimmed/p226/p226_002_mic1.flac": 480,
            "wav48_silence_trimmed/p226/p226_002_mic2.flac": 480,
        },
        sr=48000,
    )
    ds = SpeakerAudioFolder(tmp_path, layout="vctk", mic="mic1")
    assert ds.layout == "vctk" and len(ds) == 2 and ds.speakers == ["p225", "p226"]
    wav, sr, spk, utt = ds[1]
    assert (sr, spk, utt, wav.shape) == (16000, "p226", "p226_002", (1, 160))
    assert ds.items[1].path.name.endswith("_mic1.flac")


def test_empty_folder_names_path_and_layouts(tmp_path):
    with pytest.raises(ValueError) as e:
        SpeakerAudioFolder(tmp_path)
    assert str(tmp_path) in str(e.value) and "FSDD" in str(e.value) and "VCTK" in str(e.value)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SpeakerAudioFolder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="layout"):
        SpeakerAudioFolder(tmp_path, layout="timit")


def test_unreadable_file_skipped_with_warning_or_raised_when_strict(tmp_path):
    _write_tree(tmp_path, {"bob/a.wav": 800, "bob/b.wav": 800})
    (tmp_path / "bob" / "broken.wav").write_bytes(b"RIFF garbage")
    with pytest.warns(RuntimeWarning, match="broken.wav.*--set data.strict=true"):
        ds = SpeakerAudioFolder(tmp_path)
    assert len(ds) == 2 and len(ds.skipped) == 1 and ds.skipped[0][0].name == "broken.wav"
    with pytest.raises(AudioError, match="broken.wav"):
        SpeakerAudioFolder(tmp_path, strict=True)


def test_crop_pad_skip_and_determinism(tmp_path):
    _write_tree(tmp_path, {"bob/long.wav": 3000, "bob/short.wav": 500})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = SpeakerAudioFolder(tmp_path, sample_rate=None, crop=1000, seed=3)
    long_i = [it.utterance for it in ds.items].index("long")
    short_i = 1 - long_i
    assert ds[long_i][0].shape == (1, 1000)
    short = ds[short_i][0]
    assert short.shape == (1, 1000) and torch.all(short[:, 500:] == 0)  # zero-padded at the end
    skipping = SpeakerAudioFolder(tmp_path, sample_rate=None, crop=1000, short="skip")
    assert [it.utterance for it in skipping.items] == ["long"]
    # Same seed, same crops; random offsets differ from crop to crop.
    first = SpeakerAudioFolder(tmp_path, sample_rate=None, crop=1000, seed=3)
    again = SpeakerAudioFolder(tmp_path, sample_rate=None, crop=1000, seed=3)
    a = [first[long_i][0] for _ in range(4)]
    b = [again[long_i][0] for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(a[0], x) for x in a[1:])
    # Deterministic centre crop when not random.
    centre = RandomCrop(4, random=False)(torch.arange(10.0)[None])
    assert torch.equal(centre, torch.tensor([[3.0, 4.0, 5.0, 6.0]]))


def test_vctk_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        VCTK(tmp_path)


@needs_fsdd
def test_fsdd_folder_speakers_splits_labels():
    ds = SpeakerAudioFolder(FSDD, sample_rate=None)
    assert ds.layout == "fsdd" and len(ds) == 2000
    assert ds.speakers == ["george", "jackson", "lucas", "nicolas"]
    train = SpeakerAudioFolder(FSDD, split="train", sample_rate=None)
    test = SpeakerAudioFolder(FSDD, split="test", sample_rate=None)
    assert (len(train), len(test)) == (1800, 200)
    assert {int(u.split("_")[2]) for u in (it.utterance for it in test.items)} == set(range(5))
    assert sorted(set(train.labels)) == list(range(10))
    i = 123
    wav, sr, spk, utt = test[i]
    digit, name, _ = utt.split("_")
    assert test.label(i) == int(digit) and spk == name and sr == 8000 and wav.shape[0] == 1


@needs_fsdd
def test_fsdd_crop_shapes_at_16k():
    ds = SpeakerAudioFolder(FSDD, split="train", crop=4096, seed=0)
    for i in (0, 500, 1799):
        wav, sr, _, _ = ds[i]
        assert wav.shape == (1, 4096) and sr == 16000 and wav.dtype == torch.float32
    full = SpeakerAudioFolder(FSDD, split="test")
    wav, sr, _, _ = full[0]
    frames = sf.info(full.items[0].path).frames
    assert abs(wav.shape[1] - 2 * frames) <= 1  # 8 kHz -> 16 kHz


def test_vctk_wrapper_reads_a_tiny_fake_tree(tmp_path):
    base = tmp_path / "VCTK-Corpus-0.92"
    for spk, utt in (("p225", "001"), ("p225", "002"), ("p226", "001")):
        (base / "txt" / spk).mkdir(parents=True, exist_ok=True)
        (base / "txt" / spk / f"{spk}_{utt}.txt").write_text("Please call Stella.\n")
        _write_tree(base, {f"wav48_silence_trimmed/{spk}/{spk}_{utt}_mic2.flac": 4800}, sr=48000)
    ds = VCTK(tmp_path, sample_rate=16000)
    assert len(ds) == 3 and ds.speakers == ["p225", "p226"]
    wav, sr, spk, utt = ds[2]
    assert (sr, spk, utt, wav.shape) == (16000, "p226", "p226_001", (1, 1600))
    assert ds.speaker_index("p226") == 1


def test_hash_split_partitions_non_fsdd_layouts(tmp_path):
    _write_tree(tmp_path, {f"s{k % 2}/u{k:03d}.wav": 80 for k in range(60)})
    everything = {it.utterance for it in SpeakerAudioFolder(tmp_path).items}
    train = {it.utterance for it in SpeakerAudioFolder(tmp_path, split="train").items}
    test = {it.utterance for it in SpeakerAudioFolder(tmp_path, split="test").items}
    assert train | test == everything and not train & test and 0 < len(test) < 20
    assert test == {it.utterance for it in SpeakerAudioFolder(tmp_path, split="test").items}


def test_random_crop_pickles_after_use():
    import pickle

    crop = RandomCrop(3, seed=0)
    crop(torch.arange(10.0)[None])
    clone = pickle.loads(pickle.dumps(crop))
    assert clone.length == 3 and clone._generators == {}
    # A fresh copy restarts from the seed, like a new DataLoader worker would.
    assert torch.equal(
        clone(torch.arange(10.0)[None]), RandomCrop(3, seed=0)(torch.arange(10.0)[None])
    )


def test_frame_label_crops_start_on_frames_and_carry_their_targets():
    from vqkit.datasets.audio import FrameLabelCrops

    # sample s holds s, frame f's target is f: a crop's first sample says where it starts
    frame_hop, per, length = 4, 2, 24  # 3 steps of 8 samples
    seqs = [torch.arange(100), torch.arange(10)]  # the second shorter than a crop
    targets = [np.arange(100 // frame_hop), np.arange(10 // frame_hop + per)]
    ds = FrameLabelCrops(seqs, [5, 7], targets, length, frame_hop=frame_hop, per=per,
                         pad_value=-1, ignore=-100)  # fmt: skip
    torch.manual_seed(0)
    starts = set()
    for _ in range(60):
        crop, mask, label, t = ds[0]
        start = int(crop[0])
        assert start % frame_hop == 0 and label == 5 and mask.all()
        assert torch.equal(crop, torch.arange(start, start + length))
        assert t.tolist() == [start // frame_hop + per * j for j in range(3)]
        starts.add(start)
    assert min(starts) == 0 and max(starts) == 100 - length and len(starts) > 8
    crop, mask, label, t = ds[1]
    assert torch.equal(crop[:10], torch.arange(10)) and (crop[10:] == -1).all()
    assert mask.tolist() == [True] * 10 + [False] * 14 and label == 7
    assert t.tolist() == [0, 2, -100]  # samples 0-9 cover 2 steps; the third is padding
    with pytest.raises(InputError, match="multiple"):
        FrameLabelCrops(seqs, [5, 7], targets, 20, frame_hop=frame_hop, per=per)
    # several targets per frame: (F, S) arrays give (steps, S) targets, padding ignored in all
    two = [np.stack([t, 1000 + t], 1) for t in targets]
    ds2 = FrameLabelCrops(seqs, [5, 7], two, length, frame_hop=frame_hop, per=per,
                          pad_value=-1, ignore=-100)  # fmt: skip
    torch.manual_seed(0)
    for _ in range(10):
        crop, _, _, t = ds2[0]
        first = [int(crop[0]) // frame_hop + per * j for j in range(3)]
        assert t.tolist() == [[f, 1000 + f] for f in first]
    assert ds2[1][3].tolist() == [[0, 1000], [2, 1002], [-100, -100]]
