"""The built-in phone-labelled multi-speaker speech corpus, synthesized offline with festival.

Real phone-aligned multi-speaker corpora (TIMIT, VCTK + forced alignment) are licensed or large;
this one is made on any Debian/Ubuntu machine in a couple of minutes and carries *exact* phone
timings (festival's own segment times), so unit-discovery metrics (code-to-phone accuracy, PNMI,
ABX) and voice conversion can be tested end to end offline.

Every speaker reads every sentence of a seeded, deterministic list of short English sentences;
train/test are split by sentence (every 10th sentence, starting with the first, is test), so test
sentences are unseen in training for every speaker. The speakers (see :data:`SPEAKERS`):

* ``kal``, ``ked``: festival's two US male diphone voices with their default prosody.
* ``kal_high``: kal with its intonation target moved to 150 Hz mean / 22 Hz spread and 0.85x
  durations (a higher, faster speaker).
* ``ked_low``: ked with a 80 Hz / 10 Hz intonation target and 1.2x durations (lower, slower).
* ``slt``: the US female CMU ARCTIC SLT HTS (statistical parametric) voice.
* ``slt_deep``: slt resampled by 0.8 (pitch *and* formants lowered, as if by a longer vocal
  tract: about 140 Hz), synthesized first at HTS speech rate 1.25 so its tempo stays close to slt's.

Layout written by :func:`build_speech_corpus`::

    <out>/wav/<speaker>/<utt>.wav        16-bit PCM, mono, at sample_rate
    <out>/phones/<speaker>/<utt>.txt     "start end phone" per line, seconds
    <out>/sentences.txt                  "s0000<TAB>text" per line
    <out>/manifest.json                  speakers, utterances, split, phone set, build parameters

The phone times come from festival's ``utt.save.segs`` scaled by any resampling shift; the final
pause is extended to the end of the waveform (diphone voices append up to ~30 ms of trailing
silence past the last segment), so phones tile the whole file.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vqkit.audio import load_audio, resample, save_audio
from vqkit.datasets.alignments import Segment, read_festival_segs, read_segments, write_segments
from vqkit.datasets.audio import RandomCrop
from vqkit.errors import InputError

__all__ = [
    "FESTIVAL_APT_COMMAND",
    "SPEAKERS",
    "FestivalNotFoundError",
    "make_sentences",
    "build_speech_corpus",
    "main_build",
    "SpeechCorpus",
]

FESTIVAL_APT_COMMAND = (
    "apt-get update && apt-get install -y festival festvox-kallpc16k festvox-kdlpc16k "
    "festvox-us-slt-hts"
)
CORPUS_VERSION = 1
DEFAULT_NUM_SENTENCES = 300
SILENCES = frozenset({"pau", "sil", "h#"})
_BATCH = 40  # utterances per festival process: one process start per batch, not per utterance


class Speaker(NamedTuple):
    """How one corpus speaker is made from a festival voice."""

    name: str
    voice: str  # festival voice function
    description: str
    duration_stretch: float = 1.0  # festival Duration_Stretch (diphone voices)
    f0_mean: float | None = None  # int_lr_params target_f0_mean in Hz (diphone voices)
    f0_std: float | None = None
    hts_rate: float | None = None  # hts_engine "-r" speech-rate factor (HTS voice)
    shift: float = 1.0  # resampling factor < 1 lowers pitch and formants and lengthens by 1/shift


SPEAKERS: tuple[Speaker, ...] = (
    Speaker("kal", "voice_kal_diphone", "US male diphone voice (CMU KAL), default prosody"),
    Speaker(
        "kal_high", "voice_kal_diphone", "kal, f0 target 150 Hz mean / 22 Hz std, 0.85x durations",
        duration_stretch=0.85, f0_mean=150, f0_std=22,
    ),
    Speaker("ked", "voice_ked_diphone", "US male diphone voice (CSTR KED), default prosody"),
    Speaker(
        "ked_low", "voice_ked_diphone", "ked, f0 target 80 Hz mean / 10 Hz std, 1.2x durations",
        duration_stretch=1.2, f0_mean=80, f0_std=10,
    ),
    Speaker("slt", "voice_cmu_us_slt_arctic_hts", "US female HTS voice (CMU ARCTIC SLT)"),
    Speaker(
        "slt_deep", "voice_cmu_us_slt_arctic_hts",
        "slt at HTS rate 1.25, then resampled by 0.8: pitch and formants lowered ~20%",
        hts_rate=1.25, shift=0.8,
    ),
)  # fmt: skip


class FestivalNotFoundError(RuntimeError):
    """festival (or one of its voices) is not installed."""


# ----------------------------------------------------------------------------- sentences

_W = {
    "adj": "big small red green quiet happy young old brave cheap deep sharp smooth rough warm "
    "cold yellow purple famous gentle lazy busy noisy shiny heavy tiny huge soft ugly strange",
    "noun": "boy girl dog cat horse judge king queen teacher doctor farmer sailor baker "
    "singer father mother neighbor pilot lawyer",
    "thing": "book chair table garden window apple orange bottle coin cloud river mountain "
    "village kitchen engine treasure measure picture vision journey thumb feather bridge "
    "ship cheese bread jacket pocket shoe wagon violin",
    "verb": "found moved washed pushed watched painted bought caught carried opened "
    "closed fixed measured borrowed joined chose",
    "verb_base": "find move wash push watch paint buy catch carry open close fix measure "
    "borrow join choose",
    "prep": "near behind under beside over through inside across",
    "adv": "slowly quickly gently loudly early rarely often yesterday today again",
    "name": "Jack Mary George Lucy Peter Sarah Thomas Judy Oliver Zoe Charles Ruth",
    "num": "two three four five six seven eight nine ten",
    "place": "shop school church harbor station forest market",
}
WORDS = {k: v.split() for k, v in _W.items()}
# A slot named like `thing2` draws from `thing` too, but never the same word as `thing`.
_TEMPLATES = (
    "The {adj} {noun} {verb} the {thing} {adv}.",
    "{name} {verb} a {adj} {thing} {prep} the {thing2}.",
    "Did the {noun} {verb_base} the {thing} {prep} the {place}?",
    "{num} {adj} {noun}s {verb} {num2} {thing}s.",
    "Please {verb_base} the {adj} {thing} for {name}.",
    "My {noun} {verb} the {thing} {prep} the {place} {adv}.",
    "{name} and the {noun} {verb} a {thing} {adv}.",
    "Why did {name} {verb_base} the {adj} {thing} and the {adj2} {thing2}?",
)


def _plural(word: str) -> str:
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def make_sentences(num_sentences: int, seed: int = 0) -> list[str]:
    """A deterministic list of distinct short sentences from a small seeded grammar.

    The first ``n`` sentences do not depend on ``num_sentences``, so a small corpus is a prefix of
    a larger one with the same seed.
    """
    if num_sentences <= 0:
        raise InputError(f"num_sentences must be positive, got {num_sentences}")
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < num_sentences:
        template = _TEMPLATES[rng.randrange(len(_TEMPLATES))]
        fields = {}
        for key, words in WORDS.items():
            first, second = rng.sample(words, 2)
            fields[key], fields[key + "2"] = first, second
        # Plurals are spelled out so irregular-looking forms never reach the lexicon guesser.
        text = template.replace("}s", "_pl}")
        for key in WORDS:
            for k in (key, key + "2"):
                fields[k + "_pl"] = _plural(fields[k])
        text = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text.format(**fields))
        text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


# ----------------------------------------------------------------------------- festival


def _scheme_str(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival_script(speaker: Speaker, jobs: list[tuple[str, str]], tmp: Path) -> str:
    """One Scheme program synthesizing ``jobs`` [(utt_id, text)] into ``tmp/<utt>.wav|.segs``."""
    lines = [f"({speaker.voice})", f"(Parameter.set 'Duration_Stretch {speaker.duration_stretch})"]
    if speaker.f0_mean is not None:
        lines.append(
            f"(set! int_lr_params '((target_f0_mean {speaker.f0_mean}) "
            f"(target_f0_std {speaker.f0_std}) (model_f0_mean 170) (model_f0_std 34)))"
        )
    if speaker.hts_rate is not None:
        lines.append(
            f'(set! hts_engine_params (append hts_engine_params \'(("-r" {speaker.hts_rate}))))'
        )
    lines.append("(define (vqkit_synth u wav segs) (utt.synth u) "
                 "(utt.save.wave u wav 'riff) (utt.save.segs u segs))")  # fmt: skip
    for utt, text in jobs:
        # `Utterance` does not evaluate its arguments, so the text goes in as a literal.
        lines.append(
            f"(vqkit_synth (Utterance Text {_scheme_str(text)}) "
            f"{_scheme_str(tmp / (utt + '.wav'))} {_scheme_str(tmp / (utt + '.segs'))})"
        )
    return "\n".join(lines) + "\n"


def _festival() -> str:
    exe = shutil.which("festival")
    if exe is None:
        raise FestivalNotFoundError(
            f"festival is not installed; the speech corpus needs it. Install it with: "
            f"{FESTIVAL_APT_COMMAND}"
        )
    return exe


def _run_batch(
    exe: str, speaker: Speaker, jobs: list[tuple[str, str]], out: Path, tmp: Path, sample_rate: int
) -> list[dict]:
    """Synthesize one batch with one festival process, then write the final wav + phone files."""
    tmp.mkdir(parents=True, exist_ok=True)
    script = tmp / "batch.scm"
    script.write_text(_festival_script(speaker, jobs, tmp))
    proc = subprocess.run([exe, "-b", str(script)], capture_output=True, text=True, timeout=1800)
    records = []
    for utt, _ in jobs:
        raw_wav, raw_segs = tmp / f"{utt}.wav", tmp / f"{utt}.segs"
        if not (raw_wav.is_file() and raw_segs.is_file()):
            log = (proc.stdout + proc.stderr).strip()[-800:]
            raise FestivalNotFoundError(
                f"festival did not synthesize {utt} with {speaker.voice} (exit {proc.returncode}); "
                f"is the voice installed? ({FESTIVAL_APT_COMMAND}). festival said: {log}"
            )
        records.append(_finish(speaker, utt, raw_wav, raw_segs, out, sample_rate))
    return records


def _finish(
    speaker: Speaker, utt: str, raw_wav: Path, raw_segs: Path, out: Path, rate: int
) -> dict:
    wav, sr = load_audio(raw_wav)  # (1, T) at the voice's rate (16 kHz diphones, 32 kHz HTS)
    # y(t) = x(shift * t) at `rate` is x resampled to rate/shift; round that rate to a multiple of
    # 100 Hz so the resampling kernel stays small, and scale the phone times by the exact factor.
    new_rate = rate if speaker.shift == 1.0 else int(round(rate / speaker.shift / 100) * 100)
    stretch = new_rate / rate
    if new_rate != sr:
        wav = resample(wav, sr, new_rate)
    duration = wav.shape[-1] / rate
    segs = [Segment(s * stretch, e * stretch, lab) for s, e, lab in read_festival_segs(raw_segs)]
    festival_end = segs[-1].end_s if segs else 0.0
    if segs and segs[-1].label in SILENCES and segs[-1].end_s < duration:
        segs[-1] = segs[-1]._replace(end_s=duration)
    wav_rel = Path("wav") / speaker.name / f"{utt}.wav"
    phn_rel = Path("phones") / speaker.name / f"{utt}.txt"
    save_audio(out / wav_rel, wav, rate)
    write_segments(out / phn_rel, segs)
    return {
        "id": utt,
        "speaker": speaker.name,
        "wav": wav_rel.as_posix(),
        "phones": phn_rel.as_posix(),
        "num_samples": int(wav.shape[-1]),
        "festival_end_s": round(festival_end, 5),  # before the final pause was extended
        "phone_set": sorted({lab for _, _, lab in segs}),
    }


def _festival_version(exe: str) -> str:
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def build_speech_corpus(
    out_dir: str | Path,
    *,
    num_sentences: int = DEFAULT_NUM_SENTENCES,
    seed: int = 0,
    sample_rate: int = 16000,
    overwrite: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Synthesize the corpus into ``out_dir`` (see the module docstring), or reuse it.

    Args:
        out_dir: output folder (created).
        num_sentences: sentences per speaker (each spoken by all :data:`SPEAKERS`).
        seed: seed of the sentence grammar.
        sample_rate: rate of the written wavs.
        overwrite: rebuild even when a corpus with other parameters, or an interrupted build, is
            there (its wav/, phones/ and manifest are deleted first).
        workers: festival processes run at once.
        progress: a progress bar over the utterances synthesized (the default corpus takes
            minutes).

    Returns:
        ``out_dir``. When ``out_dir/manifest.json`` records the same parameters, nothing is done.

    Raises:
        FestivalNotFoundError: festival or a voice is missing; the message gives the apt command.
    """
    out = Path(out_dir)
    params = {
        "version": CORPUS_VERSION,
        "num_sentences": int(num_sentences),
        "seed": int(seed),
        "sample_rate": int(sample_rate),
        "speakers": [s._asdict() for s in SPEAKERS],
    }
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and not overwrite:
        if json.loads(manifest_path.read_text()).get("params") == params:
            return out
        raise InputError(
            f"{out} holds a speech corpus built with other parameters; delete the folder to "
            "rebuild it, or choose another one (vqkit data speech --out DIR)"
        )
    if not overwrite and ((out / "wav").exists() or (out / "phones").exists()):
        raise InputError(
            f"{out} has wav/ or phones/ but no manifest.json (an interrupted build?); delete "
            "the folder to rebuild it"
        )
    if sample_rate <= 0 or workers <= 0:
        raise InputError(f"sample_rate and workers must be positive, got {sample_rate}, {workers}")
    sentences = make_sentences(num_sentences, seed)
    exe = _festival()
    for name in ("wav", "phones", "manifest.json"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)

    tasks = []
    for spk in SPEAKERS:
        jobs = [(f"{spk.name}_{i:04d}", text) for i, text in enumerate(sentences)]
        tasks += [(spk, jobs[k : k + _BATCH]) for k in range(0, len(jobs), _BATCH)]
    with tempfile.TemporaryDirectory(prefix="vqkit-festival-") as tmp:
        total = sum(len(jobs) for _, jobs in tasks)
        bar = tqdm(total=total, unit="utt", desc="festival corpus", disable=not progress)
        with bar, ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {
                pool.submit(_run_batch, exe, spk, jobs, out, Path(tmp) / f"b{n}", sample_rate): n
                for n, (spk, jobs) in enumerate(tasks)
            }
            for done in as_completed(futures):
                bar.update(len(tasks[futures[done]][1]))
            records = [r for f in futures for r in f.result()]

    split_of = {i: "test" if i % 10 == 0 else "train" for i in range(len(sentences))}
    for r in records:
        i = int(r["id"].rsplit("_", 1)[1])
        r.update(sentence=f"s{i:04d}", split=split_of[i])
    phone_set = sorted({p for r in records for p in r.pop("phone_set")})
    (out / "sentences.txt").write_text("".join(f"s{i:04d}\t{t}\n" for i, t in enumerate(sentences)))
    manifest = {
        "name": "vqkit festival speech corpus",
        "params": params,
        "festival": _festival_version(exe),
        "speakers": [
            {"name": s.name, "voice": s.voice, "description": s.description} for s in SPEAKERS
        ],
        "sentences": {f"s{i:04d}": t for i, t in enumerate(sentences)},
        "splits": {
            k: [f"s{i:04d}" for i, v in split_of.items() if v == k] for k in ("train", "test")
        },
        "phone_set": phone_set,
        "utterances": records,
    }
    # Written last: its presence marks a complete build.
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return out


