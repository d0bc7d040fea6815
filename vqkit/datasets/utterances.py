"""Speech utterances held in memory as mu-law classes, with their speakers and labels: the data
of the audio recipe and of ``vqkit units``, from the festival corpus, FSDD, VCTK or a folder of
speaker folders.

Example:
    >>> test = load_utterances("fsdd", "test", root="../shared/data/fsdd", max_files=10)
    >>> test.audio[0].dtype, test.label_kind, test.segments(0)[0].label  # doctest: +SKIP
    (torch.uint8, 'words', '0')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vqkit.audio import MuLawDecode, MuLawEncode
from vqkit.datasets.alignments import Segment
from vqkit.datasets.audio import SpeakerAudioFolder
from vqkit.datasets.speech_corpus import FestivalNotFoundError, SpeechCorpus, build_speech_corpus
from vqkit.errors import InputError

KINDS = ("builtin", "fsdd", "vctk", "folder")
DEFAULT_CORPUS = Path("data/generated/speech")  # as `vqkit data speech`: below the current folder
_LAYOUT = {"fsdd": "fsdd", "vctk": "vctk", "folder": "speaker_dirs"}


@dataclass
class Utterances:
    """Utterances of one split held in memory.

    Attributes:
        audio: per utterance ``(T_i,)`` uint8 mu-law classes at ``sample_rate``.
        speakers, ids: speaker and utterance id of each.
        labels: per utterance its phone segments (``label_kind == "phones"``) or its word, an
            int (``"words"``, FSDD digits); None when the data has no labels.
        sample_rate: samples per second.
        skipped: the files of the split left out as unusable, ``(path, reason)`` each.
    """

    audio: list[torch.Tensor]
    speakers: list[str]
    ids: list[str]
    labels: list | None
    label_kind: str | None
    sample_rate: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def subset(self, idx: list[int]) -> Utterances:
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return Utterances(
            pick(self.audio),
            pick(self.speakers),
            pick(self.ids),
            pick(self.labels),
            self.label_kind,
            self.sample_rate,
            self.skipped,
        )

    def segments(self, i: int) -> list[Segment]:
        """Phone segments of utterance i, or one segment spanning it labelled with its word."""
        if self.label_kind == "phones":
            return self.labels[i]
        if self.label_kind == "words":
            return [Segment(0.0, len(self.audio[i]) / self.sample_rate, str(self.labels[i]))]
        raise InputError("this data has no phone or word labels")

    def waveform(self, i: int) -> torch.Tensor:
        """``(T_i,)`` float waveform (mu-law decoded)."""
        return MuLawDecode(256)(self.audio[i].long())


def spread(n: int, k: int | None) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``k`` is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    if k <= 0:
        raise InputError(f"a count of files or utterances must be positive, got {k}")
    return sorted({(i * n) // k for i in range(k)})


def _to_classes(wav: torch.Tensor, sample_rate: int, max_seconds: float | None) -> torch.Tensor:
    wav = wav.reshape(-1)
    if max_seconds is not None:
        wav = wav[: int(max_seconds * sample_rate)]
    return MuLawEncode(256)(wav).to(torch.uint8)


def corpus_root(root: str | Path | None, num_sentences: int = 300) -> Path:
    """The festival corpus folder (default ``data/generated/speech``), built there first when it
    has no manifest."""
    root = Path(root) if root else DEFAULT_CORPUS
    if not (root / "manifest.json").is_file():
        print(f"vqkit: building the festival speech corpus in {root} (once; a few minutes)")
        try:
            build_speech_corpus(root, num_sentences=num_sentences)
        except FestivalNotFoundError as e:
            raise FileNotFoundError(str(e)) from None
    return root


def load_utterances(
    kind: str,
    split: str,
    *,
    root: str | Path | None = None,
    sample_rate: int = 8000,
    max_files: int | None = None,
    max_seconds: float | None = None,
    num_sentences: int = 300,
    min_seconds: float = 0.1,
    strict: bool = False,
) -> Utterances:
    """The ``split`` ("train" or "test") of a speech data set.

    An unusable file of a folder (unreadable, truncated, NaN or inf samples, shorter than
    ``min_seconds``, float samples peaking above 1) is left out with a warning naming it and
    listed in ``skipped``; with ``strict`` it raises :class:`~vqkit.audio.AudioError` instead.

    Args:
        kind: ``builtin`` (the festival corpus in ``root``, built there once), ``fsdd``
            (``root/recordings/{digit}_{speaker}_{n}.wav``), ``vctk`` or ``folder``
            (``root/<speaker>/*.wav``).
        root: the data folder.
        sample_rate: the rate the audio is resampled to.
        max_files: at most this many utterances, spread evenly over the split.
        max_seconds: longer utterances are cut to this.
        num_sentences: sentences per speaker when the festival corpus is built.
        min_seconds: shorter files are unusable (too short for a log-mel frame or a code).
        strict: an unusable file is an error.
    """
    if kind not in KINDS:
        raise InputError(f"data.kind must be one of {KINDS}, got {kind!r}")
    if kind == "builtin":
        ds = SpeechCorpus(corpus_root(root, num_sentences), split=split, sample_rate=sample_rate)
        idx = spread(len(ds), max_files)
        audio = [_to_classes(ds[i][0], sample_rate, max_seconds) for i in idx]
        utts = [ds.utterances[i] for i in idx]
        return Utterances(
            audio,
            [u["speaker"] for u in utts],
            [u["id"] for u in utts],
            [ds.phones(i) for i in idx],
            "phones",
            sample_rate,
        )
    if root is None:
        raise InputError(f"data.kind={kind!r} needs a data folder: pass --data DIR")
    ds = SpeakerAudioFolder(
        root,
        layout=_LAYOUT[kind],
        split=split,
        sample_rate=sample_rate,
        strict=strict,
        min_seconds=min_seconds,
    )
    items, audio = [], []
    for i in spread(len(ds), max_files):
        if (read := ds.read(i)) is not None:
            items.append(ds.items[i])
            audio.append(_to_classes(read[0], sample_rate, max_seconds))
    if not items:
        raise InputError(f"no usable audio file under {root} for split {split!r}")
    words = ds.layout == "fsdd"
    return Utterances(
        audio,
        [it.speaker for it in items],
        [it.utterance for it in items],
        [it.label for it in items] if words else None,
        "words" if words else None,
        sample_rate,
        [(str(path), reason) for path, reason in ds.skipped],
    )


def load_labelled(
    root: str | Path, *, sample_rate: int = 8000, max_seconds: float | None = None
) -> Utterances:
    """Held-out labelled utterances of a folder for ``vqkit units``: a festival corpus (phones) or
    FSDD (words)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    kind = "builtin" if (root / "manifest.json").is_file() else "fsdd"
    try:
        return load_utterances(
            kind, "test", root=root, sample_rate=sample_rate, max_seconds=max_seconds
        )
    except ValueError as e:
        raise InputError(
            f"{root} holds no labelled speech: `vqkit units` needs a festival corpus (made by "
            f"`vqkit data speech`, phone labels) or FSDD recordings (word labels); {e}"
        ) from None
