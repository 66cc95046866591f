"""Stage ``prepare``: seeded, leakage-free splits; images decoded and resized once into shards.

Output folder ``data/prepared/<dataset>/``:

* ``index.parquet``: one row per example (split, shard, offset, label or house
  attributes, source paths, sha256);
* ``<split>-NNN.npy``: uint8 arrays ``[n, size, size, 3]`` of ``shard_size`` examples;
* ``meta.json``: what the arrays are (size, classes, counts), read by later stages.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import cli, config, files, paths
from pipeline.config import HOUSE_ROOMS, SPLITS, HousesPrepare, PetsPrepare
from pipeline.data.images import load, montage
from pipeline.data.shards import write_shards
from pipeline.data.splits import filter_zipcodes, split_classes, split_houses
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- splits


# --------------------------------------------------------------------------- images


def _load_pet(job: tuple[Path, int, str]) -> np.ndarray:
    return load(*job)


def _load_house(job: tuple[list[Path], int]) -> np.ndarray:
    photos, size = job
    return montage([load(p, size) for p in photos])


def _decode_all(fn: Any, jobs: list, workers: int) -> list[np.ndarray]:
    bar = dict(total=len(jobs), desc="resize", unit="img", mininterval=1.0)
    if workers == 1 or len(jobs) < 256:
        return [fn(j) for j in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(fn, jobs, chunksize=32), **bar))


def _order(index: pd.DataFrame, seed: int, key: str) -> pd.DataFrame:
    """Drop undrawn rows; sort by split, train in a seeded random order, val/test by ``key``."""
    index = index[index.split != ""].copy()
    index["_rank"] = index.split.map({n: i for i, n in enumerate(SPLITS)})
    index["_key"] = np.where(index.split == "train", np.random.default_rng(seed + 1).permutation(len(index)), 0)
    return index.sort_values(["_rank", "_key", key]).drop(columns=["_rank", "_key"]).reset_index(drop=True)


def prepare_pets(raw: Path, manifest: pd.DataFrame, cfg: PetsPrepare, seed: int) -> tuple[pd.DataFrame, list[np.ndarray], dict]:
    """Split and decode the accepted pet photos; return (index, arrays, meta).

    ``label_index`` follows the sorted class names (validate checked they are
    exactly ``validate.pets.classes``).
    """
    ok = manifest[manifest.status == "accepted"][["path", "label", "sha256"]].copy()
    classes = sorted(ok.label.unique())
    ok["split"] = split_classes(ok, cfg.split, seed)
    index = _order(ok, seed, "path")
    index["label_index"] = index.label.map({c: i for i, c in enumerate(classes)}).astype("int64")
    arrays = _decode_all(_load_pet, [(raw / p, cfg.image_size, cfg.resize) for p in index.path], os.cpu_count() or 1)
    meta = {"task": "binary_classification", "image_size": cfg.image_size, "resize": cfg.resize, "classes": classes}
    return index, arrays, meta


def prepare_houses(
    raw: Path, manifest: pd.DataFrame, table: pd.DataFrame, cfg: HousesPrepare, seed: int
) -> tuple[pd.DataFrame, list[np.ndarray], dict]:
    """Filter zip codes, split houses the seed's way, tile each house's photos 2x2; return (index, arrays, meta)."""
    kept = filter_zipcodes(table, cfg.min_houses_per_zip).copy()
    photos = manifest[manifest.status == "accepted"][["path", "house_id", "label", "sha256"]]
    kept["split"] = split_houses(kept, photos, cfg.split, seed, cfg.group_duplicates)
    by_house = photos.pivot(index="house_id", columns="label", values="path")
    index = _order(kept, seed, "house_id")
    index["photos"] = [";".join(by_house.loc[h, list(HOUSE_ROOMS)]) for h in index.house_id]
    jobs = [([raw / p for p in ps.split(";")], cfg.photo_size) for ps in index.photos]
    arrays = _decode_all(_load_house, jobs, os.cpu_count() or 1)
    meta = {
        "task": "regression",
        "image_size": 2 * cfg.photo_size,
        "rooms": list(HOUSE_ROOMS),
        "target": "price",
        "houses_before_filter": len(table),
        "min_houses_per_zip": cfg.min_houses_per_zip,
    }
    return index, arrays, meta


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline prepare <dataset>``."""
    dataset = cli.dataset_arg("prepare", __doc__, argv)
    cfg = config.load().prepare
    validated = paths.validated(dataset)
    if not (validated / "manifest.parquet").exists():
        raise PipelineError(f"{validated}/manifest.parquet: not found; run the validate stage first")
    manifest = pd.read_parquet(validated / "manifest.parquet")
    raw, seed = paths.raw(dataset), cfg.split_seed(dataset)
    if dataset == "pets":
        index, arrays, meta = prepare_pets(raw, manifest, cfg.pets, seed)
    else:
        table = pd.read_parquet(validated / "houses.parquet")
        index, arrays, meta = prepare_houses(raw, manifest, table, cfg.houses, seed)
    meta.update(dataset=dataset, seed=seed, counts={s: int((index.split == s).sum()) for s in SPLITS})
    with files.atomic_dir(paths.prepared(dataset)) as out:
        index = write_shards(out, index, arrays, cfg.shard_size)
        index.to_parquet(out / "index.parquet", index=False)
        files.write_json(out / "meta.json", meta)
    log.info(
        "%s: %s examples per split, %d px, written to %s", dataset, meta["counts"], meta["image_size"], paths.prepared(dataset)
    )
