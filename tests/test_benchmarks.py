"""The benchmark scripts run and print their tables (tiny sizes: this checks they work, not speed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_quantizer_benchmark_prints_every_candidate_and_the_targets():
    # vector-quantize-pytorch is left out here: importing it alone takes ~15 s of CPU.
    text = run(
        "quantizer.py",
        "--batch",
        "2",
        "--size",
        "4",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--baselines",
        "seed",
        "--lookup-k",
        "4100",
        "--lookup-rows",
        "70",
    )
    for name in ("distance product", "vqkit", "seed"):
        assert name in text
    verdicts = [line for line in text.splitlines() if line.endswith(("met", "NOT met"))]
    # fwd+bwd, seed speed, seed memory, encode; then each further quantizer against
    # VectorQuantizer at equal K (its vqp comparison is skipped with --baselines seed)
    assert len(verdicts) == 4 + 4
    assert "peak MiB" in text
    for method in ("fsq", "lfq", "simvq", "vq-rotation"):
        assert f"vqkit {method}" in text
    # the large-K lookup table: both dims, block minima against argmin, SimVQ's two lookups
    lookups = [line for line in text.splitlines() if line.lstrip().startswith("4100")]
    assert len(lookups) == 2 * 2 + 2 and all(line.endswith("x") for line in lookups)


def test_sampling_benchmark_compares_cached_and_naive():
    text = run(
        "sampling.py",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--pixelcnn-channels",
        "8",
        "--pixelcnn-layers",
        "2",
        "--pixelcnn-size",
        "4",
        "--pixelcnn-batch",
        "2",
        "--video-batch",
        "1",
        "--preset-size",
        "3",
        "--maskgit-dim",
        "8",
        "--maskgit-layers",
        "1",
    )
    lines = [line for line in text.splitlines() if line.startswith(("PixelCNN", "video prior"))]
    assert len(lines) == 2 and all(line.rstrip().endswith("x") for line in lines)
    # MaskGIT against the cached PixelCNN at the PixelCNN row's size and the preset's.
    # Patches 1, 2 and 4 at 4x4; patch 1 only at 3x3 (the others do not divide it).
    rows = [line for line in text.splitlines() if line.startswith("MaskGIT")]
    assert len(rows) == 4 and all(line.rstrip().endswith("x") for line in rows)
    # by wall time and by CPU time
    assert all(len(re.findall(r" \d+\.\dx", line)) == 2 for line in rows)
    assert all("K=512, 4x4" in row for row in rows[:3])
    assert (
        "patch 4x4" in rows[2] and "patch 1x1" in rows[3] and "K=256, 3x3, class-cond." in rows[3]
    )


def test_wavenet_benchmark_covers_decoder_prior_and_paper_size():
    text = run(
        "wavenet_generation.py", "--samples", "5", "--fused-samples", "5", "--repeats", "1",
        "--threads", "1",
    )  # fmt: skip
    rows = [
        line.split()
        for line in text.splitlines()
        if re.match(r"\s+\d+\s+(naive|cached|fused)", line)
    ]
    assert [r[1] for r in rows] == ["naive", "cached", "fused"] * 8  # 4 models x batch 1 and 16
    assert "with an empty numba cache" in text


def test_training_benchmark_prints_the_ratio():
    text = run("training.py", "--only", "sonnet", "--repeats", "1", "--threads", "1")
    assert "Sonnet CIFAR-10" in text and "ratio" in text


def test_recipes_benchmark_reads_stage_times(tmp_path):
    (tmp_path / "metrics.json").write_text(
        json.dumps(
            {
                "time_vqvae_s": 60.0,
                "time_prior_s": 30.0,
                "wall_time_s": 95.0,
                "device": "cpu",
                "torch_threads": 2,
            }
        )
    )
    text = run("recipes.py", str(tmp_path))
    assert "vqvae" in text and "60.0 s" in text and "1.6 min" in text


def test_recipes_benchmark_names_a_directory_without_metrics(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH / "recipes.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode != 0 and "metrics.json not found" in out.stderr
