"""The video recipe end to end through the CLI, on tiny models (seconds), and `vqkit predict`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vqkit.bundle import load_model
from vqkit.cli import main
from vqkit.datasets import SyntheticVideo, write_video
from vqkit.metrics.video import copy_last_frame, psnr_per_frame
from vqkit.models import MaskGIT, maskgit, to_data, to_model, vqvae_video
from vqkit.models.video_prior import predict_video

FRAMES, CONTEXT, SIZE = 8, 4, 16
TINY = [
    f"data.num_frames={FRAMES}", f"data.context_frames={CONTEXT}", f"data.frame_size={SIZE}",
    "data.train_size=16", "data.test_size=4", "data.num_sprites=2",
    "vqvae.hidden=8", "vqvae.res_hidden=4", "vqvae.num_res_blocks=1", "vqvae.num_codes=16",
    "vqvae.code_dim=4", "vqvae_train.steps=4", "vqvae_train.batch_size=4",
    "vqvae_train.log_every=2", "vqvae_train.ckpt_every=2",
    "prior.dim=16", "prior.num_layers=1", "prior.num_heads=2",
    "prior_train.steps=4", "prior_train.batch_size=4", "prior_train.log_every=2",
    "predict.rollouts=4", "predict.upscale=1", "eval_batch_size=4",
]


def sets(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "video"
    try:
        assert main(["run", "video", "--out", str(out), "--device", "cpu", "--no-progress",
                     *sets(TINY)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_seed_alone_decides_the_initial_weights(seed_decides_initial_weights):
    seed_decides_initial_weights(lambda out: ["run", "video", "--out", str(out), "--device", "cpu",
                                              "--no-progress", *sets(TINY)])


def test_run_writes_every_output(tiny_run):
    for name in ("config.yaml", "metrics.json", "predictions.gif", "rollouts.gif", "report.html",
                 "media.json", "code_usage.json"):
        assert (tiny_run / name).is_file(), name
    for stage in ("vqvae", "prior"):
        assert (tiny_run / stage / "ckpt" / "latest").is_file()
        assert (tiny_run / stage / "history.jsonl").read_text().strip()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["vqvae_steps"] == 4 and metrics["prior_steps"] == 4
    assert metrics["horizons"] == FRAMES - CONTEXT
    assert metrics["latent_shape"] == [FRAMES // 2, SIZE // 4, SIZE // 4]
    assert len(metrics["recon_psnr_per_frame"]) == FRAMES
    assert len(metrics["pred_psnr_by_horizon"]) == FRAMES - CONTEXT
    for key in ("recon_psnr", "prior_bits_per_code", "prior_bits_per_code_future",
                "unigram_bits_per_code", "test_perplexity", "pred_psnr_mean",
                "copy_last_psnr_mean", "action_error_px_commanded", "action_error_px_shuffled",
                "action_direction_agreement_commanded", "action_error_px_true_actions",
                "wall_time_s", "cpu_time_s"):
        assert isinstance(metrics[key], float), key
    assert metrics["log2_num_codes"] == 4.0
    assert 0 < metrics["prior_bits_per_code"] < 8  # an untrained prior is near log2(16) = 4
    # The copy-last-frame baseline, recomputed from the test set as the recipe stores it.
    test = SyntheticVideo(split="test", size=4, num_frames=FRAMES, frame_size=SIZE, num_sprites=2)
    clips = torch.stack([(test[i][0] * 255).round() / 255 for i in range(4)])
    copy = psnr_per_frame(copy_last_frame(clips, CONTEXT), clips[:, :, CONTEXT:])
    for h in range(FRAMES - CONTEXT):
        assert metrics[f"copy_last_psnr_h{h + 1:02d}"] == pytest.approx(float(copy[h]), rel=1e-5)


def test_gifs_show_original_reconstruction_prediction_and_rollouts(tiny_run):
    cell = SIZE + 2  # each clip with a 2-pixel gap, plus 2 pixels at the far edges
    with Image.open(tiny_run / "predictions.gif") as gif:
        assert gif.n_frames == FRAMES
        assert gif.size == (3 * cell + 2, 4 * cell + 2)  # 3 columns, 4 test clips
    with Image.open(tiny_run / "rollouts.gif") as gif:
        assert gif.n_frames == FRAMES
        assert gif.size == (5 * cell + 2, 4 * cell + 2)  # true clip + up, down, left, right


def test_report_embeds_the_gifs_and_metrics(tiny_run):
    page = (tiny_run / "report.html").read_text()
    assert page.count("data:image/gif;base64,") == 2
    assert 'data-key="pred_psnr_h01"' in page and 'data-key="copy_last_psnr_h01"' in page
    assert "original | reconstruction | prediction" in page


def test_predict_on_a_finished_run(tiny_run, tmp_path):
    clip, _ = SyntheticVideo(split="test", size=1, num_frames=FRAMES, frame_size=32)[0]
    context = write_video(tmp_path / "context.gif", clip)  # 32x32: resized to the run's 16
    out = tmp_path / "pred.gif"
    assert main(["predict", str(tiny_run), "--context", str(context), "--actions", "up",
                 "--out", str(out), "--device", "cpu"]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == FRAMES and gif.size == (cell := SIZE + 4, cell)
    mp4 = tmp_path / "pred.mp4"
    actions = ",".join(["left", "right", "up", "down"][: FRAMES - CONTEXT])
    assert main(["predict", str(tiny_run), "--context", str(context), "--actions", actions,
                 "--out", str(mp4), "--device", "cpu"]) == 0
    assert mp4.stat().st_size > 0
    default = tiny_run / "predict.gif"
    assert main(["predict", str(tiny_run), "--context", str(context), "--device", "cpu"]) == 0
    assert default.is_file()


def test_predict_rejects_bad_arguments(tiny_run, tmp_path, capsys):
    clip, _ = SyntheticVideo(split="test", size=1, num_frames=FRAMES, frame_size=SIZE)[0]
    context = write_video(tmp_path / "context.gif", clip)
    short = write_video(tmp_path / "short.gif", clip[:, :2])
    cases = [
        (["--context", str(context), "--actions", "jump"], "unknown action 'jump'"),
        (["--context", str(context), "--actions", "up,down"], "one per generated frame"),
        (["--context", str(context), "--label", "1"], "actions, not classes: pass --actions"),
        (["--context", str(short)], "has 2 frames"),
        (["--context", str(tmp_path / "missing.mp4")], "not found"),
    ]
    for args, message in cases:
        assert main(["predict", str(tiny_run), *args, "--device", "cpu"]) == 2, args
        assert message in capsys.readouterr().err, args


def test_folder_preset_end_to_end(tmp_path):
    """Two classes of gif videos: a class-conditional prior, predictions, no rollouts."""
    root = tmp_path / "videos"
    for label, cls in enumerate(("a", "b")):
        for i in range(3):
            clip, _ = SyntheticVideo(split="train", size=8, num_frames=12, frame_size=20,
                                     seed=label)[i]
            write_video(root / cls / f"v{i}.gif", clip, fps=8)
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["run", "video", "--preset", "folder", "--data", str(root), "--out", str(out),
                     "--device", "cpu", "--no-progress", *sets([*TINY, "data.frame_rate=null",
                     "data.frames_between_clips=4", "vqvae.strides=[[2,2,2],[1,2,2]]",
                     "prior_train.batch_size=2", "vqvae_train.batch_size=2"])])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["horizons"] == FRAMES - CONTEXT and "action_error_px_commanded" not in metrics
    assert (out / "predictions.gif").is_file() and not (out / "rollouts.gif").exists()
    assert load_model(out / "prior" / "ckpt").num_conds == 2  # one condition per class
    context = write_video(tmp_path / "ctx.gif", torch.rand(3, CONTEXT, 20, 20))
    assert main(["predict", str(out), "--context", str(context), "--label", "1",
                 "--device", "cpu", "--out", str(tmp_path / "p.gif")]) == 0
    assert main(["predict", str(out), "--context", str(context), "--label", "2",
                 "--device", "cpu"]) == 2


def test_maskgit_prior_end_to_end(tmp_path):
    """prior.kind=maskgit: trained with the actions, predicts from the context codes (kept as
    known positions), no likelihood metrics, and `vqvae predict` works on the run."""
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mg = ["prior.kind=maskgit", "prior.maskgit.dim=16", "prior.maskgit.layers=1",
          "prior.maskgit.heads=2", "prior.maskgit.steps=3"]
    try:
        code = main(["run", "video", "--out", str(out), "--device", "cpu", "--no-progress",
                     *sets([*TINY, *mg])])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    prior = load_model(out / "prior" / "ckpt")
    latent = [FRAMES // 2, SIZE // 4, SIZE // 4]
    assert isinstance(prior, MaskGIT) and list(prior.grid) == latent
    assert prior.num_conds == 5 and prior.cond_per_step == 2  # actions, two frames per step
    assert prior.steps == 3 and prior.prefix_share == 0.5  # the recipe's default
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prior_bits_per_code"] == "not defined (MaskGIT has no exact likelihood)"
    assert metrics["prior_bits_per_code_future"] == metrics["prior_bits_per_code"]
    for key in ("pred_psnr_mean", "action_error_px_commanded", "action_error_px_true_actions"):
        assert isinstance(metrics[key], float), key
    assert "masked_bits" in (out / "prior" / "history.jsonl").read_text()
    assert (out / "predictions.gif").is_file() and (out / "rollouts.gif").is_file()
    clip, _ = SyntheticVideo(split="test", size=1, num_frames=FRAMES, frame_size=SIZE)[0]
    context = write_video(tmp_path / "context.gif", clip)
    assert main(["predict", str(out), "--context", str(context), "--actions", "left",
                 "--out", str(tmp_path / "p.gif"), "--device", "cpu"]) == 0


def test_predict_video_keeps_the_context_codes_with_maskgit():
    torch.manual_seed(0)
    vqvae = vqvae_video(hidden=8, res_hidden=4, num_res_blocks=1, num_codes=16,
                        code_dim=4).eval()  # time x2, space x4
    prior = maskgit(num_codes=16, grid=(4, 2, 2), num_conds=5, cond_per_step=2, dim=16,
                    layers=1, heads=2, steps=3).eval()
    drawn = []
    sample = prior.sample
    prior.sample = lambda *a, **kw: drawn.append(sample(*a, **kw)) or drawn[-1]
    context = torch.rand(2, 3, 4, 8, 8)  # 4 frames: 2 code steps
    frames = predict_video(vqvae, prior, context, torch.zeros(2, 8, dtype=torch.long),
                           generator=torch.Generator().manual_seed(0))
    assert frames.shape == (2, 3, 8, 8, 8) and len(drawn) == 1
    with torch.no_grad():
        prefix = vqvae.encode(to_model(context))
        decoded = to_data(vqvae.decode(drawn[0]))
    assert torch.equal(drawn[0][:, :2], prefix)  # the context's codes, kept verbatim
    torch.testing.assert_close(frames, decoded)


def test_maskgit_settings_are_checked_and_named(tmp_path, capsys):
    cases = [
        (["prior.kind=pixelcnn"], "config key 'prior.kind' must be one of transformer, maskgit"),
        # The builder's refusal names the key of MaskGIT's own section.
        (["prior.kind=maskgit", "prior.maskgit.patch=[3,2,2]"],
         "config key 'prior.maskgit.patch' must be a positive int or one per grid axis"),
    ]
    for extra, message in cases:
        code = main(["run", "video", "--out", str(tmp_path / "bad"), "--device", "cpu",
                     "--no-progress", *sets([*TINY, *extra])])
        assert code == 2 and message in capsys.readouterr().err, extra
