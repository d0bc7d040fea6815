"""The run report: one self-contained ``report.html`` per run directory.

A recipe writes ``metrics.json``, its media files (PNG, GIF, WAV) and ``media.json`` listing them
(``[{"kind": "image"|"audio"|"video", "title": ..., "path": ..., "group": ...}]``); the training
loop writes ``<stage>/history.jsonl``. :func:`build_report` turns all of it into one page with
every file embedded as a data URI, so the page can be mailed or opened anywhere.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqkit.audio import LogMel
from vqkit.runs import read_run_config

MIME = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
}
# Marks each <img>, <audio> and <video> with data-loaded="ok" (decoded: an image with pixels,
# media with metadata) or "error", so a headless browser can check the page (tests do).
MEDIA_CHECK = (
    "(function(){function mark(e,ok){if(!e.dataset.loaded||!ok)e.dataset.loaded=ok?'ok':'error'}"
    "document.querySelectorAll('img').forEach(function(e){"
    "if(e.complete)mark(e,e.naturalWidth>0);else{"
    "e.addEventListener('load',function(){mark(e,e.naturalWidth>0)});"
    "e.addEventListener('error',function(){mark(e,false)})}});"
    "document.querySelectorAll('audio,video').forEach(function(e){"
    "if(e.error)mark(e,false);else if(e.readyState>=1)mark(e,true);"
    "e.addEventListener('loadedmetadata',function(){mark(e,true)});"
    "e.addEventListener('error',function(){mark(e,false)})})})();"
)
CURVE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def data_uri(path: Path) -> str:
    """The file as a base64 ``data:`` URI (its MIME type from the suffix)."""
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: cannot embed files of type {path.suffix!r} in the report")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def read_history(path: Path) -> list[dict]:
    """Rows of a ``history.jsonl`` file; a line cut short by a kill is ignored."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def svg_line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    width: int = 460,
    height: int = 220,
    log_y: bool = False,
) -> str:
    """A small inline SVG line chart of ``{name: [(x, y), ...]}``."""
    points = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(y)]
    if log_y:
        points = [(x, y) for x, y in points if y > 0]
    if not points:
        return ""
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xs, ys = [p[0] for p in points], [fy(p[1]) for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    pad = 40

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - pad - 10)

    def sy(y: float) -> float:
        return height - pad + (y - y0) / (y1 - y0) * (pad + 10 - height)

    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">'
        f"{html.escape(title)}</text>",
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - 10}" y2="{height - pad}" '
        'stroke="#888"/>',
        f'<line x1="{pad}" y1="20" x2="{pad}" y2="{height - pad}" stroke="#888"/>',
    ]
    label = (lambda v: f"{10**v:.3g}") if log_y else (lambda v: f"{v:.3g}")
    parts += [
        f'<text x="{pad - 4}" y="{sy(y0)}" text-anchor="end" font-size="10">{label(y0)}</text>',
        f'<text x="{pad - 4}" y="{sy(y1) + 8}" text-anchor="end" font-size="10">{label(y1)}</text>',
        f'<text x="{pad}" y="{height - pad + 14}" font-size="10">{x0:g}</text>',
        f'<text x="{width - 10}" y="{height - pad + 14}" text-anchor="end" font-size="10">'
        f"{x1:g} steps</text>",
    ]
    for i, (name, pts) in enumerate(series.items()):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        keep = [(x, fy(y)) for x, y in pts if math.isfinite(y) and (y > 0 or not log_y)]
        if not keep:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in keep)
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>'
        )
        parts.append(
            f'<text x="{pad + 8}" y="{34 + 13 * i}" font-size="11" fill="{colour}">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(counts: list[float], *, title: str, width: int = 460, height: int = 180) -> str:
    """Code usage: one bar per code, sorted by count, in an inline SVG."""
    if not counts:
        return ""
    values = sorted(counts, reverse=True)
    top = max(values) or 1.0
    bar = (width - 20) / len(values)
    bars = "".join(
        f'<rect x="{10 + i * bar:.2f}" y="{height - 20 - v / top * (height - 40):.2f}" '
        f'width="{max(bar, 0.5):.2f}" height="{v / top * (height - 40):.2f}" fill="#1f77b4"/>'
        for i, v in enumerate(values)
    )
    used = sum(1 for v in values if v > 0)
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">'
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">{html.escape(title)}'
        f" ({used} of {len(values)} codes used, sorted)</text>{bars}</svg>"
    )


