"""Voice conversion on FSDD with the mel VQ-VAE: train, convert, score (issue 17).

Self-contained (the package API only). Trains ``vqvae_audio(decoder="mel", ...)`` on FSDD's
training recordings (indices 5-49), then scores with a speaker and a digit classifier
(:mod:`vqkit.metrics.conversion`) trained on the same real training recordings:

* ``real``: the classifiers on the real test recordings (indices 0-4);
* ``vocoder``: the true log-mel of the real test recordings through the vocoder alone;
* ``recon``: test utterances encoded and decoded with their own speaker;
* ``convert``: test utterances decoded with every other speaker (target rate, digit kept);
* ``unseen``: a second model trained on all speakers but ``--holdout``, converting the held-out
  speaker's test utterances into the trained voices;
* ``probe``: linear classifiers from an utterance's code histogram / mean code vector to its
  speaker (trained on the training utterances, scored on the test ones), beside chance.

Usage (one thread: the machine is shared)::

    OMP_NUM_THREADS=1 uv run python docs/experiments/vc_fsdd.py --data /work/shared/data/fsdd \\
        --steps 2000 --set mel_norm=instance --out /tmp/vc/run.json

``--set key=value`` passes any ``vqvae_audio`` argument (values parsed as JSON when they can be).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from vqkit.audio import MuLawEncode, load_audio
from vqkit.metrics.conversion import accuracy, predict, train_classifier
from vqkit.models import griffinlim, vqvae_audio, wavenet_vocoder

SR = 8000
SILENCE = 128  # mu-law class of 0.0

BASE = dict(  # the fsdd preset's encoder and codes, with the mel decoder
    decoder="mel",
    features="logmel",
    sample_rate=SR,
    mel_hop=64,  # 125 Hz frames: Griffin-Lim keeps the speaker far better than at 128
    n_mels=80,  # and 80 bands rather than 40 (speaker kept 98.5% against 71.5%)
    strides=[2, 2],  # codes at 31.25 Hz, as the fsdd preset
    jitter=0.12,
    num_codes=128,
    code_dim=64,
    hidden=64,
    res_hidden=32,
    num_res_blocks=2,
    quantizer=dict(ema=True, decay=0.99, kmeans_init=True, restart_after=100),  # the recipe's
)


def load_fsdd(root: Path):
    """``{split: [(classes (T,), wave (T,), speaker, digit)]}`` with FSDD's split."""
    out = {"train": [], "test": []}
    enc = MuLawEncode(256)
    for path in sorted((root / "recordings").glob("*.wav")):
        digit, speaker, index = path.stem.split("_")
        wav, _ = load_audio(path, sample_rate=SR)
        wav = wav[0]
        split = "test" if int(index) < 5 else "train"
        out[split].append((enc(wav), wav, speaker, int(digit)))
    return out


def crops(items, speakers, n, crop, gen):
    """A batch of ``n`` random crops (silence-padded), and their speaker ids."""
    idx = torch.randint(len(items), (n,), generator=gen).tolist()
    batch = []
    for i in idx:
        x = items[i][0]
        if len(x) < crop:
            x = F.pad(x, (0, crop - len(x)), value=SILENCE)
        else:
            start = int(torch.randint(len(x) - crop + 1, (1,), generator=gen))
            x = x[start : start + crop]
        batch.append(x)
    return torch.stack(batch), torch.tensor([speakers.index(items[i][2]) for i in idx])


def train_vqvae(items, speakers, kwargs, args, tag):
    torch.manual_seed(args.seed)
    model = vqvae_audio(num_speakers=len(speakers), **kwargs)
    if kwargs.get("mel_norm") == "speaker":
        model.set_speaker_stats([it[0] for it in items], [speakers.index(it[2]) for it in items])
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05
    )
    gen = torch.Generator().manual_seed(args.seed)
    crop = args.crop // model.hop * model.hop
    t0 = time.time()
    model.train()
    for step in range(args.steps):
        audio, spk = crops(items, speakers, args.batch, crop, gen)
        out = model(audio, spk)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(
                f"[{tag}] step {step} recon {out.recon_loss.item():.3f} "
                f"vq {out.quant.loss.item():.4f} ppl {out.quant.perplexity.item():.1f} "
                f"adv {0.0 if out.adversary_loss is None else out.adversary_loss.item():.3f} "
                f"({time.time() - t0:.0f}s)",
                flush=True,
            )
    return model.eval(), time.time() - t0


def pad_to(x, hop):
    n = max(1, math.ceil(len(x) / hop)) * hop
    return F.pad(x, (0, n - len(x)), value=SILENCE)


@torch.no_grad()
def encode(model, x, name, speakers, items):
    """Codes ``(1, T')`` of one utterance of speaker ``name``; for ``mel_norm="speaker"`` a
    training speaker's stored statistics, or those of ``name``'s utterances among ``items``
    (an unseen speaker: the utterances being converted, no labels used)."""
    x = pad_to(x, model.hop)[None]
    if getattr(model.encoder, "norm_kind", None) != "speaker":
        return model.encode(x)
    if name in speakers:
        return model.encode(x, speakers.index(name))
    key = (id(model), name)
    if key not in _STATS:
        _STATS[key] = model.speaker_stats([it[0] for it in items if it[2] == name])
    return model.encode(x, stats=_STATS[key])


