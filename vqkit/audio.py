"""Audio file I/O and mu-law transforms.

Files are read with ``soundfile`` (libsndfile), never ``torchaudio.load``: recent torchaudio
releases route loading through optional backends, while libsndfile reads WAV, FLAC and OGG
everywhere with no extra install.

Examples:
    >>> wav, sr = load_audio("speech.wav", sample_rate=16000)  # doctest: +SKIP
    >>> wav.shape  # (1, T) float32 in [-1, 1]
    >>> codes = MuLawEncode(256)(wav)  # (1, T) int64 in [0, 255]
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
from torch import Tensor, nn

from vqkit.errors import InputError

__all__ = [
    "AudioError",
    "MAX_PEAK",
    "AudioInfo",
    "audio_info",
    "load_audio",
    "save_audio",
    "audio_format",
    "AUDIO_FORMATS",
    "MuLawEncode",
    "MuLawDecode",
    "LogMel",
]


class AudioError(InputError):
    """An audio file could not be read, or holds no usable samples."""


# The largest sample magnitude the data sets and `vqkit convert` accept: mu-law coding clips
# anything beyond 1, so a float file far outside [-1, 1] is refused rather than clipped.
MAX_PEAK = 1.0


def _check_rate(sample_rate: int, name: str) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise ValueError(f"{name} must be a positive int, got {sample_rate!r}")
    if sample_rate <= 0:
        raise ValueError(f"{name} must be a positive int, got {sample_rate}")
    return int(sample_rate)


def _wav_missing_bytes(path: Path) -> int:
    """Bytes promised by a RIFF/WAVE ``data`` chunk header but absent from the file (0 if whole).

    Streamed WAVs written with an unknown length (size 0 or 0xFFFFFFFF) and non-WAV files count as
    whole; libsndfile itself rejects files whose headers are unreadable.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            tag, length = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if tag == b"data":
                if length in (0, 0xFFFFFFFF):
                    return 0
                return max(0, pos + 8 + length - size)
            pos += 8 + length + (length & 1)  # chunks are padded to even sizes
    return 0


class AudioInfo(NamedTuple):
    """What a file's header says: ``frames`` per channel, ``sample_rate``, ``channels``."""

    frames: int
    sample_rate: int
    channels: int


def audio_info(path: str | Path, *, min_seconds: float = 0.0) -> AudioInfo:
    """Read an audio file's header only (cheap), with the same checks as :func:`load_audio`.

    Args:
        path: the file.
        min_seconds: a file shorter than this is refused (too short to analyse: a log-mel
            frame, a code).

    Raises:
        FileNotFoundError: the file does not exist.
        AudioError: unreadable header, truncated WAV data, zero length, or too short.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"cannot read audio file {path}: {e}") from e
    missing = _wav_missing_bytes(path)
    if missing > 0:
        raise AudioError(
            f"audio file {path} is truncated: {missing} bytes of its data chunk are missing"
        )
    if info.frames <= 0:
        raise AudioError(f"audio file {path} holds no samples (zero length)")
    if info.frames < min_seconds * info.samplerate:
        raise AudioError(
            f"audio file {path} is too short: {info.frames / info.samplerate:.3g} s "
            f"({info.frames} samples at {info.samplerate} Hz), under the {min_seconds:g} s "
            "minimum (data.min_seconds)"
        )
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def resample(wav: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Band-limited resampling of ``(..., T)`` audio (``torchaudio.functional.resample``)."""
    # torchaudio is imported on first use: it costs seconds, and reading files does not need it.
    import torchaudio.functional as AF

    orig_rate, new_rate = _check_rate(orig_rate, "orig_rate"), _check_rate(new_rate, "new_rate")
    return wav if orig_rate == new_rate else AF.resample(wav, orig_rate, new_rate)


def _check_peak(data: np.ndarray, path: Path, max_peak: float | None) -> None:
    if max_peak is None or data.size == 0:
        return
    peak = float(np.abs(data).max())
    if peak > max_peak:
        raise AudioError(
            f"audio file {path} peaks at {peak:.3g}, above {max_peak:g}: its float samples "
            "would be clipped to [-1, 1]; rescale the file (divide by its peak)"
        )


