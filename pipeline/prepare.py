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
from pipeline.config import HOUSE_ROOMS, SPLITS, HousesPrepare, PetsPrepare, Split
from pipeline.errors import PipelineError
from pipeline.images import load, montage

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- splits


def _targets(split: Split, n: int, label: str) -> tuple[int, int, int]:
    if split.per_class:
        want = (int(split.train), int(split.val), int(split.test))
        if sum(want) > n:
            raise PipelineError(
                f"prepare split: class {label!r} has {n} usable images, fewer than train+val+test = {sum(want)} {want}"
            )
        return want
    train, val = round(split.train * n), round(split.val * n)
    return train, val, n - train - val


def split_classes(frame: pd.DataFrame, split: Split, seed: int) -> pd.Series:
    """Assign each row (columns ``label``, ``sha256``) to train/val/test, or ``""`` when not drawn.

    Stratified per label and seeded; rows with identical bytes form one group
    that is assigned as a whole, so exact duplicates never straddle splits.
    The result depends only on the rows' content, not on their order.
    """
    rng = np.random.default_rng(seed)
    groups = frame.groupby("sha256").agg(label=("label", lambda s: s.mode().iloc[0]), n=("label", "size")).sort_index()
    assignment: dict[str, str] = {}
    for label in sorted(groups.label.unique()):
        members = groups[groups.label == label]
        bounds = np.cumsum(_targets(split, int(members.n.sum()), label))
        order = rng.permutation(len(members))
        taken = np.cumsum(members.n.to_numpy()[order])
        which = np.searchsorted(bounds, taken, side="left")  # 0 train, 1 val, 2 test, 3 not drawn
        names = np.array([*SPLITS, ""])[which]
        assignment.update(zip(members.index[order], names))
    return frame.sha256.map(assignment)


def filter_zipcodes(table: pd.DataFrame, min_houses: int) -> pd.DataFrame:
    """Drop houses whose zip code has fewer than ``min_houses`` houses (the seed's step)."""
    counts = table.zipcode.value_counts()
    keep = table.zipcode.map(counts) >= min_houses
    if not keep.any():
        raise PipelineError(
            f"prepare.houses.min_houses_per_zip={min_houses} leaves no house (largest zip code has {counts.max()} houses)"
        )
    return table[keep]


def split_houses(table: pd.DataFrame, photo_sha: pd.DataFrame, split: Split, seed: int, group_duplicates: bool) -> pd.Series:
    """The seed's split: ``train_test_split(test_size, random_state=seed)``, val carved from train.

    With ``group_duplicates``, houses sharing an identical photo are then
    moved together into the earliest split among them (train before val
    before test), so no photo leaks into evaluation.
    """
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(table.index.to_numpy(), test_size=split.test, random_state=seed)
    val_idx: np.ndarray = np.array([], dtype=int)
    if split.val > 0:
        train_idx, val_idx = train_test_split(train_idx, test_size=split.val / (split.train + split.val), random_state=seed)
    out = pd.Series("", index=table.index, dtype=object)
    for name, idx in zip(SPLITS, (train_idx, val_idx, test_idx)):
        out[idx] = name
    return _merge_duplicate_houses(table, photo_sha, out) if group_duplicates else out


def _merge_duplicate_houses(table: pd.DataFrame, photo_sha: pd.DataFrame, assignment: pd.Series) -> pd.Series:
    house_split = dict(zip(table.house_id, assignment))
    shared = photo_sha[photo_sha.house_id.isin(house_split)].groupby("sha256")["house_id"].agg(set)
    rank = {name: i for i, name in enumerate(SPLITS)}
    moved = 0
    for houses in (h for h in shared if len(h) > 1):
        first = min((house_split[h] for h in houses), key=rank.get)
        for h in houses:
            moved += house_split[h] != first
            house_split[h] = first
    if moved:
        log.warning("moved %d houses that share a photo with a house of another split", moved)
    return table.house_id.map(house_split).set_axis(table.index)


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


def write_shards(out: Path, index: pd.DataFrame, arrays: list[np.ndarray], shard_size: int) -> pd.DataFrame:
    """Save ``arrays`` (aligned with ``index``) as ``<split>-NNN.npy``; return ``index`` with shard and offset."""
    index = index.reset_index(drop=True).copy()
    index["shard"], index["offset"] = "", 0
    for name in SPLITS:
        rows = np.flatnonzero(index.split.to_numpy() == name)
        for k, start in enumerate(range(0, len(rows), shard_size)):
            chunk = rows[start : start + shard_size]
            shard = f"{name}-{k:03d}.npy"
            np.save(out / shard, np.stack([arrays[i] for i in chunk]))
            index.loc[chunk, "shard"] = shard
            index.loc[chunk, "offset"] = np.arange(len(chunk))
    return index


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


def prepare_houses(raw: Path, manifest: pd.DataFrame, table: pd.DataFrame, cfg: HousesPrepare, seed: int) -> tuple[pd.DataFrame, list[np.ndarray], dict]:
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
    raw = paths.raw(dataset)
    if dataset == "pets":
        index, arrays, meta = prepare_pets(raw, manifest, cfg.pets, cfg.seed)
    else:
        table = pd.read_parquet(validated / "houses.parquet")
        index, arrays, meta = prepare_houses(raw, manifest, table, cfg.houses, cfg.seed)
    meta.update(dataset=dataset, seed=cfg.seed, counts={s: int((index.split == s).sum()) for s in SPLITS})
    with files.atomic_dir(paths.prepared(dataset)) as out:
        index = write_shards(out, index, arrays, cfg.shard_size)
        index.to_parquet(out / "index.parquet", index=False)
        files.write_json(out / "meta.json", meta)
    log.info("%s: %s examples per split, %d px, written to %s", dataset, meta["counts"], meta["image_size"], paths.prepared(dataset))