def save_logmel_png(
    path: str | Path, wavs: list[torch.Tensor], sample_rate: int, *, top_db: float = 70.0
) -> Path:
    """Log-mel spectrograms of waveforms ``(T_i,)`` side by side in one PNG, low frequencies at
    the bottom, dark for loud; each panel spans ``top_db`` below the loudest bin of all."""
    mel = LogMel(sample_rate, n_mels=64)
    panels = [mel(w.float().reshape(1, -1))[0] * (10 / math.log(10)) for w in wavs]  # dB
    peak = max(float(p.max()) for p in panels)
    gap = torch.full((panels[0].shape[0], 3), peak - top_db)
    joined = torch.cat([x for p in panels for x in (p, gap)][:-1], dim=1).flip(0)
    grey = ((peak - joined).clamp(0, top_db) / top_db * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(grey)).resize(
        (grey.shape[1] * 3, grey.shape[0] * 2), Image.NEAREST
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def svg_codes_vs_labels(
    codes: list[int],
    frame_rate: float,
    segments: list,
    *,
    title: str,
    width: int = 1000,
    height: int = 130,
) -> str:
    """Codes over time (one coloured cell per frame, its id written in when there is room) above
    the labelled segments ``[(start_s, end_s, label), ...]`` (phones or words) on the same axis.

    A code keeps its colour across plots (hue from its id), so a code that tracks a phone shows
    up as the same colour under every occurrence of that phone.
    """
    if not codes:
        return ""
    duration = max(len(codes) / frame_rate, max((s[1] for s in segments), default=0.0))
    pad = 10
    scale = (width - 2 * pad) / duration  # pixels per second

    def colour(code: int) -> str:
        return f"hsl({(code * 137.508) % 360:.1f},65%,{55 + 15 * (code % 2)}%)"

    cell = scale / frame_rate
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}" font-family="sans-serif">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">'
        f"{html.escape(title)}</text>",
        f'<text x="{pad}" y="30" font-size="10">codes ({frame_rate:g} Hz)</text>',
    ]
    for i, code in enumerate(codes):
        x = pad + i * cell
        parts.append(
            f'<rect x="{x:.2f}" y="34" width="{max(cell, 0.5):.2f}" height="28" '
            f'fill="{colour(int(code))}"><title>{int(code)}</title></rect>'
        )
        if cell >= 14:
            parts.append(
                f'<text x="{x + cell / 2:.2f}" y="52" text-anchor="middle" font-size="9">'
                f"{int(code)}</text>"
            )
    parts.append(f'<text x="{pad}" y="76" font-size="10">labels</text>')
    for start, end, label in segments:
        x0, x1 = pad + start * scale, pad + end * scale
        parts.append(
            f'<rect x="{x0:.2f}" y="80" width="{max(x1 - x0, 0.5):.2f}" height="26" '
            f'fill="#f4f4f4" stroke="#888" stroke-width="0.5"/>'
        )
        if x1 - x0 >= 12:
            parts.append(
                f'<text x="{(x0 + x1) / 2:.2f}" y="97" text-anchor="middle" font-size="10">'
                f"{html.escape(str(label))}</text>"
            )
    parts.append(
        f'<text x="{pad}" y="{height - 8}" font-size="10">0 s</text>'
        f'<text x="{width - pad}" y="{height - 8}" text-anchor="end" font-size="10">'
        f"{duration:.2f} s</text></svg>"
    )
    return "".join(parts)