def load_audio(
    path: str | Path,
    *,
    sample_rate: int | None = None,
    mono: bool = True,
    min_seconds: float = 0.0,
    max_peak: float | None = None,
) -> tuple[Tensor, int]:
    """Read an audio file as float32.

    Integer PCM files (8, 16, 24 and 32 bit) are scaled to [-1, 1) by libsndfile. Float files are
    returned as stored (not rescaled or clipped), so they stay in [-1, 1] when they were written so.

    Args:
        path: any format libsndfile reads (WAV, FLAC, OGG, AIFF, ...).
        sample_rate: resample to this rate (``torchaudio.functional.resample``); None keeps the
            file's rate.
        mono: average the channels into one.
        min_seconds: refuse a file shorter than this (see :func:`audio_info`).
        max_peak: refuse a file whose samples (as stored, before resampling) exceed this in
            magnitude: a float file far outside [-1, 1], which mu-law coding would clip.

    Returns:
        ``(waveform, sample_rate)``: waveform ``(1, T)`` if ``mono`` else ``(C, T)``, float32.

    Raises:
        FileNotFoundError: the file does not exist.
        AudioError: the file is unreadable, truncated or corrupt, holds no samples, holds
            NaN/inf, is too short, or peaks above ``max_peak``.
    """
    path = Path(path)
    if sample_rate is not None:
        sample_rate = _check_rate(sample_rate, "sample_rate")
    info = audio_info(path, min_seconds=min_seconds)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"cannot read audio file {path}: {e}") from e
    # A compressed stream cut short decodes fewer frames than its header promises.
    if data.shape[0] < info.frames:
        raise AudioError(
            f"audio file {path} is truncated or corrupt: header says {info.frames} frames, "
            f"decoded {data.shape[0]}"
        )
    if not np.isfinite(data).all():
        raise AudioError(f"audio file {path} holds NaN or infinite samples")
    _check_peak(data, path, max_peak)
    wav = torch.from_numpy(np.ascontiguousarray(data.T))  # (C, T)
    if mono and wav.shape[0] > 1:
        wav = wav.mean(dim=0, keepdim=True)  # (1, T)
    if sample_rate is not None and sample_rate != sr:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return wav.contiguous(), int(sr)


def read_chunks(
    path: str | Path,
    *,
    sample_rate: int,
    seconds: float = 10.0,
    min_seconds: float = 0.0,
    max_peak: float | None = None,
) -> Iterator[Tensor]:
    """An audio file as consecutive mono float32 chunks ``(T_i,)`` at ``sample_rate``, about
    ``seconds`` each, read from disk as they are needed: memory stays bounded by one chunk
    however long the file is (each chunk is resampled on its own).

    Raises:
        FileNotFoundError, AudioError: as :func:`load_audio` (NaN or inf, or a peak above
            ``max_peak``, in a chunk included).
    """
    path = Path(path)
    info = audio_info(path, min_seconds=min_seconds)
    block = max(1, int(seconds * info.sample_rate))
    try:
        for data in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
            if not np.isfinite(data).all():
                raise AudioError(f"audio file {path} holds NaN or infinite samples")
            _check_peak(data, path, max_peak)
            wav = torch.from_numpy(data.mean(axis=1))
            yield resample(wav, info.sample_rate, sample_rate)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"cannot read audio file {path}: {e}") from e


# What an output file's extension writes: (libsndfile format, subtype).
AUDIO_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


def audio_format(path: str | Path) -> tuple[str, str]:
    """``(format, subtype)`` that :func:`save_audio` writes for ``path``'s extension.

    Raises:
        InputError: an extension libsndfile is not asked to write here (``.mp3``, none).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in AUDIO_FORMATS:
        raise InputError(
            f"cannot write audio to {path}: unknown extension {suffix or '(none)'!r}; use "
            f"{', '.join(AUDIO_FORMATS)}"
        )
    return AUDIO_FORMATS[suffix]


def save_audio(path: str | Path, wav: Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write a waveform in the format of the file's extension (16-bit WAV or FLAC, Ogg
    Vorbis: :data:`AUDIO_FORMATS`), creating parent folders.

    Args:
        path: output file (``.wav``, ``.flac`` or ``.ogg``; another extension is refused).
        wav: ``(T,)`` or ``(C, T)`` float samples; values outside [-1, 1] are clipped.
        sample_rate: samples per second.

    Returns:
        The path written.
    """
    sample_rate = _check_rate(sample_rate, "sample_rate")
    if isinstance(wav, Tensor):
        wav = wav.detach().to("cpu", torch.float32).numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2 or wav.shape[1] == 0:
        raise ValueError(f"wav must be (T,) or (C, T) with T > 0, got shape {tuple(wav.shape)}")
    if not np.isfinite(wav).all():
        raise ValueError(f"wav for {path} holds NaN or infinite values; refusing to write it")
    path = Path(path)
    fmt, subtype = audio_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wav, -1.0, 1.0).T, sample_rate, subtype=subtype, format=fmt)
    return path


