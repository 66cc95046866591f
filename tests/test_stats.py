"""Tests for pipeline.stages.stats: pixel statistics, class weights, tabular scalers, and the stage on train data only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import PipelineError
from pipeline.stages import stats
from tests.pipeline_project import demo_project


def images(values: np.ndarray) -> np.ndarray:
    """uint8 images [n, h, w, 3] from any array that broadcasts to that shape."""
    return np.ascontiguousarray(values).astype(np.uint8)


# --------------------------------------------------------------------------- pixel_stats


def test_constant_images() -> None:
    shard = images(np.broadcast_to(np.array([10, 20, 30]), (3, 4, 5, 3)))
    out = stats.pixel_stats([shard])
    assert out["pixels"] == 3 * 4 * 5
    assert out["mean"] == pytest.approx([10, 20, 30])
    assert out["std"] == pytest.approx([0, 0, 0], abs=1e-9)
    assert out["variance"] == pytest.approx([0, 0, 0], abs=1e-9)


def test_two_value_images() -> None:
    shard = np.zeros((2, 4, 4, 3), np.uint8)
    shard[:, :2, :, 0] = 200  # half the pixels 0, half 200 in red; green all 50; blue all 0
    shard[..., 1] = 50
    out = stats.pixel_stats([shard])
    assert out["mean"] == pytest.approx([100, 50, 0])
    assert out["std"] == pytest.approx([100, 0, 0], abs=1e-9)
    assert out["variance"] == pytest.approx([10000, 0, 0], abs=1e-6)


def test_across_two_shards() -> None:
    black = np.zeros((2, 3, 3, 3), np.uint8)
    white = np.full((1, 3, 3, 3), 255, np.uint8)
    out = stats.pixel_stats([black, white])
    assert out["pixels"] == 27
    assert out["mean"] == pytest.approx([85.0] * 3)
    assert out["std"] == pytest.approx([np.sqrt(255**2 / 3 - 85.0**2)] * 3)
    assert out == stats.pixel_stats([np.concatenate([black, white])])


def test_chunks_agree_with_numpy() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(stats._CHUNK + 45, 3, 2, 1))
    channels = np.concatenate([base, base // 2 + 20, 255 - base], axis=3)
    shard = images(np.clip(channels + rng.integers(0, 30, (1, 1, 1, 3)), 0, 255))
    out = stats.pixel_stats([shard[:100], shard[100:]])
    px = shard.reshape(-1, 3).astype(np.float64)
    assert out["pixels"] == len(px)
    np.testing.assert_allclose(out["mean"], px.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(out["std"], px.std(axis=0), rtol=1e-9)
    np.testing.assert_allclose(out["rgb_covariance"], np.cov(px.T, bias=True) / 255**2, rtol=1e-9, atol=1e-12)


def test_pca_eigenpairs() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(128, 40, size=(8, 6, 6, 1))
    noise = rng.normal(0, [5, 15, 30], size=(8, 6, 6, 3))
    shard = images(np.clip(base + noise, 0, 255))
    out = stats.pixel_stats([shard])
    vals = np.array(out["pca_eigenvalues"])
    vecs = np.array(out["pca_eigenvectors"])  # columns
    cov = np.array(out["rgb_covariance"])
    assert (np.diff(vals) <= 0).all() and vals[0] > vals[1] > vals[2] > 0
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(cov @ vecs, vecs * vals, atol=1e-12)
    np.testing.assert_allclose(cov, cov.T)
    assert vals.sum() == pytest.approx(np.trace(cov))


def test_no_pixels() -> None:
    with pytest.raises(PipelineError, match="train split has no images"):
        stats.pixel_stats([])


# --------------------------------------------------------------------------- class weights, tabular


def test_class_weights() -> None:
    labels = pd.Series(["Cat"] * 6 + ["Dog"] * 2)
    out = stats.class_weights(labels, ["Cat", "Dog"])
    assert out["counts"] == {"Cat": 6, "Dog": 2}
    assert out["balanced"] == pytest.approx({"Cat": 8 / (2 * 6), "Dog": 8 / (2 * 2)})
    assert out["inverse"] == pytest.approx({"Cat": 8 / 6, "Dog": 8 / 2})


def test_class_weights_missing_class() -> None:
    with pytest.raises(PipelineError, match="no example of class 'Bird'"):
        stats.class_weights(pd.Series(["Cat", "Dog"]), ["Bird", "Cat", "Dog"])


def test_tabular_stats() -> None:
    train = pd.DataFrame(
        {
            "bedrooms": [1, 3, 5],
            "bathrooms": [1.0, 2.0, 3.0],
            "area": [1000.0, 2000.0, 6000.0],
            "zipcode": ["93446", "85255", "93446"],
            "price": [100.0, 200.0, 600.0],
        }
    )
    out = stats.tabular_stats(train)
    assert out["zipcodes"] == ["85255", "93446"]
    assert out["columns"]["bedrooms"] == pytest.approx({"min": 1, "max": 5, "mean": 3, "std": np.sqrt(8 / 3)})
    assert out["columns"]["area"] == pytest.approx({"min": 1000, "max": 6000, "mean": 3000, "std": np.std([1000, 2000, 6000])})
    assert out["columns"]["price"]["max"] == 600.0
    assert set(out["columns"]) == {"bedrooms", "bathrooms", "area", "price"}


def test_load_train_before_prepare(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"index.parquet: not found; run the prepare stage first"):
        stats.load_train(tmp_path / "data/prepared/pets")


# --------------------------------------------------------------------------- main() on the demo project


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_project(tmp_path_factory)


def split_pixels(built: Path, dataset: str, split: str) -> tuple[pd.DataFrame, np.ndarray]:
    folder = built / "data/prepared" / dataset
    index = pd.read_parquet(folder / "index.parquet")
    rows = index[index.split == split]
    arrays = np.concatenate([np.load(folder / s) for s in sorted(rows.shard.unique())])
    assert len(arrays) == len(rows)
    return rows, arrays.reshape(-1, 3).astype(np.float64)


@pytest.mark.parametrize("dataset", ["pets", "houses"])
def test_main_uses_the_train_split_only(built: Path, dataset: str) -> None:
    out = json.loads((built / "data/stats" / f"{dataset}.json").read_text())
    train, px = split_pixels(built, dataset, "train")
    assert out["dataset"] == dataset and out["split"] == "train" and out["examples"] == len(train)
    assert out["image"]["pixels"] == len(px)
    np.testing.assert_allclose(out["image"]["mean"], px.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(out["image"]["std"], px.std(axis=0), rtol=1e-8)
    # the held-out splits would give other numbers: they must not be mixed in
    _, val = split_pixels(built, dataset, "val")
    _, test = split_pixels(built, dataset, "test")
    everything = np.concatenate([px, val, test])
    assert not np.allclose(out["image"]["mean"], everything.mean(axis=0), rtol=1e-6)


def test_main_pets_class_weights(built: Path) -> None:
    out = json.loads((built / "data/stats/pets.json").read_text())
    train, _ = split_pixels(built, "pets", "train")
    counts = train.label.value_counts()
    assert out["classes"] == ["Cat", "Dog"]
    assert out["class_weights"]["counts"] == {"Cat": int(counts["Cat"]), "Dog": int(counts["Dog"])}
    assert out["class_weights"]["balanced"]["Dog"] == pytest.approx(len(train) / (2 * counts["Dog"]))


def test_main_houses_tabular(built: Path) -> None:
    out = json.loads((built / "data/stats/houses.json").read_text())
    train, _ = split_pixels(built, "houses", "train")
    columns = out["tabular"]["columns"]
    assert columns["price"]["mean"] == pytest.approx(train.price.mean())
    assert columns["area"]["max"] == train.area.max()
    assert out["tabular"]["zipcodes"] == sorted(train.zipcode.astype(str).unique())
    assert "class_weights" not in out
