"""The validate stage's manifests: every file of a raw dataset decoded (on all cores) and listed with its verdict.

Pets: ``PetImages/<class>/*``; houses: the photos ``N_<room>.jpg`` beside
``HousesInfo.txt``, and the houses table parsed from it. Nothing in the raw
folder is ever changed: a rejected file is listed with its reason.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from pipeline.config import HOUSE_ROOMS
from pipeline.data.formats import HOUSES_INFO, PETS_ROOT, PHOTO_NAME, parse_house
from pipeline.data.images import ImageLimits, inspect
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

_INLINE_BELOW = 256  # files; below this, worker start-up costs more than it saves


def _inspect_one(job: tuple[Path, str, ImageLimits]) -> dict[str, Any]:
    return inspect(*job)


def scan(root: Path, rels: list[str], limits: ImageLimits, workers: int) -> list[dict[str, Any]]:
    """Inspect ``root/rel`` for each rel in parallel processes; rows come back in input order."""
    jobs = [(root / rel, rel, limits) for rel in rels]
    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(jobs), desc="decode", unit="img", mininterval=1.0)
    if workers == 1 or len(jobs) < _INLINE_BELOW:
        return [_inspect_one(j) for j in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(_inspect_one, jobs, chunksize=64), **bar))


def _relative_files(root: Path, folder: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file())


def pets_manifest(root: Path, limits: ImageLimits, workers: int) -> pd.DataFrame:
    """Manifest of ``root/PetImages/<class>/*``: one row per file, label = class folder."""
    folder = root / PETS_ROOT
    if not folder.is_dir():
        raise PipelineError(f"{root}: no {PETS_ROOT}/ folder (expected {PETS_ROOT}/<class>/*.jpg)")
    rows = scan(root, _relative_files(root, folder), limits, workers)
    for row in rows:
        parts = row["path"].split("/")
        row["label"] = parts[1] if len(parts) == 3 else None
        if row["label"] is None and row["status"] == "accepted":
            row.update(status="rejected", reason=f"not inside a class folder of {PETS_ROOT}/")
    return _frame(rows, ["label"])


def find_houses_folder(root: Path) -> Path:
    """The folder holding ``HousesInfo.txt`` (``Houses-dataset-master/Houses Dataset`` upstream)."""
    found = sorted(root.rglob(HOUSES_INFO))
    if len(found) != 1:
        raise PipelineError(f"{root}: expected exactly one {HOUSES_INFO}, found {len(found)}")
    return found[0].parent


def houses_manifest(root: Path, folder: Path, limits: ImageLimits, workers: int) -> pd.DataFrame:
    """Manifest of the house photos ``N_<room>.jpg``; label = room, house_id = N."""
    rels = [r for r in _relative_files(root, folder) if not r.endswith("/" + HOUSES_INFO)]
    rows = scan(root, rels, limits, workers)
    for row in rows:
        m = PHOTO_NAME.fullmatch(row["path"].rsplit("/", 1)[-1])
        row["house_id"], row["label"] = (int(m[1]), m[2]) if m else (None, None)
        if not m and row["status"] == "accepted":
            row.update(status="rejected", reason=f"unexpected file name (expected N_<{'|'.join(HOUSE_ROOMS)}>.jpg)")
    return _frame(rows, ["label", "house_id"]).astype({"house_id": "Int64"})


def _frame(rows: list[dict[str, Any]], extra: list[str]) -> pd.DataFrame:
    cols = ["path", *extra, "status", "reason", "warning", "format", "mode", "width", "height", "bytes", "sha256"]
    return pd.DataFrame(rows, columns=cols).astype({"width": "Int64", "height": "Int64", "bytes": "int64"})


def houses_table(info: Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """Parse ``HousesInfo.txt`` (line N = house N) and count each house's accepted photos."""
    records = []
    for lineno, line in enumerate(info.read_text().splitlines(), start=1):
        if not line.split():
            continue
        try:
            house = parse_house(line, price_required=True)
        except ValueError as exc:
            raise PipelineError(f"{info}:{lineno}: {exc}") from None
        if not house["bedrooms"].is_integer():
            raise PipelineError(f"{info}:{lineno}: bedrooms must be a whole number: {line.strip()!r}")
        records.append((lineno, int(house["bedrooms"]), *(house[k] for k in ("bathrooms", "area", "zipcode", "price"))))
    table = pd.DataFrame(records, columns=["house_id", "bedrooms", "bathrooms", "area", "zipcode", "price"])
    ok = manifest[manifest.status == "accepted"].groupby("house_id")["label"].nunique()
    table["photos"] = table.house_id.map(ok).fillna(0).astype("int64")
    return table


def missing_photos(table: pd.DataFrame, manifest: pd.DataFrame) -> dict[int, list[str]]:
    """house_id -> rooms without an accepted photo, for houses with fewer than 4."""
    have = manifest[manifest.status == "accepted"].groupby("house_id")["label"].agg(set)
    out = {}
    for hid in table.loc[table.photos < len(HOUSE_ROOMS), "house_id"]:
        out[int(hid)] = [r for r in HOUSE_ROOMS if r not in have.get(hid, set())]
    return out


def duplicates(manifest: pd.DataFrame) -> list[list[str]]:
    """Groups of accepted files with identical bytes (sha256)."""
    ok = manifest[manifest.status == "accepted"]
    groups = ok.groupby("sha256")["path"].agg(list)
    return sorted(sorted(g) for g in groups if len(g) > 1)


def room_photos(manifest: pd.DataFrame) -> pd.DataFrame:
    """The accepted house photos: path, house_id, room label, sha256 (in manifest order)."""
    ok = manifest[(manifest.status == "accepted") & manifest.label.isin(HOUSE_ROOMS)]
    if ok.empty:
        raise PipelineError("data/validated/houses/manifest.parquet: no accepted house photos to pretrain on")
    missing = sorted(set(HOUSE_ROOMS) - set(ok.label))
    if missing:
        raise PipelineError(f"data/validated/houses/manifest.parquet: no accepted {', '.join(missing)} photos")
    return ok[["path", "house_id", "label", "sha256"]].reset_index(drop=True)


def unlabeled_photos(manifest: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """The accepted pet photos in no split of the prepare stage's ``index``: path, sha256 (sorted by path).

    Matched by content as well as by path, so a copy of a split photo under
    another name stays out; the labels are not returned (self-supervision
    never reads them).
    """
    ok = manifest[manifest.status == "accepted"]
    free = ok[~ok.sha256.isin(index.sha256) & ~ok.path.isin(index.path)]
    return free[["path", "sha256"]].sort_values("path").reset_index(drop=True)


def held_out_photos(index: pd.DataFrame) -> set[str]:
    """The source paths of the val and test examples of a prepare stage's ``index`` (pets ``path``, houses ``photos``)."""
    held = index[index.split.isin(["val", "test"])]
    column = held.path if "path" in held else held.photos.str.split(";").explode()
    return set(column.dropna())


def without_held_out(photos: pd.DataFrame, manifest: pd.DataFrame, index: pd.DataFrame, what: str) -> pd.DataFrame:
    """``photos`` (path, sha256) minus every one whose bytes equal a val or test photo of ``index``.

    The leakage guard of pretraining: a backbone never sees a photo the
    transfer models are validated or tested on. ``what`` names the photos in
    the log line.
    """
    held = manifest.sha256[manifest.path.isin(held_out_photos(index))]
    leaked = photos.sha256.isin(held)
    if leaked.any():
        log.info("%s: %d photos left out, identical to val or test photos", what, int(leaked.sum()))
    return photos[~leaked].reset_index(drop=True)
