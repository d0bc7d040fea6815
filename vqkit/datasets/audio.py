"""Multi-speaker speech folders (VCTK, FSDD, one folder per speaker) as map-style data sets.

Items are plain tuples like torchaudio's: ``(waveform (1, T) float32, sample_rate, speaker_id,
utterance_id)``.

Examples:
    >>> ds = SpeakerAudioFolder("../shared/data/fsdd", split="train", crop=4096)  # doctest: +SKIP
    >>> wav, sr, speaker, utt = ds[0]  # (1, 4096), 16000, 'george', '0_george_10'
    >>> ds.speaker_index(speaker), ds.label(0)  # (0, 0)
"""

from __future__ import annotations

import math
import re
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from vqkit.audio import MAX_PEAK, AudioError, audio_info, load_audio
from vqkit.errors import InputError

__all__ = ["AudioItem", "FrameLabelCrops", "SpeakerAudioFolder", "VCTK", "RandomCrop", "skip_file"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif")
LAYOUTS = ("auto", "vctk", "fsdd", "speaker_dirs")
_VCTK_AUDIO_DIRS = ("wav48_silence_trimmed", "wav48")
_VCTK_SUBDIRS = ("", "VCTK-Corpus-0.92", "VCTK-Corpus")
_FSDD_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z0-9]+)_(?P<index>\d+)$")
_MIC_SUFFIX = re.compile(r"^(?P<utt>.+)_(?P<mic>mic[12])$")
_LAYOUT_HELP = (
    "expected one of: VCTK (<root>/wav48/p225/p225_001.wav or wav48_silence_trimmed/..., wav or "
    "flac), FSDD (<root>/recordings/{digit}_{speaker}_{index}.wav), or one folder per speaker "
    "(<root>/<speaker>/*.wav)"
)


def skip_file(
    skipped: list, path: Path, error: Exception, *, strict: bool, where: str, hint: str = ""
) -> None:
    """Leave an unusable audio file out: warn naming it and why, and append ``(path, reason)``
    to ``skipped``; with ``strict`` raise ``error`` instead.

    Args:
        hint: how to make it an error, for the warning (default: ``--set data.strict=true``).
    """
    if strict:
        raise error
    skipped.append((path, str(error)))
    warnings.warn(
        f"skipping an unusable audio file ({error}); {len(skipped)} skipped so far {where}; "
        f"{hint or '--set data.strict=true'} to make it an error",
        RuntimeWarning,
        stacklevel=3,
    )


class AudioItem(NamedTuple):
    """One file of a folder data set; ``label`` is the FSDD digit, else None."""

    path: Path
    speaker: str
    utterance: str
    label: int | None


class RandomCrop:
    """Fixed-length crops of ``(C, T)`` waveforms, shared by the speech data sets.

    Args:
        length: crop length in samples.
        random: a random offset (training) or the centre (evaluation).
        seed: None draws offsets from torch's global RNG, which DataLoader seeds differently in
            each worker; an int gives a private generator seeded ``seed + worker_id``, so a run is
            reproducible whatever the number of workers.
        pad_value: what pads clips shorter than ``length`` at the end (0: silence of float
            audio; :func:`vqkit.audio.silence_class` for mu-law classes).
    """

    def __init__(
        self, length: int, *, random: bool = True, seed: int | None = None, pad_value: float = 0
    ) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise InputError(f"crop must be a positive number of samples, got {length!r}")
        self.length, self.random, self.seed, self.pad_value = length, random, seed, pad_value
        self._generators: dict[int, torch.Generator] = {}

    def _generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        info = get_worker_info()
        worker = info.id if info is not None else -1
        if worker not in self._generators:
            self._generators[worker] = torch.Generator().manual_seed(self.seed + max(worker, 0))
        return self._generators[worker]

    def __getstate__(self) -> dict:
        # Generators are per process: each DataLoader worker seeds its own on first use.
        return {**self.__dict__, "_generators": {}}

    def __call__(self, wav: Tensor) -> Tensor:
        """``(C, T)`` -> ``(C, length)``."""
        t = wav.shape[-1]
        if t < self.length:
            return torch.nn.functional.pad(wav, (0, self.length - t), value=self.pad_value)
        if not self.random:
            start = (t - self.length) // 2
        else:
            start = int(torch.randint(t - self.length + 1, (1,), generator=self._generator()))
        return wav[..., start : start + self.length]


