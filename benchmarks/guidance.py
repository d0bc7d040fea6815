"""Sample quality of a finished image run's prior against the classifier-free guidance scale.

For each ``--guidance`` scale (and ``--temperature``) it draws the run's scored samples (as
many per class as fit in ``eval.samples``, seed ``eval.sample_seed``: the samples the run
itself scored) and scores them with the run's sample-quality classifier (retrained with the
run's ``eval.classifier_*`` settings and seed, so the same weights as in the run), printing
the sample class accuracy, its ratio to the reconstructions' and the classifier-feature
Frechet distance. At the run's own scale and temperature the row repeats the run's
``metrics.json``. ``--grids DIR`` also writes the ``samples.png``-style grid of each scale.

The prior must have been trained with ``class_dropout > 0`` for any scale other than 1; a run
trained without it can be forked: copy its ``vqvae/`` and ``config.yaml`` into a new folder and
``vqkit run image --out NEW --resume --set prior.class_dropout=0.1`` retrains only the prior.

Run: ``uv run python benchmarks/guidance.py RUN --guidance 1 2 3 [--temperature 1.0]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

from vqkit.config import load_config  # noqa: E402
from vqkit.metrics.samples import sample_quality  # noqa: E402
from vqkit.pipeline import load_stages  # noqa: E402
from vqkit.runs import load_recipe, read_run_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished `vqkit run image` directory")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--temperature", type=float, nargs="+", default=[None],
                        help="sampling temperatures; None: the run's sample.temperature")  # fmt: skip
    parser.add_argument("--grids", type=Path, default=None, help="write each scale's grid here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = read_run_config(args.run_dir)
    recipe = load_recipe(data["modality"])
    cfg = load_config(recipe.CONFIG, data)
    dev, (vqvae, prior) = load_stages(args.run_dir, "cpu", "vqvae", "prior")
    train_set, test_set = recipe.datasets(cfg)
    classes = recipe.num_classes(train_set)
    real = torch.stack([test_set[i][0] for i in range(len(test_set))])
    labels = torch.as_tensor([int(test_set[i][1]) for i in range(len(test_set))])
    t = time.perf_counter()
    clf = recipe.train_classifier(SimpleNamespace(cfg=cfg, device=dev, progress=False), train_set,
                                  classes)  # fmt: skip
    print(f"{machine_line()}; classifier trained in {time.perf_counter() - t:.1f} s")
    recons = torch.cat([recipe.reconstruct_images(vqvae, x) for x in real.split(256)])
    latent = tuple(cfg.data.image_size // f for f in vqvae.factor)
    rows = []
    print("| guidance | temperature | samples | samples / recons | Frechet | recons | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for temperature in args.temperature:
        for scale in args.guidance:
            t = time.perf_counter()
            scored, scored_y, _ = recipe.draw_samples(
                vqvae, prior, cfg.sample, latent, dev, temperature=temperature,
                seed=cfg.eval.sample_seed, per_class=max(cfg.eval.samples // classes, 1),
                count=cfg.eval.samples, batch_size=cfg.eval_batch_size, guidance=scale,
            )  # fmt: skip
            seconds = time.perf_counter() - t
            m = sample_quality(clf, real, labels, recons, scored, scored_y)
            temp = cfg.sample.temperature if temperature is None else temperature
            rows.append({"guidance": scale, "temperature": temp, "sample_s": seconds, **m})
            ratio = m["sample_over_recon_accuracy"]
            print(f"| {scale:g} | {temp:g} | {m['classifier_sample_accuracy']:.1%} | "
                  f"{ratio:.2f} | {m['classifier_frechet']:.1f} | "
                  f"{m['classifier_recon_accuracy']:.1%} | {seconds:.1f} |")  # fmt: skip
            if args.grids is not None:
                args.grids.mkdir(parents=True, exist_ok=True)
                grid, _, per_row = recipe.draw_samples(
                    vqvae, prior, cfg.sample, latent, dev, temperature=temperature, guidance=scale
                )
                name = f"samples_g{scale:g}_t{temp:g}.png"
                save_image(recipe.upscale(grid), args.grids / name, nrow=per_row, padding=2)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
