"""Readers for time-aligned phone (or word) labels, and per-frame labelling.

Every reader returns a list of :class:`Segment` ``(start_s, end_s, label)`` in seconds, sorted by
time, so unit-discovery metrics can treat TIMIT, Praat/Montreal-Forced-Aligner TextGrids and
festival output alike.

Examples:
    >>> segs = read_timit_phn("SA1.PHN")  # doctest: +SKIP
    >>> frame_labels(segs, frame_rate_hz=250.0, num_frames=10)  # doctest: +SKIP
    ['h#', 'h#', ...]
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from vqkit.errors import InputError

__all__ = [
    "Segment",
    "read_segments",
    "write_segments",
    "read_timit_phn",
    "read_textgrid",
    "read_festival_segs",
    "frame_labels",
]


class Segment(NamedTuple):
    """One labelled stretch of time, in seconds."""

    start_s: float
    end_s: float
    label: str


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"alignment file not found: {path}")
    raw = path.read_bytes()
    # Praat writes UTF-16 (with a byte-order mark) whenever a label is not ASCII.
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is neither UTF-8 nor UTF-16 text: {e}") from e


def _check_order(segments: list[Segment], path: Path) -> list[Segment]:
    for k, s in enumerate(segments):
        if s.end_s < s.start_s:
            raise InputError(f"{path}: segment {k} {s} ends before it starts")
        if k and s.start_s < segments[k - 1].end_s - 1e-9:
            raise InputError(f"{path}: segment {k} {s} overlaps the previous {segments[k - 1]}")
    return segments


def read_segments(path: str | Path) -> list[Segment]:
    """Read vqkit's own segment files: ``start end label`` per line, in seconds."""
    path = Path(path)
    segments = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=2)
        try:
            segments.append(Segment(float(fields[0]), float(fields[1]), fields[2].strip()))
        except (ValueError, IndexError) as e:
            raise InputError(
                f"{path}:{n}: expected 'start end label' in seconds, got {line!r}"
            ) from e
    return _check_order(segments, path)


