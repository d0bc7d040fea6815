"""The audio recipe end to end through the CLI, on tiny models and data (seconds of training):
the festival corpus (phones) and FSDD (digits), then `vqkit convert` and `vqkit units`."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vqkit.cli import main
from vqkit.datasets.speech_corpus import FESTIVAL_APT_COMMAND, SPEAKERS, build_speech_corpus

SHARED = Path(
    os.environ.get("VQKIT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared/data")
)
FSDD = SHARED / "fsdd"

TINY = [
    "threads=1",
    "vqvae.hidden=8",
    "vqvae.res_hidden=4",
    "vqvae.num_res_blocks=1",
    "vqvae.num_codes=16",
    "vqvae.code_dim=4",
    "vqvae.residual_channels=6",
    "vqvae.layers_per_stack=3",
    "vqvae.stacks=1",
    "vqvae.crop=512",
    "vqvae_train.steps=4",
    "vqvae_train.warmup_steps=2",  # the presets' one-cycle schedule needs warmup < steps
    "vqvae_train.batch_size=4",
    "vqvae_train.log_every=2",
    "prior.residual_channels=6",
    "prior.layers_per_stack=2",
    "prior.stacks=1",
    "prior.crop=16",
    "prior_train.steps=3",
    "prior_train.batch_size=4",
    "prior_train.log_every=1",
    "convert.sources=2",
    "convert.max_targets=3",
    "convert.seconds=0.05",
    "eval.classifier_steps=2",
    "eval.abx_triples=20",
]
UNIT_KEYS = (
    "unit_accuracy",
    "unit_chance",
    "unit_purity",
    "unit_cluster_purity",
    "unit_pnmi",
    "unit_abx_within",
    "unit_abx_across",
)


# The builtin preset's log-mel encoder, tiny: frames every 8 samples, one stride 2 (hop 16), with
# the paper's WaveNet decoder (the preset's mel decoder is tested on fsdd, tests/recipes/
# test_convert.py).
WAVENET_DECODER = ["vqvae.decoder=wavenet", "vqvae.mel_norm=batch"]
BUILTIN_TINY = [
    *TINY,
    *WAVENET_DECODER,
    "vqvae.mel_hop=8",
    "vqvae.n_mels=8",
    "vqvae.strides=[2]",
    "vqvae.encoder_cepstra=4",  # the preset's 13 is more than these 8 bands
]
# The waveform encoder (strides over samples), also hop 16.
WAVEFORM_TINY = [*TINY, *WAVENET_DECODER, "vqvae.features=waveform", "vqvae.strides=[2,2,2,2]"]


def sets(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def run_audio(out: Path, *args: str) -> dict:
    assert main(["run", "audio", "--out", str(out), "--device", "cpu", "--no-progress", *args]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if shutil.which("festival") is None:
        pytest.skip(f"festival is not installed; install it with: {FESTIVAL_APT_COMMAND}")
    return build_speech_corpus(tmp_path_factory.mktemp("speech"), num_sentences=3)


@pytest.fixture(scope="module")
def builtin_run(corpus, tmp_path_factory) -> tuple[Path, dict]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "builtin"
    return out, run_audio(out, "--data", str(corpus), *sets(BUILTIN_TINY))


def test_builtin_run_writes_metrics_matrix_and_report(builtin_run):
    out, metrics = builtin_run
    speakers = json.loads((out / "speakers.json").read_text())
    assert speakers == sorted(s.name for s in SPEAKERS)
    assert metrics["num_codes"] == 16 and metrics["hop"] == 16
    assert "features: logmel" in (out / "config.yaml").read_text()  # the preset's encoder
    assert metrics["code_rate_hz"] == 8000 / 16 and metrics["vqvae_steps"] == 4
    for key in (
        *UNIT_KEYS,
        "test_nll_bits_per_sample",
        "recon_logmel_distance_db",
        "prior_bits_per_code",
        "log2_num_codes",
        "target_speaker_rate",
        "content_kept_rate",
        "speaker_clf_test_accuracy",
        "content_clf_test_accuracy",
        "decode_samples_per_s_cached",
        "decode_rtf_cached",
        "decode_speedup",
        "wall_time_s",
    ):
        assert key in metrics, key
    assert metrics["unit_labels"] == "phones"
    assert 0 < metrics["unit_chance"] <= metrics["unit_accuracy"] <= 1
    assert metrics["unit_accuracy"] == pytest.approx(metrics["unit_purity"])
    # k-means baselines on the same held-out utterances, with the same metrics.
    for name in ("input", "mfcc"):
        for key in UNIT_KEYS:
            if key not in ("unit_chance",):
                base = f"unit_baseline_{name}_{key[5:]}"
                assert base in metrics, base
        acc = metrics[f"unit_baseline_{name}_accuracy"]
        assert metrics["unit_chance"] <= acc <= 1
    # The matrix: 2 sources x 3 targets; a source's own speaker is its reconstruction.
    convs = sorted((out / "conversions").glob("*.wav"))
    recons = sorted((out / "reconstructions").glob("*.wav"))
    assert len(convs) + len(recons) == 6 and len(list((out / "originals").glob("*.wav"))) == 2
    assert metrics["conversion_count"] == len(convs) and metrics.get("recon_count", 0) == len(
        recons
    )
    assert len(list((out / "samples").glob("*.wav"))) == 3  # one prior sample per target
    info = sf.info(str(convs[0]))
    assert info.samplerate == 8000 and 0 < info.frames <= 0.05 * 8000 + 16
    page = (out / "report.html").read_text()
    assert page.count("<audio controls") == 2 + 6 + 3
    assert "data:image/svg+xml;base64," in page  # codes-vs-phones plots
    assert len(list(out.glob("codes_*.svg"))) == 2
    assert 'data-key="unit_accuracy"' in page


def test_convert_command_and_unknown_speaker(builtin_run, corpus, tmp_path, capsys):
    out, _ = builtin_run
    wav, rate = sf.read(str(next((corpus / "wav" / "kal").glob("*.wav"))))
    source = tmp_path / "kal_clip.wav"
    sf.write(str(source), wav[: rate // 10], rate)  # 0.1 s: generation is one sample a step
    target = tmp_path / "as_slt.wav"
    assert (
        main(
            [
                "convert",
                str(out),
                "--source",
                str(source),
                "--speaker",
                "slt",
                "--out",
                str(target),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    info = sf.info(str(target))
    assert info.samplerate == 8000 and info.frames == 800
    assert (
        main(
            [
                "convert",
                str(out),
                "--source",
                str(source),
                "--speaker",
                "nobody",
                "--out",
                str(tmp_path / "x.wav"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown speaker 'nobody'" in err and "kal_high" in err and "slt_deep" in err
    assert not (tmp_path / "x.wav").exists()


def test_sample_command_and_reconstruct_is_refused(builtin_run, tmp_path, capsys):
    out, _ = builtin_run
    target = tmp_path / "samples.wav"
    assert main(["sample", str(out), "--out", str(target), "--device", "cpu"]) == 0
    # One prior sample per target speaker (3) of 0.05 s (1 code of 16 samples at least), each
    # followed by 0.3 s of silence.
    frames = sf.info(str(target)).frames
    assert frames == 3 * (16 * max(1, int(0.05 * 8000 / 16)) + int(0.3 * 8000))
    assert main(["reconstruct", str(out), str(target)]) == 2
    assert "does not apply to audio runs" in capsys.readouterr().err


def test_units_command_prints_every_metric_with_k_and_rate(builtin_run, corpus, capsys):
    out, metrics = builtin_run
    capsys.readouterr()
    assert main(["units", str(out), "--data", str(corpus), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "K = 16 codes at 500 Hz" in text and "phones" in text
    for name in (
        "accuracy",
        "chance",
        "purity",
        "cluster_purity",
        "pnmi",
        "abx_within",
        "abx_across",
    ):
        assert re.search(rf"^\s+{name}\s+\S", text, re.M), name
    # The same held-out utterances as the run's own evaluation give the same accuracy, and
    # the same k-means baselines (seeded, fit on the same training split) beside it.
    assert re.search(r"^\s+codes\s+k-means input\s+k-means mfcc", text, re.M)
    shown = re.search(r"^\s+accuracy\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    assert float(shown[1]) == pytest.approx(metrics["unit_accuracy"], abs=1e-4)
    assert float(shown[2]) == pytest.approx(metrics["unit_baseline_input_accuracy"], abs=1e-4)
    assert float(shown[3]) == pytest.approx(metrics["unit_baseline_mfcc_accuracy"], abs=1e-4)
    assert "k-means mfcc: k-means (same K, fit on the training split) on 13 MFCCs" in text


def test_baselines_over_several_seeds_are_the_mean_of_each_seeds_fit(
    builtin_run, corpus, monkeypatch, tmp_path, capsys
):
    # eval.baseline_seeds=3: every baseline is fit with k-means seeds 0, 1 and 2, and each of
    # its figures is the mean of the three fits' figures; `vqkit units` shows the mean and the
    # accuracy's range
    import sys

    from vqkit.config import load_config
    from vqkit.runs import load_recipe

    out, _ = builtin_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    config = (run / "config.yaml").read_text()
    assert "baseline_seeds: 1\n" in config
    (run / "config.yaml").write_text(config.replace("baseline_seeds: 1\n", "baseline_seeds: 3\n"))
    recipe = load_recipe("audio")
    ev = sys.modules["vqkit_recipes_audio.evaluate"]
    seeds, fit = [], ev.kmeans_units
    monkeypatch.setattr(ev, "kmeans_units", lambda *a, **k: seeds.append(k["seed"]) or fit(*a, **k))
    capsys.readouterr()
    assert main(["units", str(run), "--data", str(corpus), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert seeds == [0, 1, 2, 0, 1, 2]  # per baseline
    cfg = load_config(recipe.CONFIG, run / "config.yaml")
    _, vqvae, speakers, _ = recipe._load(run, "cpu")
    test = recipe.load_labelled(corpus, sample_rate=cfg.data.sample_rate)
    train = recipe.load_labelled(corpus, sample_rate=cfg.data.sample_rate, split="train")
    rate = cfg.data.sample_rate / vqvae.hop
    shown = re.search(r"^\s+accuracy\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    ranges = []
    features = ev.baseline_features(vqvae, train, test, speakers, "cpu")
    for column, (name, (rows_fit, rows, first_centre_s)) in zip((2, 3), features.items()):
        prefix = f"unit_baseline_{name}_"
        accuracies = []
        for seed in range(3):
            codes, centres = fit(rows_fit, rows, num_codes=16, seed=seed,
                                 max_fit_frames=cfg.eval.baseline_fit_frames)  # fmt: skip
            m = ev.unit_metrics([torch.from_numpy(c) for c in codes], test, rate, cfg.eval,
                                codebook=centres, first_centre_s=first_centre_s,
                                prefix=prefix)  # fmt: skip
            accuracies.append(m[f"{prefix}accuracy"])
        assert float(shown[column]) == pytest.approx(np.mean(accuracies), abs=1e-4)
        ranges.append(f"{name} {min(accuracies):.4f}-{max(accuracies):.4f}")
    assert f"k-means: the mean of 3 seeds; accuracy range {', '.join(ranges)}" in text


def test_units_command_over_several_runs_prints_mean_and_spread(builtin_run, corpus, capsys):
    out, metrics = builtin_run
    capsys.readouterr()
    argv = ["units", str(out), str(out), "--data", str(corpus), "--device", "cpu"]
    assert main([*argv, "--no-baselines"]) == 0
    text = capsys.readouterr().out
    assert text.count("K = 16 codes at 500 Hz") == 2
    assert "mean +- standard deviation [min, max] over 2 runs (K = 16 at 500 Hz)" in text
    assert "k-means" not in text
    # The same run twice: its accuracy, no spread.
    mean = re.findall(r"^\s+accuracy\s+(\S+) \+- (\S+) \[(\S+), (\S+)\]", text, re.M)
    acc = f"{metrics['unit_accuracy']:.4f}"
    assert mean == [(acc, "0.0000", acc, acc)]


def test_seed_alone_decides_the_initial_weights(corpus, seed_decides_initial_weights):
    seed_decides_initial_weights(
        lambda out: [
            "run",
            "audio",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--data",
            str(corpus),
            *sets(WAVEFORM_TINY),
        ]
    )


def test_units_on_unlabelled_folder_says_what_it_needs(builtin_run, tmp_path, capsys):
    out, _ = builtin_run
    (tmp_path / "spk").mkdir()
    sf.write(str(tmp_path / "spk" / "a.wav"), [0.0] * 800, 8000)
    assert main(["units", str(out), "--data", str(tmp_path)]) == 2
    assert "labelled speech" in capsys.readouterr().err


@pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD not found at {FSDD}")
def test_fsdd_run_scores_digits_and_speakers(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "fsdd"
    metrics = run_audio(
        out,
        "--preset",
        "fsdd",
        "--data",
        str(FSDD),
        # The preset's log-mel frames every 128 samples, one stride 2: hop 256.
        *sets([*TINY, "vqvae.strides=[2]", "data.max_files=24", "convert.max_targets=null"]),
    )
    assert metrics["num_speakers"] == 4 and metrics["unit_labels"] == "words"
    assert metrics["train_utterances"] == 24 and metrics["test_utterances"] == 24
    for key in (
        *UNIT_KEYS[:5],
        "unit_abx_across",
        "target_speaker_rate",
        "content_kept_rate",
        "content_clf_test_accuracy",
    ):
        assert key in metrics, key
    assert 0 <= metrics["content_kept_rate"] <= 1 and 0 <= metrics["target_speaker_rate"] <= 1
    # 2 sources x all 4 speakers
    assert (
        len(list((out / "conversions").glob("*.wav")))
        + len(list((out / "reconstructions").glob("*.wav")))
        == 8
    )
    capsys.readouterr()
    assert main(["units", str(out), "--data", str(FSDD), "--max-utterances", "12"]) == 0
    assert "words" in capsys.readouterr().out


@pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD not found at {FSDD}")
def test_fsdd_cycle_and_tilt_are_trained_logged_and_checked(tmp_path, capsys):
    torch.set_num_threads(1)
    tiny = [*TINY, "vqvae.strides=[2]", "data.max_files=24"]
    base = ["--preset", "fsdd", "--data", str(FSDD)]
    for bad, key in (("vqvae.cycle=-1", "vqvae.cycle"), ("vqvae.mel_tilt=-0.5", "vqvae.mel_tilt")):
        code = main(
            [
                "run",
                "audio",
                "--out",
                str(tmp_path / "bad"),
                "--device",
                "cpu",
                "--no-progress",
                *base,
                *sets([*tiny, bad]),
            ]
        )
        assert code == 2 and f"config key '{key}'" in capsys.readouterr().err, bad
    out = tmp_path / "cycle"
    run_audio(out, *base, *sets([*tiny, "vqvae.cycle=0.5", "vqvae.mel_tilt=0.3"]))
    history = [json.loads(line) for line in (out / "vqvae/history.jsonl").read_text().splitlines()]
    logged = [h for h in history if "loss" in h]
    assert logged and all(h["cycle_loss"] > 0 for h in logged)


def test_missing_festival_is_explained(tmp_path, monkeypatch, capsys):
    from vqkit.datasets import speech_corpus

    monkeypatch.setattr(speech_corpus.shutil, "which", lambda name: None)
    assert main(["data", "speech", "--out", str(tmp_path / "c"), "--num-sentences", "1"]) == 2
    assert "apt-get install -y festival" in capsys.readouterr().err


def test_units_preset_over_two_seeds(corpus, tmp_path, capsys, monkeypatch):
    # The units preset, tiny, at two seeds; `vqkit units` over both prints each run and their
    # mean and spread.
    torch.set_num_threads(1)
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "cache"))  # its pseudo-labels
    tiny = [*BUILTIN_TINY, "vqvae_train.steps=6", "prior_train.steps=1"]
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        metrics = run_audio(
            out, "--preset", "units", "--data", str(corpus),
            *sets([*tiny, f"vqvae_train.seed={seed}"]),
        )  # fmt: skip
        assert "features: logmel" in (out / "config.yaml").read_text()
        assert "unit_baseline_mfcc_pnmi" in metrics
        assert metrics["pseudo_label_cached"] is False  # fit for each seed
        runs.append((out, metrics))
    capsys.readouterr()
    assert main(["units", *(str(o) for o, _ in runs), "--data", str(corpus), "--no-baselines"]) == 0
    text = capsys.readouterr().out
    accs = [m["unit_accuracy"] for _, m in runs]
    mean = re.findall(r"^\s+accuracy\s+(\S+) \+- (\S+) \[(\S+), (\S+)\]", text, re.M)
    assert mean == [
        (
            f"{sum(accs) / 2:.4f}",
            f"{abs(accs[0] - accs[1]) / 2**0.5:.4f}",
            f"{min(accs):.4f}",
            f"{max(accs):.4f}",
        )
    ]


def test_pseudo_labels_are_seeded_cached_and_cover_every_start_frame(tmp_path, monkeypatch):
    from recipes.audio.recipe import AudioRecipeConfig, pseudo_labels
    from vqkit.datasets import Utterances

    g = torch.Generator().manual_seed(0)
    audio = [torch.randint(0, 256, (n,), generator=g).to(torch.uint8) for n in (800, 1000, 1130)]
    train = Utterances(audio * 2, ["a"] * 3 + ["b"] * 3, [str(i) for i in range(6)], None, None,
                       8000)  # fmt: skip
    cfg = AudioRecipeConfig()
    cfg.vqvae.features, cfg.vqvae.strides, cfg.vqvae.mel_hop = "logmel", [2], 80  # hop 160
    cfg.vqvae.pseudo_label, cfg.vqvae.pseudo_label_codes = 1.0, 6
    runs = []
    for where in ("c1", "c1", "c2"):
        monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / where))
        runs.append(pseudo_labels(cfg, train))
    (first, info1), (again, info2), (fresh, info3) = runs
    assert (info1["pseudo_label_cached"], info2["pseudo_label_cached"]) == (False, True)
    assert info3["pseudo_label_cached"] is False
    for a, b, c, x in zip(first, again, fresh, audio * 2):
        assert len(a) == 2 * -(-len(x) // 160)  # a label per start frame of every code
        assert np.array_equal(a, b) and np.array_equal(a, c)  # the same fit for the same seed
    assert set(np.concatenate(first).tolist()) <= set(range(6))
    cfg.vqvae_train.seed = 1
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "c3"))
    other, _ = pseudo_labels(cfg, train)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))  # another seed, another fit
    # three sets: set 0 is the single set's labels (its cache entry reused), set j the fit of
    # seed + j * PSEUDO_LABEL_SEED_STEP, stacked as (F, 3)
    from recipes.audio.recipe import PSEUDO_LABEL_SEED_STEP

    cfg.vqvae_train.seed, cfg.vqvae.pseudo_label_sets = 0, 3
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "c1"))
    three, info = pseudo_labels(cfg, train)
    assert info["pseudo_label_cached"] is False  # sets 1 and 2 were fit now
    alone = copy.deepcopy(cfg)
    alone.vqvae_train.seed, alone.vqvae.pseudo_label_sets = PSEUDO_LABEL_SEED_STEP, 1
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "c4"))  # fit afresh, not read back
    second, _ = pseudo_labels(alone, train)
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "c1"))
    for t, a, b in zip(three, first, second):
        assert t.shape == (len(a), 3) and np.array_equal(t[:, 0], a)
        assert np.array_equal(t[:, 1], b)
    assert not all(np.array_equal(t[:, 0], t[:, 1]) for t in three)
    assert pseudo_labels(cfg, train)[1]["pseudo_label_cached"] is True


def test_two_runs_fitting_the_same_pseudo_labels_at_once_both_finish(tmp_path, monkeypatch):
    # Two jobs started side by side fit the same labels and write the same cache entry: each
    # must finish with the labels (a shared temporary file once made the second rename fail).
    import threading

    import recipes.audio.recipe as recipe
    from recipes.audio.recipe import AudioRecipeConfig, pseudo_labels

    train = _tiny_logmel_split()
    cfg = AudioRecipeConfig()
    cfg.vqvae.features, cfg.vqvae.strides, cfg.vqvae.mel_hop = "logmel", [2], 80
    cfg.vqvae.pseudo_label, cfg.vqvae.pseudo_label_codes = 1.0, 4
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "cache"))
    both_fitted = threading.Barrier(2, timeout=60)
    fit = recipe.kmeans_units

    def fit_then_wait(*args, **kwargs):
        out = fit(*args, **kwargs)
        both_fitted.wait()  # both write at the same moment
        return out

    monkeypatch.setattr(recipe, "kmeans_units", fit_then_wait)
    results, errors = [], []

    def job():
        try:
            results.append(pseudo_labels(cfg, train)[0])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2
    monkeypatch.setattr(recipe, "kmeans_units", fit)
    cached, info = pseudo_labels(cfg, train)
    assert info["pseudo_label_cached"] is True
    assert all(np.array_equal(a, b) and np.array_equal(a, c)
               for a, b, c in zip(cached, *results))  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "cache" / "pseudo_labels").iterdir()) == [
        p.name for p in (tmp_path / "cache" / "pseudo_labels").glob("*.npz")
    ]  # no temporary file left behind


def test_run_with_the_pseudo_label_head(corpus, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "cache"))
    tiny = [*BUILTIN_TINY, "vqvae.pseudo_label=0.5", "vqvae.pseudo_label_codes=4"]
    metrics = run_audio(tmp_path / "pl", "--data", str(corpus), *sets(tiny))
    assert metrics["pseudo_label_cached"] is False and "unit_accuracy" in metrics
    history = (tmp_path / "pl" / "vqvae" / "history.jsonl").read_text()
    assert "pseudo_label_loss" in history
    assert main(["run", "audio", "--out", str(tmp_path / "bad"), "--data", str(corpus),
                 *sets([*tiny, "vqvae.pseudo_label=-1"])]) == 2  # fmt: skip


def _tiny_logmel_split(n_utts: int = 6):
    from vqkit.datasets import Utterances

    g = torch.Generator().manual_seed(0)
    audio = [torch.randint(0, 256, (n,), generator=g).to(torch.uint8)
             for n in (800, 1000, 1130)[:3] * (n_utts // 3)]  # fmt: skip
    speakers = ["a"] * (n_utts // 2) + ["b"] * (n_utts - n_utts // 2)
    return Utterances(audio, speakers, [str(i) for i in range(n_utts)], None, None, 8000)


def _tiny_logmel_cfg(*overrides: str):
    from recipes.audio.recipe import AudioRecipeConfig
    from vqkit.config import load_config

    tiny = [*BUILTIN_TINY, "vqvae.features=logmel", "vqvae.decoder=mel", "vqvae.mel_norm=speaker",
            "vqvae.mel_hop=80", "vqvae.n_mels=8", "vqvae.crop=640", *overrides]  # fmt: skip
    return load_config(AudioRecipeConfig, overrides=tiny)


def test_kmeans_init_rows_sets_the_codebook_from_many_latents():
    from recipes.audio.evaluate import _padded
    from recipes.audio.recipe import vqvae_build
    from vqkit.pipeline import seed_everything

    train = _tiny_logmel_split()
    built = {}
    for rows in (None, 0, 30, 10_000):  # None: the key left at its default
        cfg = _tiny_logmel_cfg(*([] if rows is None else [f"vqvae.kmeans_init_rows={rows}"]))
        seed_everything(0)
        built[rows] = vqvae_build(cfg, ["a", "b"], train)()
    off, zero = built[None].state_dict(), built[0].state_dict()
    assert all(torch.equal(off[k], zero[k]) for k in off)  # 0: today's model bit for bit
    assert not bool(built[0].quantizer.initialized)  # still the first-batch init
    # the encoder's own latents of every training utterance (40 rows < 10,000: all of them)
    model = built[10_000]
    latents = torch.cat([model.encode_latents(_padded(model, a, "cpu"), int(s == "b"))[0].t()
                         for a, s in zip(train.audio, train.speakers)])  # fmt: skip
    enc = {k: v for k, v in model.state_dict().items() if not k.startswith("quantizer.")}
    assert all(torch.equal(v, off[k]) for k, v in enc.items())  # only the codebook differs
    q = model.quantizer
    assert bool(q.initialized) and len(latents) == 40
    rows_ids = q._rows(latents.unsqueeze(-1))[0]
    codes = torch.cdist(rows_ids, q.codebook).argmin(1)
    # every centre is the mean of the latents nearest to it (a fixed point of Lloyd's k-means)
    for k in codes.unique():
        assert torch.allclose(q.codebook[k], rows_ids[codes == k].mean(0), atol=1e-4)
    # the EMA counts: one batch's rows in all (batch_size 4 x crop 640 / hop 160 = 16), each at
    # least 1 as after the first-batch init, not the 40 rows' counts; the EMA state consistent
    assert 16.0 - 1e-4 <= float(q.cluster_size.sum()) < 32.0 and float(q.cluster_size.min()) >= 1
    assert torch.allclose(q.embed_sum / q.cluster_size.unsqueeze(1), q.codebook, atol=1e-5)
    assert not torch.equal(q.codebook, built[30].quantizer.codebook)  # 30 of the 40 rows


def test_kmeans_init_rows_refuses_bad_values(corpus, tmp_path):
    from recipes.audio.recipe import vqvae_build
    from vqkit.errors import InputError

    train = _tiny_logmel_split()
    with pytest.raises(
        InputError, match=r"vqvae.kmeans_init_rows=8 must be >= the codebook size 16"
    ):
        vqvae_build(_tiny_logmel_cfg("vqvae.kmeans_init_rows=8"), ["a", "b"], train)()
    fsq = _tiny_logmel_cfg(
        "vqvae.kmeans_init_rows=100", 'vqvae.quantizer={"kind": "fsq", "levels": [4, 4]}'
    )
    with pytest.raises(InputError, match="needs the vq quantizer"):
        vqvae_build(fsq, ["a", "b"], train)()
    assert main(["run", "audio", "--out", str(tmp_path / "bad"), "--data", str(corpus),
                 *sets([*BUILTIN_TINY, "vqvae.kmeans_init_rows=-1"])]) == 2  # fmt: skip


def test_second_iteration_labels_come_from_a_cached_teacher(corpus, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    tiny = [*BUILTIN_TINY, "vqvae.pseudo_label=0.5", "vqvae.pseudo_label_codes=4",
            "vqvae.pseudo_label_source=latents", "eval.baseline_fit_frames=0"]  # fmt: skip

    def labels(where: str, name: str, *more: str) -> tuple[dict, dict]:
        monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / where))
        metrics = run_audio(tmp_path / name, "--data", str(corpus), *sets([*tiny, *more]))
        found = {}
        for f in sorted((tmp_path / where / "pseudo_labels").glob("*.npz")):
            with np.load(f) as stored:
                found[f.name] = {k: stored[k] for k in stored.files}
        return metrics, found

    first, c1 = labels("c1", "r1")
    # the teacher (mfcc labels, then trained) and the student's labels from its latents: two files
    assert first["pseudo_label_cached"] is False and first["teacher_cached"] is False
    assert first["teacher_steps"] == 4 and len(c1) == 2
    assert (tmp_path / "c1" / "teacher").is_dir() and not (tmp_path / "r1" / "teacher").exists()
    again, _ = labels("c1", "r2")
    assert again["pseudo_label_cached"] is True and "teacher_cached" not in again  # not retrained
    no_context, c1b = labels("c1", "r2b", "vqvae.pseudo_label_context=0")  # the student's alone:
    assert no_context["teacher_cached"] is True and len(c1b) == 3  # the same teacher, new labels
    fresh, c2 = labels("c2", "r3")  # another cache: the teacher retrained, the same labels
    assert fresh["teacher_cached"] is False and c1.keys() == c2.keys()
    for name in c1:
        assert all(np.array_equal(c1[name][k], c2[name][k]) for k in c1[name])
    plain, c3 = labels("c3", "r4", "vqvae.pseudo_label_source=mfcc")  # first iteration only
    assert "teacher_cached" not in plain and len(c3) == 1 and set(c3) < set(c1)
    (student,) = (c1[n] for n in c1 if n not in c3)  # the teacher's labels are the mfcc ones
    assert all(x.dtype == np.int16 and 0 <= x.min() and x.max() < 4 for x in student.values())
    assert not all(np.array_equal(student[k], c3[next(iter(c3))][k]) for k in student)
    _, c4 = labels("c4", "r5", "vqvae_train.seed=1")  # another seed: another teacher and fit
    assert c4.keys().isdisjoint(c1.keys())
    assert main(["run", "audio", "--out", str(tmp_path / "bad"), "--data", str(corpus),
                 *sets([*tiny, "vqvae.pseudo_label_source=hubert"])]) == 2  # fmt: skip
