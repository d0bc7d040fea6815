"""Generation for the audio recipe: the conversion matrix and prior samples decoded in one
batch, their WAV files and report entries."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vqkit.audio import MuLawDecode, save_audio, silence_class
from vqkit.report import save_logmel_png
from vqkit.runs import add_media


def speaker_arg(model, speaker: torch.Tensor) -> torch.Tensor | None:
    return speaker if model.num_speakers else None


@torch.no_grad()
def render(
    vqvae, vocoder, codes: torch.Tensor, speaker: torch.Tensor, *, temperature, generator,
    progress: bool = False,
):  # fmt: skip
    """Waveforms ``(B, T)`` in [-1, 1] on the CPU of codes ``(B, T')`` in the voices ``speaker``
    ``(B,)``: the WaveNet decoder's samples, or the mel decoder's log-mel through ``vocoder``
    (with ``progress``, bars over the rows and the samples; the same waveforms)."""
    if vqvae.is_mel:
        # Row by row: a batched conv differs from a single one in the last bits, and Griffin-Lim
        # would amplify that; this way a batch renders exactly what each row renders alone.
        spk = speaker_arg(vqvae, speaker)
        rows = tqdm(codes, desc="log-mel", unit="row", disable=not progress, leave=False)
        mel = torch.cat([
            vqvae.decode_mel(c[None], None if spk is None else spk[i : i + 1])
            for i, c in enumerate(rows)
        ])  # fmt: skip
        title = "vocoder" if progress else None
        return vocoder.render(
            mel, temperature=temperature, generator=generator, progress=title
        ).cpu()
    classes = vqvae.decode(
        codes, speaker_arg(vqvae, speaker), temperature=temperature, generator=generator,
        progress="decode" if progress else None,
    )  # fmt: skip
    return MuLawDecode(vqvae.classes)(classes.cpu())


def targets_of(speakers: list[str], max_targets: int | None) -> list[int]:
    """Target speaker ids for the matrix: all, or ``max_targets`` spread over the list."""
    n = len(speakers)
    if max_targets is None or max_targets >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(1, max_targets - 1)) for i in range(max_targets)})


@torch.no_grad()
def decode_matrix(
    vqvae, vocoder, prior, cfg, test: Any, codes: list, sources: list[int], speakers, device,
    *, progress: bool = False,
):  # fmt: skip
    """Conversions (every source x every target) and prior samples, generated in one batch.

    Args:
        vqvae, prior: the trained models; vocoder: renders a mel decoder's log-mel (None for
            the WaveNet decoder).
        cfg: the recipe config (its ``data`` and ``convert`` sections).
        test: the test split; ``codes`` its codes, one ``(T_i',)`` tensor per utterance.
        sources: test utterances to convert.
        speakers: training speaker names.
        device: where the models are.
        progress: progress bars over the prior's codes, the decoding and the vocoder.

    Returns:
        ``{"jobs": [(kind, source or None, target id)], "wavs": [float waveforms], "sources",
        "targets", "decode_s", "decoded_samples"}``; kind is ``convert`` (own speaker: a
        reconstruction), ``sample`` (prior), or ``vocoder`` (a source's true log-mel through
        the vocoder alone, mel decoder only).
    """
    c = cfg.convert
    rate = cfg.data.sample_rate / vqvae.hop  # codes per second
    max_codes = max(1, int(c.seconds * rate))
    targets = targets_of(speakers, c.max_targets)
    quiet = torch.full((1, vqvae.hop), silence_class(vqvae.classes), device=device)
    silence = vqvae.encode(quiet, 0)[0, 0]  # speaker 0's statistics, if the encoder needs any
    jobs, rows, lengths = [], [], []
    for s in sources:
        row = codes[s][:max_codes].to(device)
        for t in targets:
            jobs.append(("convert", s, t))
            rows.append(row)
            lengths.append(min(len(test.audio[s]), len(row) * vqvae.hop))
    if prior is not None and c.prior_samples > 0:
        gen = torch.Generator(device=device).manual_seed(c.seed)
        tgt = torch.tensor(targets, device=device).repeat_interleave(c.prior_samples)
        sampled = prior.generate(
            max_codes,
            speaker=tgt if prior.global_classes else None,
            batch=len(tgt),
            temperature=c.temperature,
            generator=gen,
            progress="prior samples" if progress else None,
        )
        for t, row in zip(tgt.tolist(), sampled):
            jobs.append(("sample", None, t))
            rows.append(row)
            lengths.append(max_codes * vqvae.hop)
    width = max(len(r) for r in rows)
    batch = torch.stack([F.pad(r, (0, width - len(r)), value=int(silence)) for r in rows])
    speaker = torch.tensor([t for _, _, t in jobs], device=device)
    gen = torch.Generator(device=device).manual_seed(c.seed + 1)
    t0 = time.perf_counter()
    audio = render(
        vqvae, vocoder, batch, speaker, temperature=c.temperature, generator=gen, progress=progress
    )
    seconds = time.perf_counter() - t0
    wavs = [a[:n] for a, n in zip(audio, lengths)]
    if vocoder is not None:  # the vocoder alone: the true log-mel of each source, rendered
        mels = []
        for s in (s for s in sources if test.speakers[s] in speakers):
            x = test.audio[s][: max_codes * vqvae.hop].long()[None].to(device)
            x = x[:, : x.shape[1] // vqvae.hop * vqvae.hop]  # logmel() takes whole codes
            jobs.append(("vocoder", s, speakers.index(test.speakers[s])))
            mels.append(vqvae.logmel(x)[0])
        if mels:
            title = "vocoder alone" if progress else None
            rendered = vocoder.render_many(
                mels, temperature=c.temperature, generator=gen, progress=title
            )
            wavs += [w.cpu() for w in rendered]
    return {
        "jobs": jobs,
        "wavs": wavs,
        "sources": sources,
        "targets": targets,
        "decode_s": seconds,
        "decoded_samples": int(audio.numel()),
    }


def write_media(
    run_dir: Path,
    result: dict,
    test: Any,
    speakers: list[str],
    sr: int,
    verdicts: list[str],
    *,
    pictures: int = 4,
) -> None:
    """WAVs of originals, reconstructions, the conversion matrix and prior samples, each titled
    with the classifiers' verdict, + media.json. For the first ``pictures`` sources every cell
    also gets a log-mel picture: source | decoded | a real recording of the target speaker."""
    reference = {sp: i for i, sp in reversed(list(enumerate(test.speakers)))}  # first of each
    shown = set(result["sources"][:pictures])
    for s in result["sources"]:
        name = f"originals/{test.ids[s]}.wav"
        save_audio(run_dir / name, MuLawDecode(256)(test.audio[s].long()), sr)
        add_media(run_dir, "audio", name, f"{test.ids[s]} ({test.speakers[s]})", "Originals")
    counts: dict[str, int] = {}
    for (kind, s, t), wav, verdict in zip(result["jobs"], result["wavs"], verdicts):
        target = speakers[t]
        if kind == "vocoder":
            name = f"vocoder/{test.ids[s]}.wav"
            title, group = f"{test.ids[s]} ({target})", "Vocoder alone (true log-mel)"
        elif kind == "sample":
            counts[target] = counts.get(target, 0) + 1
            name = f"samples/{target}_{counts[target]}.wav"
            title, group = f"prior sample as {target}", "Prior samples (codes from the prior)"
        elif target == test.speakers[s]:
            name = f"reconstructions/{test.ids[s]}.wav"
            title, group = f"{test.ids[s]} ({target})", "Reconstructions (own speaker)"
        else:
            name = f"conversions/{test.ids[s]}__to_{target}.wav"
            title = f"{test.ids[s]} ({test.speakers[s]}) as {target}"
            unseen = "" if test.speakers[s] in speakers else ", a voice unseen in training"
            group = f"Conversions of {test.ids[s]} ({test.speakers[s]}{unseen})"
        title = f"{title}: {verdict}" if verdict else title
        save_audio(run_dir / name, wav, sr)
        add_media(run_dir, "audio", name, title, group)
        if s in shown and target in reference:
            real = test.waveform(reference[target])
            picture = save_logmel_png(
                run_dir / name.replace(".wav", ".png"), [test.waveform(s), wav, real], sr
            )
            add_media(
                run_dir,
                "image",
                str(picture.relative_to(run_dir)),
                f"log-mel: source | {kind if kind != 'convert' else 'decoded'} | real {target} "
                f"({test.ids[reference[target]]})",
                group,
            )