class SequenceCrops(Dataset):
    """Random crops of 1D sequences (mu-law audio classes, codes) with a label each:
    ``(crop (length,), mask (length,) bool, label)``; the mask is False on the padding of a
    sequence shorter than the crop (a loss leaves it out).

    Args:
        sequences: one ``(T_i,)`` tensor per item.
        labels: one int per item (a speaker id).
        length: crop length.
        pad_value: what pads short sequences.
    """

    def __init__(
        self, sequences: list[Tensor], labels: list[int], length: int, *, pad_value: int = 0
    ) -> None:
        self.sequences, self.labels = sequences, labels
        self.crop = RandomCrop(length, pad_value=pad_value)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        x = self.sequences[i].long()
        mask = torch.zeros(self.crop.length, dtype=torch.bool)
        mask[: len(x)] = True
        return self.crop(x), mask, self.labels[i]


class FrameLabelCrops(Dataset):
    """Random crops of 1D sequences (mu-law audio classes) that start on a frame boundary, with
    a label each and the per-step targets of the crop: ``(crop (length,), mask (length,) bool,
    label, targets (length // (frame_hop * per), ...) int64)``.

    ``frame_targets[i][f]`` is the target of the step (e.g. a code of ``per`` frames) that
    starts at frame ``f`` (sample ``f * frame_hop``) of sequence i; a crop starting at frame o
    gets ``frame_targets[i][o], [o + per], [o + 2 * per], ...``. Steps past the end of a
    sequence shorter than the crop get ``ignore``.

    Args:
        sequences: one ``(T_i,)`` tensor per item.
        labels: one int per item (a speaker id).
        frame_targets: one ``(F_i,)`` int array per item, ``F_i >= T_i // frame_hop``, or
            ``(F_i, S)`` for S targets per step (the crop's targets are then ``(steps, S)``).
        length: crop length, a multiple of ``frame_hop * per``.
        frame_hop: samples per frame (crops start on multiples of it).
        per: frames per target step.
        pad_value: what pads short sequences.
        ignore: the target of padding.
    """

    def __init__(
        self,
        sequences: list[Tensor],
        labels: list[int],
        frame_targets: list,
        length: int,
        *,
        frame_hop: int,
        per: int = 1,
        pad_value: int = 0,
        ignore: int = -100,
    ) -> None:
        step = frame_hop * per
        if length % step:
            raise InputError(f"crop {length} must be a multiple of the target hop {step}")
        if len(frame_targets) != len(sequences):
            raise ValueError(f"{len(frame_targets)} target arrays for {len(sequences)} sequences")
        self.sequences, self.labels = sequences, labels
        self.targets = [torch.as_tensor(t, dtype=torch.long) for t in frame_targets]
        self.length, self.frame_hop, self.per = length, frame_hop, per
        self.pad_value, self.ignore = pad_value, ignore

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int, Tensor]:
        x, t = self.sequences[i].long(), self.targets[i]
        steps = self.length // (self.frame_hop * self.per)
        mask = torch.zeros(self.length, dtype=torch.bool)
        mask[: len(x)] = True
        last = (len(x) - self.length) // self.frame_hop  # the latest start frame
        start = int(torch.randint(0, last + 1, ())) if last > 0 else 0
        crop = x[start * self.frame_hop : start * self.frame_hop + self.length]
        crop = torch.nn.functional.pad(crop, (0, self.length - len(crop)), value=self.pad_value)
        idx = start + self.per * torch.arange(steps)
        have = -(-min(len(x), self.length) // (self.frame_hop * self.per))  # steps with audio
        targets = torch.full((steps, *t.shape[1:]), self.ignore, dtype=torch.long)
        targets[:have] = t[idx[:have].clamp_max(len(t) - 1)]
        return crop, mask, self.labels[i], targets


def _hash_split(utterance: str, test_percent: int = 10) -> str:
    # crc32 of the name is stable across runs and machines and does not shift when files are added.
    return "test" if zlib.crc32(utterance.encode()) % 100 < test_percent else "train"


def _audio_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    )


