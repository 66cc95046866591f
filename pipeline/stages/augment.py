"""Stage ``augment``: resolve the augmentation policy and preview it on train images.

Writes ``reports/augmentation/policy.json`` (the policy the train stage
applies, on the fly and to the train split only, for variants with
``augment: true``) and ``reports/augmentation/pets.png``: one row per train
image, the original and five augmented copies.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np

from pipeline import config, files, paths
from pipeline.config import AugmentConfig
from pipeline.data import shards

log = logging.getLogger(__name__)

DATASET = "pets"  # the augmented variants are the pets CNNs
COPIES = 5


def preview(cfg: AugmentConfig, images: np.ndarray, stats: dict, out_png) -> None:  # noqa: ANN001
    """Draw the preview grid of ``images`` with the policy and the train-split PCA colour eigenpairs."""
    from pipeline.training import augment_ops

    fn = augment_ops.build(
        augment_ops.Policy(**cfg.policy), stats["image"]["pca_eigenvalues"], stats["image"]["pca_eigenvectors"], cfg.seed
    )
    augment_ops.preview_grid(images, fn, COPIES, out_png, title=f"augmentation policy (seed {cfg.seed})")


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline augment``."""
    argparse.ArgumentParser(prog="python -m pipeline augment", description=__doc__).parse_args(argv)
    cfg = config.load().augment
    out = paths.AUGMENTATION
    index, images = shards.load_split(paths.prepared(DATASET), "train")
    stats = json.loads(paths.stats(DATASET).read_text())
    pick = np.random.default_rng(cfg.seed).choice(len(index), size=min(cfg.preview, len(index)), replace=False)
    with files.atomic_dir(out) as tmp:
        files.write_json(tmp / paths.POLICY.name, {"seed": cfg.seed, "policy": cfg.policy})
        preview(cfg, images[np.sort(pick)], stats, tmp / f"{DATASET}.png")
    log.info("policy %s; preview of %d train images in %s", cfg.policy, len(pick), out / f"{DATASET}.png")
