"""Stage ``augment``: a preview of each augmentation policy on train images.

Writes ``reports/augmentation/<policy>.png`` for every policy of
``augment.policies`` but ``none``: one row per train image, the original and
five augmented copies. Only a picture: the train stage reads its variant's
policy from params, so changing ``augment.preview`` retrains nothing.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np

from pipeline import config, files, paths
from pipeline.config import AugmentPolicy
from pipeline.data import shards

log = logging.getLogger(__name__)

DATASET = "pets"  # the augmented variants are the pets CNNs
COPIES = 5


def preview(name: str, policy: AugmentPolicy, images: np.ndarray, stats: dict, out_png) -> None:  # noqa: ANN001
    """Draw the preview grid of ``images`` with the policy and the train-split PCA colour eigenpairs."""
    from pipeline.training import augment_ops

    image = stats["image"]
    fn = augment_ops.build(policy, image["pca_eigenvalues"], image["pca_eigenvectors"], policy.seed)
    augment_ops.preview_grid(images, fn, COPIES, out_png, title=f"augmentation policy {name} (seed {policy.seed})")


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline augment``."""
    argparse.ArgumentParser(prog="python -m pipeline augment", description=__doc__).parse_args(argv)
    cfg = config.load().augment
    index, images = shards.load_split(paths.prepared(DATASET), "train")
    stats = json.loads(paths.stats(DATASET).read_text())
    with files.atomic_dir(paths.AUGMENTATION) as tmp:
        for name, policy in cfg.policies.items():
            pick = np.random.default_rng(policy.seed).choice(len(index), size=min(cfg.preview, len(index)), replace=False)
            preview(name, policy, images[np.sort(pick)], stats, tmp / f"{name}.png")
            log.info("policy %s: %s; preview of %d train images", name, policy.model_dump(), len(pick))