def format_metric(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def build_report(run_dir: str | Path, *, title: str | None = None) -> Path:
    """Write ``run_dir/report.html`` from what the run left in ``run_dir``.

    Args:
        run_dir: a finished (or partly finished) run directory.
        title: page title; default "vqkit <modality> run: <directory name>".

    Returns:
        The path of the report.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(
            f"{metrics_path} not found: is {run_dir} a vqkit run directory that reached its "
            "evaluation stage? Re-run the recipe with --resume to finish it."
        )
    metrics = json.loads(metrics_path.read_text())
    media = (
        json.loads((run_dir / "media.json").read_text())
        if (run_dir / "media.json").exists()
        else []
    )
    if title is None:
        config = run_dir / "config.yaml"
        modality = read_run_config(run_dir)["modality"] if config.exists() else None
        title = f"vqkit {modality} run: {run_dir.name}" if modality else run_dir.name
    body = [f"<h1>{html.escape(title)}</h1>"]

    rows = "".join(
        f'<tr><td>{html.escape(k)}</td><td class="metric" data-value="{html.escape(json.dumps(v))}"'
        f' data-key="{html.escape(k)}">{format_metric(v)}</td></tr>'
        for k, v in metrics.items()
        if not isinstance(v, (dict, list))
    )
    body.append(f'<h2>Metrics</h2><table id="metrics">{rows}</table>')

    charts = []
    for stage_dir in sorted(p for p in run_dir.iterdir() if (p / "history.jsonl").exists()):
        history = read_history(stage_dir / "history.jsonl")
        keys = sorted({k for row in history for k in row if k not in ("step", "time")})
        loss_keys = [k for k in keys if "loss" in k or k in ("mse", "nll", "bits")]
        if loss_keys:
            series = {k: [(r["step"], float(r[k])) for r in history if k in r] for k in loss_keys}
            charts.append(svg_line_chart(series, title=f"{stage_dir.name}: losses", log_y=True))
        other = [k for k in keys if k in ("perplexity", "usage")]
        for k in other:
            series = {k: [(r["step"], float(r[k])) for r in history if k in r]}
            charts.append(svg_line_chart(series, title=f"{stage_dir.name}: {k}"))
    usage_path = run_dir / "code_usage.json"
    if usage_path.exists():
        charts.append(
            svg_histogram(json.loads(usage_path.read_text()), title="Codebook usage (test)")
        )
    if charts:
        body.append('<h2>Training</h2><div class="charts">' + "".join(charts) + "</div>")

    groups: dict[str, list[dict]] = {}
    for item in media:
        groups.setdefault(item.get("group", "Media"), []).append(item)
    for group, items in groups.items():
        body.append(f"<h2>{html.escape(group)}</h2>")
        for item in items:
            path = run_dir / item["path"]
            caption = html.escape(item.get("title", item["path"]))
            if not path.exists():
                body.append(
                    f"<p class='missing'>{caption}: file {html.escape(item['path'])} is missing</p>"
                )
                continue
            uri = data_uri(path)
            kind = item["kind"]
            if kind == "video" and uri.startswith("data:image/"):
                kind = "image"  # an animated GIF is a video that <img> plays
            tag = {
                "image": f'<img src="{uri}" alt="{caption}">',
                "audio": f'<audio controls preload="metadata" src="{uri}"></audio>',
                "video": f'<video controls loop muted preload="metadata" src="{uri}"></video>',
            }[kind]
            body.append(f"<figure>{tag}<figcaption>{caption}</figcaption></figure>")

    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px}"
        "img{image-rendering:pixelated;max-width:100%}figure{display:inline-block;margin:.5em}"
        ".charts svg{margin:.3em;border:1px solid #eee}</style></head><body>"
        + "".join(body)
        + f"<script>{MEDIA_CHECK}</script></body></html>"
    )
    out = run_dir / "report.html"
    out.write_text(page)
    return out