_STATS: dict = {}


def convert_all(model, items, speakers, targets, vocoder):
    """For every item and target speaker: the rendered waveform, cropped to the source length.
    Returns a list of (wave, source index, target id)."""
    mels, index = [], []
    for i, (x, _, name, _) in enumerate(items):
        codes = encode(model, x, name, speakers, items)  # (1, T')
        spk = torch.tensor(targets)
        mel = model.decode_mel(codes.expand(len(targets), -1), spk)
        mels += list(mel)
        index += [(i, t) for t in targets]
    waves = render_many(vocoder, mels, [len(items[i][0]) for i, _ in index])
    return [(w, i, t) for w, (i, t) in zip(waves, index)]


FLOOR = math.log(1e-5)  # log-mel of digital silence


@torch.no_grad()
def render_many(vocoder, mels, lengths, batch=64):
    """Render ``(n_mels, F_i)`` log-mels in batches of similar lengths (padded with silence),
    each cropped to its ``lengths[i]`` samples."""
    order = sorted(range(len(mels)), key=lambda i: mels[i].shape[-1])
    out = [None] * len(mels)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        frames = max(mels[i].shape[-1] for i in idx)
        x = torch.full((len(idx), mels[idx[0]].shape[0], frames), FLOOR)
        for k, i in enumerate(idx):
            x[k, :, : mels[i].shape[-1]] = mels[i]
        waves = vocoder.render(x)
        for k, i in enumerate(idx):
            out[i] = waves[k, : lengths[i]].clone()
    return out


def scores(clfs, waves, spk_labels, digit_labels):
    spk_clf, dig_clf = clfs
    return {
        "target": round(accuracy(predict(spk_clf, waves), spk_labels), 4),
        "content": round(accuracy(predict(dig_clf, waves), digit_labels), 4),
        "n": len(waves),
    }


def evaluate(model, test, speakers, all_speakers, clfs, vocoder, sources=None):
    """Recon and conversion scores of ``model`` (trained on ``speakers``) on ``test`` items."""
    targets = list(range(len(speakers)))
    res = convert_all(model, test, speakers, targets, vocoder)
    recon, conv = ([], [], []), ([], [], [])
    for wave, i, t in res:
        src = test[i][2]
        bucket = recon if speakers[t] == src else conv
        bucket[0].append(wave)
        bucket[1].append(all_speakers.index(speakers[t]))
        bucket[2].append(test[i][3])
    out = {}
    if recon[0]:
        out["recon"] = scores(clfs, *recon)
    out["convert"] = scores(clfs, *conv)
    return out


def probe(model, train, test, speakers, seed=0, model_speakers=None):
    """Linear probes from code histograms / mean code vectors to the speaker."""

    @torch.no_grad()
    def feats(items):
        hist, mean = [], []
        for x, _, name, _ in items:
            codes = encode(model, x, name, model_speakers or speakers, items)[0]
            h = torch.bincount(codes, minlength=model.quantizer.num_codes).float()
            hist.append(h / h.sum())
            mean.append(model.latents(codes[None])[0].mean(-1))
        return torch.stack(hist), torch.stack(mean)

    y_tr = torch.tensor([speakers.index(it[2]) for it in train])
    y_te = torch.tensor([speakers.index(it[2]) for it in test])
    out = {"chance": round(1 / len(speakers), 4)}
    for name, xtr, xte in zip(("histogram", "mean_vector"), feats(train), feats(test)):
        mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        torch.manual_seed(seed)
        lin = torch.nn.Linear(xtr.shape[1], len(speakers))
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)

        def closure(opt=opt, lin=lin, xtr=xtr):
            opt.zero_grad()
            loss = F.cross_entropy(lin(xtr), y_tr) + 1e-3 * lin.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            out[name] = round((lin(xte).argmax(1) == y_te).float().mean().item(), 4)
    return out


def classifiers(data, speakers, cache: Path):
    waves = [it[1] for it in data["train"]]
    spk = [speakers.index(it[2]) for it in data["train"]]
    dig = [it[3] for it in data["train"]]
    out = []
    for name, labels, k in (("speaker", spk, len(speakers)), ("digit", dig, 10)):
        path = cache / f"clf_{name}.pt"
        clf = None
        if path.exists():
            clf = train_classifier(waves[:4], labels[:4], sample_rate=SR, num_classes=k, steps=0)
            clf.load_state_dict(torch.load(path))
        else:
            clf = train_classifier(
                waves, labels, sample_rate=SR, num_classes=k, steps=300, crop=16000
            )
            cache.mkdir(parents=True, exist_ok=True)
            torch.save(clf.state_dict(), path)
        out.append(clf.eval())
    return tuple(out)


