"""The run report in a real browser: headless Chromium (the Debian package, never a downloaded
one) loads every image, audio and video element, and the metrics shown equal metrics.json.

The page marks each media element with ``data-loaded="ok"|"error"`` once the browser has
decoded it (an inline script in the report); ``chromium --dump-dom`` prints the DOM after a
virtual-time budget that lets the media load, and the test reads the marks from it.
"""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from vqkit.cli import main
from vqkit.config import load_config
from vqkit.io import write_json
from vqkit.report import build_report, format_metric
from vqkit.runs import add_media, load_recipe, preset_path

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (apt-get install chromium)"
)
TINY_IMAGE_RUN = [
    "data.train_size=32", "data.test_size=8", "data.image_size=8", "vqvae.hidden=8",
    "vqvae.res_hidden=4", "vqvae.num_res_blocks=1", "vqvae.num_codes=8", "vqvae.code_dim=4",
    "vqvae_train.steps=3", "vqvae_train.batch_size=8", "vqvae_train.log_every=1",
    "vqvae_train.device=cpu", "prior.channels=8", "prior.num_layers=2", "prior_train.steps=3",
    "prior_train.batch_size=8", "prior_train.log_every=1", "prior_train.device=cpu",
    "sample.per_class=1", "eval_batch_size=8",
    "eval.classifier_steps=2", "eval.classifier_channels=4", "eval.samples=10",
]  # fmt: skip
MEDIA_TAGS = ("img", "audio", "video")


class _Page(HTMLParser):
    """Media elements and metric cells of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.media: list[tuple[str, dict]] = []
        self.cells: dict[str, dict] = {}
        self.svg_labels: list[str] = []
        self._cell: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in MEDIA_TAGS:
            self.media.append((tag, a))
        elif tag == "svg":
            self.svg_labels.append(a.get("aria-label", ""))
        elif tag == "td" and "metric" in (a.get("class") or "").split():
            self._cell = a["data-key"]
            self.cells[self._cell] = {"value": a.get("data-value"), "text": ""}

    def handle_data(self, data):
        if self._cell is not None:
            self.cells[self._cell]["text"] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None


def _browse(report: Path, profile: Path) -> _Page:
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
        "--dump-dom", report.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    page = _Page()
    page.feed(proc.stdout)
    return page


def _check_page(run_dir: Path, page: _Page) -> None:
    """Every media element decoded; every metric cell equal to metrics.json."""
    media = json.loads((run_dir / "media.json").read_text())
    assert len(page.media) == len(media), "one element per media.json entry"
    for tag, attrs in page.media:
        assert attrs.get("data-loaded") == "ok", f"<{tag} alt={attrs.get('alt')!r}> did not load"
        assert attrs["src"].startswith("data:"), "self-contained: media embedded in the page"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    shown = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    assert page.cells.keys() == shown.keys()
    for key, value in shown.items():
        assert json.loads(page.cells[key]["value"]) == value, key
        assert page.cells[key]["text"] == format_metric(value), key


def _tiny_media(folder: Path) -> None:
    """A WAV, an animated GIF (a video as images), and a WebM video, each a few hundred bytes."""
    tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(1600) / 8000)
    sf.write(folder / "tone.wav", tone.astype("float32"), 8000)
    frames = [Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)) for i in range(3)]
    frames[0].save(folder / "clip.gif", save_all=True, append_images=frames[1:], duration=100)
    av = pytest.importorskip("av")
    with av.open(str(folder / "clip.webm"), "w") as container:
        stream = container.add_stream("libvpx", rate=10)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 50 * i, np.uint8), "rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_image_run_report_loads_in_chromium(tmp_path):
    torch.set_num_threads(1)
    recipe = load_recipe("image")
    run_dir = tmp_path / "run"
    cfg = load_config(recipe.CONFIG, preset_path("image", "builtin"), TINY_IMAGE_RUN)
    recipe.run(cfg, run_dir, progress=False)
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0  # `vqkit report` rebuilds it
    page = _browse(run_dir / "report.html", tmp_path / "profile")
    _check_page(run_dir, page)
    assert [t for t, _ in page.media] == ["img", "img"]  # reconstructions, samples
    labels = " | ".join(page.svg_labels)
    assert "vqvae: losses" in labels and "prior: losses" in labels  # loss curves
    assert "Codebook usage" in labels  # the histogram


def test_audio_and_video_elements_load_and_broken_media_are_caught(tmp_path):
    run_dir = tmp_path / "av"
    run_dir.mkdir()
    write_json(run_dir / "metrics.json", {"snr_db": 12.345678, "steps": 7, "name": "x"})
    _tiny_media(run_dir)
    add_media(run_dir, "audio", "tone.wav", "A tone", "Audio")
    add_media(run_dir, "video", "clip.gif", "A GIF clip", "Video")
    add_media(run_dir, "video", "clip.webm", "A WebM clip", "Video")
    page = _browse(build_report(run_dir), tmp_path / "profile")
    _check_page(run_dir, page)
    assert sorted(t for t, _ in page.media) == ["audio", "img", "video"]

    # The check is not vacuous: undecodable files are marked as errors.
    bad = tmp_path / "bad"
    bad.mkdir()
    write_json(bad / "metrics.json", {})
    garbage = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
    for name, kind in (("x.png", "image"), ("x.wav", "audio"), ("x.webm", "video")):
        (bad / name).write_bytes(garbage)
        add_media(bad, kind, name, name, "Broken")
    page = _browse(build_report(bad), tmp_path / "profile2")
    assert [a.get("data-loaded") for _, a in page.media] == ["error"] * 3
