"""Reading the ``prepare`` stage's output: index rows and uint8 image shards of one split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import SPLITS
from pipeline.errors import PipelineError


def meta(prepared: Path) -> dict[str, Any]:
    """``meta.json`` of a prepared dataset (task, image size, classes, counts)."""
    path = prepared / "meta.json"
    if not path.exists():
        raise PipelineError(f"{path}: not found; run the prepare stage first")
    return json.loads(path.read_text())


def load_split(prepared: Path, split: str, limit: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The index rows of ``split`` (the first ``limit``) and their images ``[n, size, size, 3]`` uint8, in index order."""
    index = pd.read_parquet(prepared / "index.parquet")
    rows = index[index.split == split].reset_index(drop=True).iloc[:limit]
    if rows.empty:
        raise PipelineError(f"{prepared}: the {split} split is empty")
    shards = {name: np.load(prepared / name, mmap_mode="r") for name in rows.shard.unique()}
    images = np.stack([shards[s][o] for s, o in zip(rows.shard, rows.offset)])
    return rows, images


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