def _find_vctk(root: Path) -> Path | None:
    for sub in _VCTK_SUBDIRS:
        for name in _VCTK_AUDIO_DIRS:
            if (root / sub / name).is_dir():
                return root / sub / name
    return None


def _fsdd_dir(root: Path) -> Path | None:
    for folder in (root / "recordings", root):
        if folder.is_dir() and any(_FSDD_NAME.match(p.stem) for p in _audio_files(folder)):
            return folder
    return None


def _scan_vctk(audio_dir: Path, mic: str) -> list[AudioItem]:
    items = []
    for spk in sorted(p for p in audio_dir.iterdir() if p.is_dir()):
        for f in _audio_files(spk):
            m = _MIC_SUFFIX.match(f.stem)
            if m and m["mic"] != mic:  # VCTK 0.92 holds every utterance twice, once per microphone
                continue
            items.append(AudioItem(f, spk.name, m["utt"] if m else f.stem, None))
    return items


def _scan_fsdd(folder: Path) -> list[AudioItem]:
    items = []
    for f in _audio_files(folder):
        m = _FSDD_NAME.match(f.stem)
        if m:
            items.append(AudioItem(f, m["speaker"], f.stem, int(m["digit"])))
    return items


def _scan_speaker_dirs(root: Path) -> list[AudioItem]:
    items = []
    for spk in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        items += [AudioItem(f, spk.name, f.stem, None) for f in _audio_files(spk)]
    return items