def write_segments(path: str | Path, segments: Sequence[Segment]) -> Path:
    """Write segments as ``start end label`` lines (seconds, 5 decimals), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s:.5f} {e:.5f} {label}\n" for s, e, label in segments))
    return path


def read_timit_phn(path: str | Path, sample_rate: int = 16000) -> list[Segment]:
    """Read a TIMIT ``.PHN``/``.WRD`` file: lines ``start_sample end_sample label``.

    Args:
        path: the label file.
        sample_rate: rate the sample indices count at (TIMIT: 16000).

    Returns:
        Segments in seconds.
    """
    if sample_rate <= 0:
        raise InputError(f"sample_rate must be positive, got {sample_rate}")
    path = Path(path)
    segments = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3:
            raise InputError(f"{path}:{n}: expected 'start end label', got {line!r}")
        try:
            start, end = int(fields[0]), int(fields[1])
        except ValueError as e:
            raise InputError(
                f"{path}:{n}: start and end must be sample indices, got {line!r}"
            ) from e
        segments.append(Segment(start / sample_rate, end / sample_rate, fields[2]))
    return _check_order(segments, path)


# Praat's text formats are a stream of numbers, "strings" (with "" as an escaped quote) and
# <flags>. The long format only adds `name =` labels and `[n]` indices, which we drop, so one
# tokenizer reads both formats. `!` starts a comment that runs to the end of the line.
_TOKEN = re.compile(
    r'"(?P<str>(?:[^"]|"")*)"'
    r"|(?P<index>\[\s*\d+\s*\])"
    r"|(?P<flag><[a-z]+>)"
    r"|(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])"
    r"|(?P<comment>![^\n]*)"
    r"|(?P<word>[^\s\"\[<!]+)"
)


def _textgrid_tokens(text: str) -> list[str | float]:
    tokens: list[str | float] = []
    for m in _TOKEN.finditer(text):
        if m.group("str") is not None:
            tokens.append(m.group("str").replace('""', '"'))
        elif m.group("num") is not None:
            tokens.append(float(m.group("num")))
        elif m.group("flag") is not None:
            tokens.append(m.group("flag"))
    return tokens


def _parse_textgrid(text: str, path: Path) -> dict[str, tuple[str, list]]:
    """Tier name -> (class, items); interval items are Segments, point items (time, mark)."""
    tokens = _textgrid_tokens(text)
    pos = 0

    def take(kind: type, what: str):
        nonlocal pos
        if pos >= len(tokens):
            raise InputError(f"{path}: TextGrid ends early while reading {what}")
        tok = tokens[pos]
        pos += 1
        if kind is float and not isinstance(tok, float):
            raise InputError(f"{path}: expected a number for {what}, found {tok!r}")
        if kind is str and not isinstance(tok, str):
            raise InputError(f"{path}: expected a string for {what}, found {tok!r}")
        return tok

    if tokens[:2] != ["ooTextFile", "TextGrid"]:
        raise InputError(
            f"{path}: not a Praat TextGrid text file (no 'ooTextFile'/'TextGrid' header)"
        )
    pos = 2
    take(float, "xmin"), take(float, "xmax")
    if pos < len(tokens) and tokens[pos] in ("<exists>", "<absent>"):
        pos += 1
        if tokens[pos - 1] == "<absent>":
            return {}
    tiers: dict[str, tuple[str, list]] = {}
    for t in range(int(take(float, "number of tiers"))):
        cls = take(str, f"tier {t + 1} class")
        name = take(str, f"tier {t + 1} name")
        take(float, "tier xmin"), take(float, "tier xmax")
        count = int(take(float, f"tier {name!r} size"))
        if cls == "IntervalTier":
            items = [
                Segment(take(float, "xmin"), take(float, "xmax"), take(str, "text"))
                for _ in range(count)
            ]
        elif cls == "TextTier":
            items = [(take(float, "time"), take(str, "mark")) for _ in range(count)]
        else:
            raise InputError(f"{path}: unknown tier class {cls!r} for tier {name!r}")
        tiers.setdefault(name, (cls, items))  # like Praat, the first tier of a name wins
    return tiers


def read_textgrid(
    path: str | Path, tier: str | int = "phones", *, keep_empty: bool = True
) -> list[Segment]:
    """Read one interval tier of a Praat TextGrid (long or short text format, UTF-8 or UTF-16).

    Args:
        path: the ``.TextGrid`` file.
        tier: tier name (Montreal Forced Aligner writes ``"phones"`` and ``"words"``), or a
            0-based tier index.
        keep_empty: keep intervals whose label is empty (usually silence); if False they are
            dropped, leaving gaps.

    Returns:
        The tier's intervals as Segments.

    Raises:
        ValueError: the tier is missing (the message lists the tiers), is a point tier, or the file
            is not a TextGrid.
    """
    path = Path(path)
    tiers = _parse_textgrid(_read_text(path), path)
    names = list(tiers)
    if isinstance(tier, int):
        if not 0 <= tier < len(names):
            raise InputError(f"{path}: tier index {tier} out of range; tiers: {names}")
        tier = names[tier]
    if tier not in tiers:
        raise InputError(f"{path}: no tier named {tier!r}; tiers: {names}")
    cls, items = tiers[tier]
    if cls != "IntervalTier":
        raise InputError(f"{path}: tier {tier!r} is a point tier ({cls}), not an interval tier")
    segments = [s for s in items if keep_empty or s.label.strip()]
    return _check_order(segments, path)


def read_festival_segs(path: str | Path) -> list[Segment]:
    """Read festival's ``utt.save.segs`` output (an EST label file).

    After a header that ends in a ``#`` line, each line is ``end_time 100 phone``; a segment starts
    where the previous one ends, the first at 0.
    """
    path = Path(path)
    lines = _read_text(path).splitlines()
    if any(line.strip() == "#" for line in lines):
        lines = lines[[line.strip() for line in lines].index("#") + 1 :]
    segments, start = [], 0.0
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 3:
            raise InputError(
                f"{path}: line {n} after the header: expected 'end 100 label', got {line!r}"
            )
        try:
            end = float(fields[0])
        except ValueError as e:
            raise InputError(f"{path}: line {n} after the header: bad end time in {line!r}") from e
        segments.append(Segment(start, end, " ".join(fields[2:])))
        start = end
    return _check_order(segments, path)


def frame_labels(
    segments: Sequence[Segment],
    frame_rate_hz: float,
    num_frames: int,
    *,
    outside: str | None = None,
    first_centre_s: float | None = None,
) -> list[str]:
    """The label at each frame's centre, ``first_centre_s + i / frame_rate_hz`` seconds.

    Args:
        segments: sorted, non-overlapping segments.
        frame_rate_hz: frames per second (e.g. 16000 / 64 = 250 for a 64x downsampling encoder).
        num_frames: how many frames to label.
        outside: label for frame centres before the first segment, after the last, or in a gap;
            None gives them the nearest segment's label (trailing silence past the last phone is
            common in synthesized and forced-aligned audio).
        first_centre_s: where in the audio frame 0 is centred, in seconds; None: half a frame,
            ``0.5 / frame_rate_hz`` (frame i covering ``[i, i + 1) / frame_rate_hz``). Frames
            of a centred STFT (frame i centred on sample ``i * hop``) take 0; the codes of an
            encoder say where theirs lie (``AudioVQVAE.code_centre``, in samples).

    Returns:
        ``num_frames`` labels.
    """
    if frame_rate_hz <= 0:
        raise InputError(f"frame_rate_hz must be positive, got {frame_rate_hz}")
    if num_frames < 0:
        raise InputError(f"num_frames must be >= 0, got {num_frames}")
    if not segments:
        if outside is None:
            raise InputError("no segments to label frames from; pass outside= to label them anyway")
        return [outside] * num_frames
    segments = _check_order([Segment(*s) for s in segments], Path("<segments>"))
    starts = [s.start_s for s in segments]
    ends = [s.end_s for s in segments]
    first = 0.5 / frame_rate_hz if first_centre_s is None else float(first_centre_s)
    labels = []
    for i in range(num_frames):
        t = first + i / frame_rate_hz
        k = bisect.bisect_right(ends, t)  # first segment ending after t
        if k < len(segments) and starts[k] <= t:
            labels.append(segments[k].label)
        elif outside is not None:
            labels.append(outside)
        elif k == len(segments):
            labels.append(segments[-1].label)
        elif k == 0:
            labels.append(segments[0].label)
        else:  # in a gap: the nearer neighbour
            near = k if starts[k] - t < t - ends[k - 1] else k - 1
            labels.append(segments[near].label)
    return labels
