"""Issue 16: the pipeline's own SimCLR (``ssl.fit_simclr``) on the results workspace's unlabeled pets, one recipe a run.

The recipe is ``results.yaml``'s ``pretrain.pets_unlabeled`` over ``params.yaml``'s, with ``key=value`` overrides
(YAML values). After the fit it prints the pipeline's probes (20-NN and linear, fitted on train, scored on val at
128 px) and the fit's seconds. Needs ``make results`` to have validated and prepared the pets (results/workspace).
Usage: ``PYTHONPATH=. python experiments/ssl_recipe/recipe.py [key=value ...]``, e.g. ``epochs=20 loss=dcl``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.config import UnlabeledPretrain
from pipeline.data import images
from pipeline.data.manifest import unlabeled_photos
from pipeline.stages.pretrain import _labeled
from pipeline.training import ssl

WS = Path("results/workspace")
SIZE = 128


def recipe(overrides: list[str]) -> UnlabeledPretrain:
    base = yaml.safe_load(Path("params.yaml").read_text())["pretrain"]["pets_unlabeled"]
    base |= yaml.safe_load(Path("results.yaml").read_text())["params"]["pretrain"]["pets_unlabeled"]
    base |= {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}
    return UnlabeledPretrain.model_validate(base)


def unlabeled() -> np.ndarray:
    cache = Path(f"/tmp/unlabeled-{SIZE}.npy")
    if not cache.exists():
        manifest = pd.read_parquet(WS / "data/validated/pets/manifest.parquet")
        index = pd.read_parquet(WS / "data/prepared/pets/index.parquet")
        photos = unlabeled_photos(manifest, index)
        np.save(cache, images.load_many(WS / "data/raw/pets", photos.path.tolist(), SIZE))
    return np.load(cache)


def main() -> None:
    cfg = recipe(sys.argv[1:])
    pixels = unlabeled()
    prepared = WS / "data/prepared/pets"
    train, val = _labeled(prepared, "train", SIZE), _labeled(prepared, "val", SIZE)
    backbone, history, seconds = ssl.fit_simclr(cfg, pixels, SIZE, None)
    scores = ssl.probe(backbone, train, val, cfg.knn)
    print(json.dumps({"overrides": sys.argv[1:], **scores, "loss": history["loss"][-1], "seconds": round(seconds)}), flush=True)


if __name__ == "__main__":
    main()