def main_build(out: str, num_sentences: int = DEFAULT_NUM_SENTENCES) -> Path:
    """Entry point for ``vqkit data speech --out DIR``: build (or reuse) and print a summary."""
    root = build_speech_corpus(out, num_sentences=num_sentences)
    m = json.loads((root / "manifest.json").read_text())
    seconds = sum(u["num_samples"] for u in m["utterances"]) / m["params"]["sample_rate"]
    print(
        f"speech corpus at {root}: {len(m['speakers'])} speakers, {len(m['utterances'])} "
        f"utterances, {seconds / 60:.1f} min, {len(m['phone_set'])} phones"
    )
    return root


# ----------------------------------------------------------------------------- data set


class SpeechCorpus(Dataset):
    """The festival corpus made by :func:`build_speech_corpus`.

    Args:
        root: the corpus folder.
        split: None (all), ``"train"`` or ``"test"`` (split by sentence).
        sample_rate: resample on load (None: the corpus rate).
        crop: as in :class:`~vqkit.datasets.audio.SpeakerAudioFolder`; note :meth:`phones` always
            describes the whole utterance, so evaluate units with ``crop=None``.
        random_crop, seed, transform: as in ``SpeakerAudioFolder``.

    Returns (per item):
        ``(waveform (1, T), sample_rate, speaker_id, utterance_id)``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        split: str | None = None,
        sample_rate: int | None = None,
        crop: int | None = None,
        random_crop: bool | None = None,
        seed: int | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.root = Path(root)
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"no speech corpus at {self.root} (missing manifest.json); build it with "
                f"vqkit.datasets.speech_corpus.build_speech_corpus({str(self.root)!r}) or "
                f"`vqkit data speech --out {self.root}` (needs festival: {FESTIVAL_APT_COMMAND})"
            )
        if split not in (None, "train", "test"):
            raise InputError(f"split must be None, 'train' or 'test', got {split!r}")
        self.manifest = json.loads(manifest.read_text())
        self.sample_rate = sample_rate
        self.transform = transform
        self.utterances = [u for u in self.manifest["utterances"] if split in (None, u["split"])]
        if not self.utterances:
            raise InputError(f"the speech corpus at {self.root} has no {split!r} utterances")
        self.speakers = sorted({u["speaker"] for u in self.utterances})
        self.phone_set: list[str] = self.manifest["phone_set"]
        self.crop = None
        if crop is not None:
            rand = split != "test" if random_crop is None else random_crop
            self.crop = RandomCrop(crop, random=rand, seed=seed)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> tuple[Tensor, int, str, str]:
        u = self.utterances[i]
        wav, sr = load_audio(self.root / u["wav"], sample_rate=self.sample_rate)  # (1, T)
        if self.crop is not None:
            wav = self.crop(wav)
        if self.transform is not None:
            wav = self.transform(wav)
        return wav, sr, u["speaker"], u["id"]

    def phones(self, i: int) -> list[Segment]:
        """Phone segments of utterance ``i`` (seconds, whole utterance)."""
        return read_segments(self.root / self.utterances[i]["phones"])

    def sentence(self, i: int) -> str:
        """Text of utterance ``i``."""
        return self.manifest["sentences"][self.utterances[i]["sentence"]]

    def speaker_index(self, name: str) -> int:
        """Position of a speaker in ``self.speakers``."""
        if name not in self.speakers:
            raise KeyError(f"unknown speaker {name!r}; speakers: {self.speakers}")
        return self.speakers.index(name)