def train_wavenet_vocoder(train, args, cache: Path, mel_hop: int, n_mels: int):
    key = f"{args.vocoder_steps}_{mel_hop}_{n_mels}_{zlib.crc32(args.vocoder_args.encode())}"
    path = cache / f"wavenet_vocoder_{key}.pt"
    torch.manual_seed(args.seed)
    voc = wavenet_vocoder(
        sample_rate=SR, mel_hop=mel_hop, n_mels=n_mels, **json.loads(args.vocoder_args)
    )
    if path.exists():
        voc.load_state_dict(torch.load(path))
        return voc.eval(), 0.0
    voc.fit_norm([voc.logmel(pad_to(it[0], mel_hop)[None])[0] for it in train])
    opt = torch.optim.Adam(voc.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.vocoder_steps):
        audio = _crops(train, gen)
        loss = voc.loss(audio)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(voc.parameters(), 1.0)
        opt.step()
        if step % 250 == 0:
            print(f"[vocoder] step {step} nll {loss.item():.3f} ({time.time() - t0:.0f}s)")
    torch.save(voc.state_dict(), path)
    return voc.eval(), time.time() - t0


def _crops(items, gen, n=8, crop=2048):
    batch = []
    for i in torch.randint(len(items), (n,), generator=gen).tolist():
        x = items[i][0]
        x = F.pad(x, (0, max(0, crop - len(x))), value=SILENCE)
        start = int(torch.randint(len(x) - crop + 1, (1,), generator=gen))
        batch.append(x[start : start + crop])
    return torch.stack(batch)


def model_free_logmel(vocoder, classes):
    """The true log-mel ``(1, n_mels, F)`` of mu-law ``classes`` (T,), as the encoder sees it."""
    import torchaudio.functional as AF

    x = pad_to(classes, vocoder.mel_hop)
    wav = AF.mu_law_decoding(x, 256).float()[None]
    return vocoder.features(wav)[..., : len(x) // vocoder.mel_hop]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=4096)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", default="nicolas", help="speaker left out ('' to skip unseen)")
    p.add_argument("--vocoder", default="griffinlim", choices=("griffinlim", "wavenet"))
    p.add_argument("--vocoder-steps", type=int, default=2000)
    p.add_argument("--vocoder-args", default='{"residual_channels": 32, "layers_per_stack": 8}')
    p.add_argument("--cache", type=Path, default=Path("/tmp/vc_fsdd_cache"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    torch.set_num_threads(1)
    kwargs = dict(BASE)
    for kv in args.set:
        key, value = kv.split("=", 1)
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value

    t_start = time.time()
    data = load_fsdd(args.data)
    speakers = sorted({it[2] for it in data["train"]})
    clfs = classifiers(data, speakers, args.cache)
    result = {"vqvae_audio": kwargs, "train": vars(args) | {"out": str(args.out)}}
    result["train"] = {k: str(v) if isinstance(v, Path) else v for k, v in result["train"].items()}
    test = data["test"]
    result["real"] = scores(
        clfs, [it[1] for it in test], [speakers.index(it[2]) for it in test], [it[3] for it in test]
    )
    if args.vocoder == "griffinlim":
        vocoder = griffinlim(sample_rate=SR, mel_hop=kwargs["mel_hop"], n_mels=kwargs["n_mels"])
        result["vocoder_train_s"] = 0.0
    else:
        vocoder, result["vocoder_train_s"] = train_wavenet_vocoder(
            data["train"], args, args.cache, kwargs["mel_hop"], kwargs["n_mels"]
        )
    t0 = time.time()
    true_mels = [model_free_logmel(vocoder, it[0]) for it in test]
    voc_waves = render_many(vocoder, [m[0] for m in true_mels], [len(it[1]) for it in test])
    result["vocoder"] = scores(
        clfs, voc_waves, [speakers.index(it[2]) for it in test], [it[3] for it in test]
    )
    result["vocoder"]["render_s"] = round(time.time() - t0, 1)
    print("real", result["real"], "vocoder", result["vocoder"], flush=True)

    model, result["train_s"] = train_vqvae(data["train"], speakers, kwargs, args, "all")
    result.update(evaluate(model, test, speakers, speakers, clfs, vocoder))
    result["probe"] = probe(model, data["train"], test, speakers)
    print({k: result[k] for k in ("recon", "convert", "probe")}, flush=True)

    if args.holdout:
        seen = [s for s in speakers if s != args.holdout]
        train3 = [it for it in data["train"] if it[2] != args.holdout]
        model3, result["unseen_train_s"] = train_vqvae(train3, seen, kwargs, args, "unseen")
        src = [it for it in test if it[2] == args.holdout]
        result["unseen"] = evaluate(model3, src, seen, speakers, clfs, vocoder)["convert"]
        result["unseen_probe"] = probe(model3, data["train"], test, speakers, model_speakers=seen)
        print("unseen", result["unseen"], flush=True)
    result["total_s"] = round(time.time() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("train",)}))


if __name__ == "__main__":
    main()
