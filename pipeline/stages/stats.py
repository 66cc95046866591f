"""Stage ``stats``: statistics fitted on the train split only, reused unchanged everywhere else.

``data/stats/<dataset>.json`` holds the per-channel image mean/std (0-255
pixel units), the RGB covariance and its eigen-decomposition (AlexNet's
"fancy PCA", on 0-1 pixels), and per dataset: class counts and class weights
(pets), or tabular scaler parameters and the zip-code vocabulary (houses).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import cli, files, paths
from pipeline.config import HOUSE_CONTINUOUS
from pipeline.data import shards
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

_CHUNK = 256  # images per float64 block: bounds memory on large shards


def pixel_stats(shards: list[np.ndarray]) -> dict[str, Any]:
    """Per-channel mean/std/variance (0-255) and RGB covariance with eigenpairs (0-1) over all pixels."""
    n = 0
    total = np.zeros(3)
    outer = np.zeros((3, 3))
    for shard in shards:
        for start in range(0, len(shard), _CHUNK):
            px = shard[start : start + _CHUNK].reshape(-1, 3).astype(np.float64)
            n += len(px)
            total += px.sum(axis=0)
            outer += px.T @ px
    if n == 0:
        raise PipelineError("the train split has no images")
    mean = total / n
    cov = outer / n - np.outer(mean, mean)
    variance = np.clip(np.diag(cov), 0, None)
    cov01 = cov / 255.0**2
    eigvals, eigvecs = np.linalg.eigh(cov01)
    order = np.argsort(eigvals)[::-1]
    return {
        "pixels": int(n),
        "mean": mean.tolist(),
        "std": np.sqrt(variance).tolist(),
        "variance": variance.tolist(),
        "rgb_covariance": cov01.tolist(),
        "pca_eigenvalues": eigvals[order].tolist(),
        "pca_eigenvectors": eigvecs[:, order].tolist(),  # columns are the eigenvectors
    }


def class_weights(labels: pd.Series, classes: list[str]) -> dict[str, Any]:
    """Counts and two weightings: ``balanced`` = total / (n_classes * count) and the seed's ``inverse`` = total / count."""
    counts = labels.value_counts()
    missing = [c for c in classes if counts.get(c, 0) == 0]
    if missing:
        raise PipelineError(f"the train split has no example of class {missing[0]!r}: class weights are undefined")
    total = int(counts.sum())
    return {
        "counts": {c: int(counts[c]) for c in classes},
        "balanced": {c: total / (len(classes) * int(counts[c])) for c in classes},
        "inverse": {c: total / int(counts[c]) for c in classes},
    }


def tabular_stats(train: pd.DataFrame) -> dict[str, Any]:
    """Min/max and mean/std of each continuous column and the price; the zip-code vocabulary."""
    cols = {}
    for col in (*HOUSE_CONTINUOUS, "price"):
        v = train[col].astype(float)
        cols[col] = {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()), "std": float(v.std(ddof=0))}
    return {"columns": cols, "zipcodes": sorted(str(z) for z in train.zipcode.unique())}


def load_train(prepared: Path) -> tuple[pd.DataFrame, list[np.ndarray], dict[str, Any]]:
    """The train rows of ``index.parquet``, their shards (memory-mapped) and ``meta.json``."""
    index_path = prepared / "index.parquet"
    if not index_path.exists():
        raise PipelineError(f"{index_path}: not found; run the prepare stage first")
    index = pd.read_parquet(index_path)
    train = index[index.split == "train"]
    arrays = [np.load(prepared / s, mmap_mode="r") for s in sorted(train.shard.unique())]
    return train, arrays, shards.meta(prepared)


def compute(train: pd.DataFrame, shards: list[np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
    """All statistics of one dataset's train split."""
    out: dict[str, Any] = {"dataset": meta["dataset"], "split": "train", "examples": len(train), "image": pixel_stats(shards)}
    if meta["task"] == "binary_classification":
        out["classes"] = meta["classes"]
        out["class_weights"] = class_weights(train.label, meta["classes"])
    else:
        out["tabular"] = tabular_stats(train)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline stats <dataset>``."""
    dataset = cli.dataset_arg("stats", __doc__, argv)
    train, shards, meta = load_train(paths.prepared(dataset))
    stats = compute(train, shards, meta)
    files.write_json(paths.stats(dataset), stats)
    log.info(
        "%s: mean %s std %s over %d train images",
        dataset,
        np.round(stats["image"]["mean"], 1),
        np.round(stats["image"]["std"], 1),
        len(train),
    )