class MuLawEncode(nn.Module):
    """Mu-law companding then quantization of ``[-1, 1]`` audio into ``classes`` integer levels.

    Examples:
        >>> MuLawEncode(256)(torch.zeros(1, 4))
        tensor([[128, 128, 128, 128]])
    """

    def __init__(self, classes: int = 256) -> None:
        super().__init__()
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
            raise ValueError(f"classes must be an int >= 2, got {classes!r}")
        self.classes = classes

    def forward(self, wav: Tensor) -> Tensor:
        """``(..., T)`` float in [-1, 1] -> ``(..., T)`` int64 in ``[0, classes)``."""
        if not wav.is_floating_point():
            raise ValueError(f"MuLawEncode expects float audio in [-1, 1], got dtype {wav.dtype}")
        # Out-of-range inputs would wrap past the top level after the cast, so clip first.
        import torchaudio.functional as AF

        return AF.mu_law_encoding(wav.clamp(-1.0, 1.0), self.classes)

    def extra_repr(self) -> str:
        return f"classes={self.classes}"


def silence_class(classes: int = 256) -> int:
    """The mu-law class of 0.0 (silence): what :class:`MuLawEncode` gives a zero sample."""
    return int(MuLawEncode(classes)(torch.zeros(1))[0])


class MuLawDecode(nn.Module):
    """Inverse of :class:`MuLawEncode`: integer levels back to ``[-1, 1]`` float audio."""

    def __init__(self, classes: int = 256) -> None:
        super().__init__()
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
            raise ValueError(f"classes must be an int >= 2, got {classes!r}")
        self.classes = classes

    def forward(self, codes: Tensor) -> Tensor:
        """``(..., T)`` ints in ``[0, classes)`` -> ``(..., T)`` float32."""
        if codes.is_floating_point() or codes.is_complex():
            raise ValueError(f"MuLawDecode expects integer codes, got dtype {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.classes):
            raise ValueError(
                f"codes must lie in [0, {self.classes}), got range "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        import torchaudio.functional as AF

        return AF.mu_law_decoding(codes, self.classes).to(torch.float32)

    def extra_repr(self) -> str:
        return f"classes={self.classes}"


class LogMel(nn.Module):
    """Waveforms ``(B, T)`` in [-1, 1] -> log-mel frames ``(B, n_mels, 1 + T // hop)``.

    Args:
        sample_rate: samples per second.
        n_mels: mel bands.
        frame_ms: analysis window in milliseconds.
        hop_ms: frame step in milliseconds (frame rate ``1000 / hop_ms`` Hz).
        pad_mode: how the signal is padded by half a window at both ends (``"reflect"``, or
            ``"constant"`` for zeros, which also accepts inputs shorter than half a window).
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        n_mels: int = 40,
        frame_ms: float = 25.0,
        hop_ms: float = 10.0,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        import torchaudio  # imported on first use: it costs seconds

        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
        self.sample_rate = sample_rate
        self.hop = max(1, round(sample_rate * hop_ms / 1000))
        win = max(2, round(sample_rate * frame_ms / 1000))
        n_fft = 1 << (win - 1).bit_length()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate,
            n_fft=n_fft,
            win_length=win,
            hop_length=self.hop,
            n_mels=n_mels,
            pad_mode=pad_mode,
        )

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop

    def num_frames(self, num_samples: int) -> int:
        """Frames of a waveform of ``num_samples`` samples."""
        return 1 + num_samples // self.hop

    def forward(self, wav: Tensor) -> Tensor:
        return torch.log(self.mel(wav.float()) + 1e-5)