class SpeakerAudioFolder(Dataset):
    """Speech files from several speakers, in one of three folder layouts.

    Args:
        root: the data set folder.
        layout: ``"vctk"``, ``"fsdd"``, ``"speaker_dirs"`` or ``"auto"`` (tried in that order).
        sample_rate: resample every file to this rate (None keeps each file's own).
        crop: None returns whole files; an int returns crops of that many samples (at
            ``sample_rate``): random offsets unless ``random_crop=False`` (centre). Files shorter
            than ``crop`` are zero-padded at the end (``short="pad"``) or left out of the data set
            (``short="skip"``, decided from the headers when the data set is built).
        split: None (all files), ``"train"`` or ``"test"``. FSDD uses its own split (recording
            index 0-4 test, 5-49 train); other layouts put a stable 10% of utterances, chosen by a
            hash of the utterance id, in ``"test"``.
        transform: applied to the ``(1, T)`` waveform after cropping.
        random_crop: default True except for ``split="test"``.
        seed: crop RNG seed (see :class:`RandomCrop`).
        mic: for VCTK 0.92, which microphone's copy to use.
        strict: raise on an unusable file instead of skipping it with a warning. Skipped files
            are listed in ``self.skipped`` as ``(path, reason)``: those with a bad header or
            shorter than ``min_seconds`` when the data set is built, and those that fail to
            decode (truncated data, NaN samples, a peak above ``max_peak``) when an item is
            read, in which case the next readable item is returned in its place (each worker
            of a DataLoader keeps its own list).
        min_seconds: files shorter than this are unusable (too short for a log-mel frame or a
            code), told from their headers.
        max_peak: files whose samples exceed this in magnitude are unusable: float files far
            outside [-1, 1], which mu-law coding would clip (None: no check).

    Returns (per item):
        ``(waveform (1, T), sample_rate, speaker_id, utterance_id)``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        layout: str = "auto",
        sample_rate: int | None = 16000,
        crop: int | None = None,
        split: str | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        random_crop: bool | None = None,
        short: str = "pad",
        seed: int | None = None,
        mic: str = "mic2",
        strict: bool = False,
        min_seconds: float = 0.0,
        max_peak: float | None = MAX_PEAK,
    ) -> None:
        self.root = Path(root)
        self.min_seconds, self.max_peak = min_seconds, max_peak
        if layout not in LAYOUTS:
            raise InputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if split not in (None, "train", "test"):
            raise InputError(f"split must be None, 'train' or 'test', got {split!r}")
        if short not in ("pad", "skip"):
            raise InputError(f"short must be 'pad' or 'skip', got {short!r}")
        if not self.root.is_dir():
            raise FileNotFoundError(f"data set folder not found: {self.root}; {_LAYOUT_HELP}")
        self.sample_rate, self.split, self.transform = sample_rate, split, transform
        self.crop = None
        if crop is not None:
            rand = split != "test" if random_crop is None else random_crop
            self.crop = RandomCrop(crop, random=rand, seed=seed)
        self.layout, items = self._scan(layout, mic)
        if not items:
            raise InputError(
                f"no audio files found under {self.root} (layout={layout!r}); {_LAYOUT_HELP}"
            )
        if split is not None:
            items = [it for it in items if self._split_of(it) == split]
        self.strict = strict
        self._bad: set[Path] = set()
        self.items, self.skipped = self._probe(items, short, strict)
        if not self.items:
            raise InputError(
                f"no usable files in {self.root} for split={split!r} "
                f"({len(self.skipped)} skipped); {_LAYOUT_HELP}"
            )
        self.speakers = sorted({it.speaker for it in self.items})
        self._speaker_to_index = {s: i for i, s in enumerate(self.speakers)}

    def _scan(self, layout: str, mic: str) -> tuple[str, list[AudioItem]]:
        if layout in ("auto", "vctk") and (vctk := _find_vctk(self.root)) is not None:
            return "vctk", _scan_vctk(vctk, mic)
        if layout == "vctk":
            return "vctk", []
        if layout in ("auto", "fsdd") and (fsdd := _fsdd_dir(self.root)) is not None:
            return "fsdd", _scan_fsdd(fsdd)
        if layout == "fsdd":
            return "fsdd", []
        return "speaker_dirs", _scan_speaker_dirs(self.root)

    def _split_of(self, item: AudioItem) -> str:
        if self.layout == "fsdd":
            return "test" if int(_FSDD_NAME.match(item.utterance)["index"]) < 5 else "train"
        return _hash_split(item.utterance)

    def _probe(self, items: list[AudioItem], short: str, strict: bool):
        kept = []
        self.skipped: list[tuple[Path, str]] = []
        for it in items:
            try:
                info = audio_info(it.path, min_seconds=self.min_seconds)
            except AudioError as e:
                self.skip(it.path, e)
                continue
            if short == "skip" and self.crop is not None:
                rate = self.sample_rate or info.sample_rate
                if math.ceil(info.frames * rate / info.sample_rate) < self.crop.length:
                    continue
            kept.append(it)
        return kept, self.skipped

    def skip(self, path: Path, error: Exception) -> None:
        """Leave an unusable file out (:func:`skip_file`), and never read it again."""
        skip_file(self.skipped, path, error, strict=self.strict, where=f"under {self.root}")
        self._bad.add(path)

    def read(self, i: int) -> tuple[Tensor, int] | None:
        """``(waveform (1, T), sample_rate)`` of item ``i``, whole (no crop or transform), or
        None when the file turns out unusable (then skipped: :meth:`skip`)."""
        path = self.items[i].path
        if path in self._bad:
            return None
        try:
            return load_audio(path, sample_rate=self.sample_rate, max_peak=self.max_peak)
        except (AudioError, FileNotFoundError) as e:
            self.skip(path, e)
            return None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int, str, str]:
        n = len(self.items)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} audio files under {self.root}")
        for offset in range(n):
            item = self.items[(i + offset) % n]
            # A header can look fine while the data is cut short or holds NaN: skip the file
            # rather than end a training run, and say so once.
            read = self.read((i + offset) % n)
            if read is None:
                continue
            wav, sr = read  # (1, T)
            if self.crop is not None:
                wav = self.crop(wav)
            if self.transform is not None:
                wav = self.transform(wav)
            return wav, sr, item.speaker, item.utterance
        raise InputError(f"none of the {n} audio files under {self.root} could be read")

    def speaker_index(self, name: str) -> int:
        """Position of a speaker in ``self.speakers`` (for speaker embeddings)."""
        if name not in self._speaker_to_index:
            raise KeyError(f"unknown speaker {name!r}; speakers: {self.speakers}")
        return self._speaker_to_index[name]

    @property
    def labels(self) -> list[int]:
        """FSDD digit of every item."""
        if self.layout != "fsdd":
            raise InputError(
                f"labels exist only for the FSDD layout, this folder is {self.layout!r}"
            )
        return [it.label for it in self.items]

    def label(self, i: int) -> int:
        """FSDD digit of item ``i``."""
        if self.layout != "fsdd":
            raise InputError(
                f"labels exist only for the FSDD layout, this folder is {self.layout!r}"
            )
        return self.items[i].label


class VCTK(Dataset):
    """VCTK 0.92 through ``torchaudio.datasets.VCTK_092`` (download and file list), read with
    soundfile, returning ``(waveform (1, T), sample_rate, speaker_id, utterance_id)`` like
    :class:`SpeakerAudioFolder` (utterance ids look like ``"p225_001"``).

    Args:
        root: folder holding ``VCTK-Corpus-0.92`` (or where to download it, about 11 GB).
        download: fetch the archive if it is missing.
        mic: ``"mic1"`` or ``"mic2"``.
        sample_rate: resample to this rate (VCTK is 48 kHz); None keeps it.
        crop, transform, seed: as in :class:`SpeakerAudioFolder` (random crops).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        download: bool = False,
        mic: str = "mic2",
        sample_rate: int | None = 16000,
        crop: int | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        seed: int | None = None,
    ) -> None:
        root = Path(root)
        if mic not in ("mic1", "mic2"):
            raise InputError(f"mic must be 'mic1' or 'mic2', got {mic!r}")
        if not download and not (root / "VCTK-Corpus-0.92").is_dir():
            raise FileNotFoundError(
                f"VCTK 0.92 not found at {root / 'VCTK-Corpus-0.92'}; pass download=True to fetch it "
                "(about 11 GB), or point root at the folder that holds VCTK-Corpus-0.92"
            )
        from torchaudio.datasets import VCTK_092

        self._inner = VCTK_092(str(root), mic_id=mic, download=download)
        self.mic, self.sample_rate, self.transform = mic, sample_rate, transform
        self.crop = None if crop is None else RandomCrop(crop, seed=seed)
        self.speakers = sorted({spk for spk, _ in self._inner._sample_ids})

    def __len__(self) -> int:
        return len(self._inner)

    def __getitem__(self, i: int) -> tuple[Tensor, int, str, str]:
        spk, utt = self._inner._sample_ids[i]
        name = f"{spk}_{utt}_{self.mic}{self._inner._audio_ext}"
        wav, sr = load_audio(
            Path(self._inner._audio_dir) / spk / name, sample_rate=self.sample_rate
        )
        if self.crop is not None:
            wav = self.crop(wav)
        if self.transform is not None:
            wav = self.transform(wav)
        return wav, sr, spk, f"{spk}_{utt}"

    def speaker_index(self, name: str) -> int:
        """Position of a speaker in ``self.speakers``."""
        if name not in self.speakers:
            raise KeyError(f"unknown speaker {name!r}; {len(self.speakers)} VCTK speakers")
        return self.speakers.index(name)
